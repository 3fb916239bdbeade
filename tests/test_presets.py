"""Presets: valid params, known reward components, and -S lines that DVC applies the same."""

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

NAMES = sorted(n for n, p in presets.PRESETS.items() if "task" in p.overrides)
"""The task presets (``quick`` changes sizes only)."""


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


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
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
    with pytest.raises(ConfigError, match="unknown preset 'poetry'; known: crs, docstring, quick"):
        presets.get("poetry")
    # the CLI offers the names as choices: a usage error before anything is read
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["params", "--preset", "poetry"])
    assert result.exit_code == 2
    assert "'poetry' is not one of 'crs', 'docstring', 'quick'" in result.output


def test_quick_preset_shrinks_the_default_run_and_keeps_its_models_and_data():
    quick, default = presets.preset_params("quick"), Params()
    # the same embedded models, task and data source: a real result, not a random model
    for section in ("task", "models", "judge", "critic"):
        assert getattr(quick, section) == getattr(default, section), section
    assert quick.data.source == default.data.source
    assert (quick.data.max_examples, default.data.max_examples) == (60, 300)
    assert (quick.ppo.steps, quick.ppo.batch_size, quick.ppo.epochs) == (4, 8, 1)
    assert quick.eval.num_prompts == 12 < default.eval.num_prompts
    assert quick.reward.train.epochs == 2 < default.reward.train.epochs
    # every number it sets is at most the default's: it only shrinks the run
    raw = default.model_dump(mode="json")
    for key, value, _ in presets._leaves(Params, presets.get("quick").overrides):
        node = raw
        for part in key.split("."):
            node = node[part]
        assert isinstance(value, int) and 0 < value <= node, key


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
