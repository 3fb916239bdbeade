"""The distributed path: train_reward as 2 CPU processes under `accelerate launch`, and the
shipped accelerate configs parse."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from rlhf_lab.reward_model import RewardModel

from .conftest import REPO
from .test_train_reward import make_reward_workdir, toy_rows

CONFIGS = {
    "cpu.yaml": "NO",
    "single_gpu.yaml": "NO",
    "multi_gpu.yaml": "MULTI_GPU",
    "zero2.yaml": "DEEPSPEED",
    "zero3.yaml": "DEEPSPEED",
}


def _free_port() -> int:
    # Other test runs on the same machine may hold accelerate's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("name", "kind"), sorted(CONFIGS.items()))
def test_shipped_accelerate_configs_parse(name, kind):
    config = load_config_from_file(str(REPO / "accelerate" / name))
    assert config.distributed_type.value == kind
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[4])
    if name == "zero3.yaml":
        # without it the sharded weights cannot be gathered to save models/reward, models/sft
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def test_train_reward_on_two_cpu_processes(tiny_models, tmp_path):
    params = make_reward_workdir(tmp_path, tiny_models["encoder"])
    # The shipped multi-GPU config on a machine without a GPU: torchrun starts 2 processes and
    # the trainer falls back to accelerate's multi-CPU (gloo) mode. (`--cpu --num_processes 2`
    # starts only one process unless MPI is set up.)
    cmd = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(REPO / "accelerate/multi_gpu.yaml")),
        *("--num_processes", "2", "--mixed_precision", "no"),
        *("--main_process_port", str(_free_port())),
        *("-m", "rlhf_lab.cli", "train_reward", "--params", str(params)),
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log

    m = json.loads((tmp_path / "metrics/train_reward.json").read_text())
    assert m["perf/num_processes"] == 2
    # the global batch is split across processes, so the step count is the 1-process one
    assert m["train/steps"] == 4 * 128 // 16
    assert m["valid/pairs"] == 32 and m["valid/accuracy"] >= 0.9
    # saved once, by the main process: one summary, one curve point per step, no temp dirs
    assert len(re.findall(r"^\s*train_reward\s*$", log, flags=re.MULTILINE)) == 1
    loss_tsv = tmp_path / "plots/train_reward/plots/metrics/train/loss.tsv"
    assert len(loss_tsv.read_text().splitlines()) == 1 + m["train/steps"]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    prov = json.loads((tmp_path / "models/reward/provenance.json").read_text())
    assert prov["num_processes"] == 2

    rm = RewardModel(tmp_path / "models/reward")
    rows = toy_rows(32, 3, "check")
    prompts = [r["prompt"] for r in rows]
    chosen = rm.score(prompts, [r["chosen"] for r in rows])
    rejected = rm.score(prompts, [r["rejected"] for r in rows])
    assert (chosen > rejected).float().mean().item() >= 0.9


def test_trainer_falls_back_to_multi_cpu_only_without_gpu(monkeypatch):
    from rlhf_lab.training import common

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert common._launched_without_gpu()
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    assert not common._launched_without_gpu()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert not common._launched_without_gpu()


def test_docs_mention_every_shipped_config():
    docs = (REPO / "docs/accelerate.md").read_text()
    for name in CONFIGS:
        assert f"accelerate/{name}" in docs
    assert sorted(p.name for p in Path(REPO / "accelerate").glob("*.yaml")) == sorted(CONFIGS)
