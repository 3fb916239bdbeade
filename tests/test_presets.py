"""Task presets: valid params, known reward components, and -S lines that DVC applies the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import presets, reward_components
from rlhf_lab.cli import app
from rlhf_lab.config import Params, documented_yaml, load_params
from rlhf_lab.errors import ConfigError
from rlhf_lab.reward_components import MODEL_COMPONENTS

from .conftest import REPO

NAMES = sorted(presets.PRESETS)


def test_both_tasks_have_a_preset():
    assert {presets.preset_params(n).task.name for n in NAMES} == {"crs", "docstring"}


@pytest.mark.parametrize("name", NAMES)
def test_preset_parses_to_valid_params(name):
    params = presets.preset_params(name)
    assert params.task.name == name
    assert params.data.source != Params().data.source
    # Every key it sets is applied (nothing silently dropped by the merge).
    raw = params.model_dump(mode="json")
    for key, value, _ in presets._leaves(Params, presets.get(name).overrides):
        node = raw
        for part in key.split("."):
            node = node[part]
        assert node == value, key


@pytest.mark.parametrize("name", NAMES)
def test_preset_reward_weights_are_registered_for_its_task(name):
    params = presets.preset_params(name)
    known = set(reward_components.known())
    weights = params.reward.weights
    assert set(weights) <= known, set(weights) - known
    task_keys = [k for k in weights if k not in MODEL_COMPONENTS and not k.startswith("text/")]
    assert task_keys, "a task preset should weight its task's own components"
    assert all(k.startswith(f"{name}/") for k in task_keys)
    assert all(w >= 0 for w in weights.values())


@pytest.mark.parametrize("name", NAMES)
def test_dvc_set_param_lines_give_the_same_params(tmp_path, name):
    """What `dvc exp run -S ...` does to a params.yaml equals the printed preset."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    path.write_text(documented_yaml())
    hydra.apply_overrides(path, presets.dvc_overrides(name))
    assert load_params(path) == presets.preset_params(name)
    assert presets.dvc_command(name).startswith("dvc exp run -S ")


def test_preset_on_a_params_file_keeps_what_it_does_not_name(tmp_path):
    base = tmp_path / "params.yaml"
    base.write_text("ppo:\n  steps: 7\nreward:\n  weights: {reward_model: 1.0, text/bleu: 0.2}\n")
    params = presets.preset_params("crs", load_params(base))
    assert params.ppo.steps == 7
    assert params.reward.weights == {
        "reward_model": 1.0,
        "text/bleu": 0.2,
        "crs/grounded": 1.0,
        "crs/no_hallucination": 0.5,
        "crs/recommendation": 0.0,
        "text/length": 0.0,
    }


@pytest.mark.parametrize("name", NAMES)
def test_task_presets_switch_off_the_chat_length_band(name):
    """The repo's params.yaml weights text/length (a band in chat words); tasks set their own."""
    params = presets.preset_params(
        name, load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    )
    assert params.reward.weights["text/length"] == 0.0


def test_params_command_prints_a_loadable_preset(tmp_path):
    result = CliRunner().invoke(app, ["params", "--preset", "docstring"])
    assert result.exit_code == 0, result.output
    assert "dvc exp run" in result.output and "task.name=docstring" in result.output
    path = tmp_path / "p.yaml"
    path.write_text(result.output)
    assert load_params(path) == presets.preset_params("docstring")
    # The -S lines are comments: the output is a params.yaml as it stands.
    assert yaml.safe_load(result.output)["task"]["name"] == "docstring"


def test_params_command_applies_a_preset_to_a_base_file(tmp_path):
    result = CliRunner().invoke(
        app, ["params", "--preset", "crs", "--base", str(REPO / "params.yaml")]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "p.yaml"
    path.write_text(result.output)
    repo = load_params(REPO / "params.yaml")
    got = load_params(path)
    assert got.task.name == "crs" and got.ppo == repo.ppo and got.eval == repo.eval


def test_unknown_preset_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown preset 'poetry'; known: crs, docstring"):
        presets.get("poetry")
    result = CliRunner().invoke(app, ["params", "--preset", "poetry"])
    assert result.exit_code == 2
    assert "unknown preset 'poetry'" in result.output


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (300, "300"),
        (0.25, "0.25"),
        ("crs", "crs"),
        ("../shared/data/x.jsonl.gz", "../shared/data/x.jsonl.gz"),
        ("true", '"true"'),
        ("a b: c", '"a b: c"'),
        (
            {"reward_model": 1.0, "crs/recommendation": 0.5},
            "{reward_model: 1.0, crs/recommendation: 0.5}",
        ),
    ],
)
def test_hydra_values(value, text):
    assert presets._hydra_value(value) == text
