"""The rlhf-lab command: every dvc.yaml stage, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app

from .conftest import REPO

# Every dvc.yaml stage is a command of the same name (one name per stage everywhere).
STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def test_help_lists_every_dvc_stage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "rlhf_lab.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "train_ppo" in out.stdout


def test_bad_params_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  policy: x\n  polcy: y\n")
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_lab.cli", "prepare_models", "--params", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "models.polcy: unknown key" in lines[0] and "bad.yaml" in lines[0]
    assert "Traceback" not in result.stderr


def test_wrong_type_fails_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  clip: wide\n")
    result = CliRunner().invoke(app, ["prepare_models", "--params", str(bad)])
    assert result.exit_code == 2
    assert "ppo.clip: expected a number, got 'wide'" in result.output


def test_params_command_prints_loadable_defaults(tmp_path):
    result = CliRunner().invoke(app, ["params"])
    assert result.exit_code == 0
    path = tmp_path / "p.yaml"
    path.write_text(result.output)
    from rlhf_lab.config import Params, load_params

    assert load_params(path) == Params()
