"""Runs you can follow from a log file: plain progress lines when stderr is no terminal, and
one line per train_ppo step whatever stderr is."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from rlhf_lab import ui

from .ppo_helpers import TINY_PPO, copy_policy, make_critic, make_reward_model, write_prompts


@pytest.fixture
def not_a_terminal(monkeypatch):
    """stderr as a log file or a pipe: rich's own flag (a plain attribute, restored after)."""
    monkeypatch.setattr(ui.console, "_force_terminal", False)


@pytest.mark.usefixtures("not_a_terminal")
def test_track_prints_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(ui, "PROGRESS_EVERY_S", 0.0)  # a line after every item
    with ui.console.capture() as out:
        assert list(ui.track(range(3), "sft epoch 1/1")) == [0, 1, 2]
    lines = out.get().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "sft epoch 1/1: 0/3 (0%)",
        "sft epoch 1/1: 1/3 (33%)",
        "sft epoch 1/1: 2/3 (67%)",
        "sft epoch 1/1: 3/3 (100%)",
    ]
    assert "s left" in lines[1] and "left" not in lines[-1]


@pytest.mark.usefixtures("not_a_terminal")
def test_track_prints_start_and_end_only_within_the_interval(monkeypatch):
    monkeypatch.setattr(ui, "PROGRESS_EVERY_S", 3600.0)
    with ui.console.capture() as out:
        assert sum(1 for _ in ui.track(iter(range(5)), "judge")) == 5  # no len: no total
    assert [line.split(",")[0] for line in out.get().splitlines()] == [
        "judge: 0 done",
        "judge: 5 done",
    ]


def test_step_line_format():
    with ui.console.capture() as out:
        ui.step_line("train_ppo", 3, 12, {"score": 0.91234, "kl": 0.12, "length": 17.25}, 12.44)
    assert out.get() == "train_ppo step 3/12  score 0.9123  kl 0.12  length 17.25  12.4 s\n"


def test_train_ppo_writes_a_line_per_step_to_a_log_file(tiny_models, tmp_path):
    """The stage as `dvc repro > log 2>&1` runs it: stdout and stderr one file, no terminal."""
    copy_policy(tiny_models["policy"], tmp_path / "models/sft")
    make_critic(tmp_path / "models/sft", tmp_path / "models/critic")
    make_reward_model(tiny_models["encoder"], tmp_path / "models/reward")
    write_prompts(tmp_path, 6)
    params = {"reward": {"weights": {"reward_model": 1.0}}, "ppo": TINY_PPO}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    log = tmp_path / "log.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "rlhf_lab.cli", "train_ppo", "--params", "params.yaml"],
            cwd=tmp_path,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        ).returncode
    text = log.read_text()
    assert rc == 0, text
    steps = re.findall(
        r"^train_ppo step (\d+)/3  score (\S+)  kl (\S+)  length (\S+)  ([\d.]+) s$", text, re.M
    )
    assert [int(s[0]) for s in steps] == [1, 2, 3], text
    for _, score, kl, length, _seconds in steps:
        assert (
            abs(float(kl)) < 10 and 0 < float(length) <= TINY_PPO["max_new_tokens"] + 1
        )  # k1 KL: any sign
        assert score != "nan"
    # the progress bar's plain counterpart: a first and a last line
    assert "train_ppo: 0/3 (0%)" in text and "train_ppo: 3/3 (100%)" in text
    # no Hugging Face progress bar, load report or known warning in the log
    assert "it/s]" not in text and "\r" not in text
    assert "LOAD REPORT" not in text and "FutureWarning" not in text
