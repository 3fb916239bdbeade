"""A clone that works before the first run, and the CLI's help, version and key hints."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from rlhf_lab import outputs, presets, ui
from rlhf_lab.cli import app
from rlhf_lab.config import TASKS, parse_params
from rlhf_lab.errors import ConfigError

from .conftest import REPO


def test_stage_of_reads_dvc_yaml():
    dvc_yaml = REPO / "dvc.yaml"
    assert outputs.stage_of("models/ppo", dvc_yaml) == "train_ppo"
    assert outputs.stage_of("models/base/policy", dvc_yaml) == "prepare_models"
    assert outputs.stage_of("reports/samples.jsonl", dvc_yaml) == "evaluate"
    assert outputs.stage_of("metrics/full/train_sft.json", dvc_yaml) == "train_sft"
    assert outputs.stage_of("plots/train_ppo/plots/metrics/gen/length.tsv", dvc_yaml) == (
        "train_ppo"
    )
    assert outputs.stage_of("models/p", dvc_yaml) is None  # a prefix of a name is no folder
    assert outputs.stage_of("models/ppo", REPO / "no-such-dvc.yaml") is None


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """What a clone has before `dvc pull` or `dvc repro`: dvc.yaml and params, no models."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "stage"),
    [
        (["generate", "--prompt", "hi", "-m", "ppo"], "train_ppo"),
        (["arena"], "train_sft"),
        (["arena", "--model", "sft", "--model", "dpo"], "train_sft"),
    ],
)
def test_missing_output_names_its_stage_in_one_line(fresh_clone, args, stage):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert f"`dvc repro {stage}` makes it" in line and "`dvc pull`" in line


def test_help_groups_commands_and_version():
    runner = CliRunner()
    out = runner.invoke(app, ["--help"], terminal_width=120).output
    stages, tools, arena = (out.index(p) for p in ("Stages (", "Tools (", "Arena ("))
    assert stages < out.index("train_ppo") < tools < out.index("compare") < arena
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("rlhf-lab ")


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"ppo\.clp: unknown key \(did you mean 'clip'\?\)"):
        parse_params({"ppo": {"clp": 0.1}})
    with pytest.raises(ConfigError, match=r"ppo\.lora\.rr: unknown key \(did you mean 'r'\?\)"):
        parse_params({"ppo": {"lora": {"rr": 4}}})
    with pytest.raises(ConfigError, match=r"ppo\.zzzz: unknown key$"):
        parse_params({"ppo": {"zzzz": 1}})


def test_stage_in_a_repo_without_a_commit_is_one_line(fresh_clone):
    subprocess.run(["git", "init", "-q"], cwd=fresh_clone, check=True)
    result = CliRunner().invoke(app, ["train_sft"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "no commit yet" in line and "git commit" in line


def test_compare_without_the_samples_says_how_to_get_them(fresh_clone, monkeypatch):
    row = {
        "rev": "0123456789abcdef",
        "name": "main",
        "data": {"metrics": {"metrics/evaluate.json": {"data": {"ppo/rm_score": 0.5}}}},
    }
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_exp_show", lambda all_commits: [row])
    result = CliRunner().invoke(app, ["compare", "--all"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "reports/samples.jsonl of experiment 'main' is not in the DVC cache" in line
    assert "`dvc pull`" in line and "`dvc repro evaluate`" in line


def test_arena_report_says_when_there_are_too_few_games(tmp_path, monkeypatch):
    from rlhf_lab.arena import command, votes

    path = tmp_path / "votes.jsonl"
    for i in range(3):  # sft wins all three: a bootstrap CI would be the point [1.00, 1.00]
        row = votes.vote_row(
            comparison_id=f"c{i}",
            prompt=[{"role": "user", "content": "q"}],
            models=("sft", "ppo"),
            replies=("a", "b"),
            label="left",
        )
        votes.append_vote(path, row)
    monkeypatch.setattr(ui.console, "_width", 200)  # one table row per line
    with ui.console.capture() as out:
        m = command.report(path, tmp_path / "arena.json", n_boot=200, seed=0)
    assert m["arena/sft/games"] == 3 and m["arena/sft/win_rate"] == 1.0
    text = out.get()
    assert "too few votes: 3 < 10" in text and "[1.00, 1.00]" not in text


@pytest.mark.parametrize(
    ("command", "option", "values"),
    [
        ("generate", "--task", TASKS),
        ("analyze_rewards", "--task", TASKS),
        ("params", "--preset", tuple(presets.PRESETS)),
    ],
)
def test_task_and_preset_options_list_their_values_and_reject_others(command, option, values):
    assert set(values) >= {"crs", "docstring"}
    runner = CliRunner(env={"COLUMNS": "200"})  # rich's panels: one line per message
    help_text = runner.invoke(app, [command, "--help"]).output
    (line,) = [line for line in help_text.splitlines() if line.strip("│ ").startswith(option)]
    assert f"<{'|'.join(values)}>" in line
    result = runner.invoke(app, [command, option, "poetry"])
    assert result.exit_code == 2
    (error,) = [line for line in result.output.splitlines() if "poetry" in line]
    quoted = ", ".join(f"'{v}'" for v in values)
    assert f"Invalid value for '{option}'" in error and f"is not one of {quoted}" in error
