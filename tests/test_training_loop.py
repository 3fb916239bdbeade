"""The supervised loop reproduces, bit for bit, what the four trainers computed before they
shared it: SFT, DPO, the reward model and the critic train a few steps on the tiny random models
and their saved weights, logged losses and metrics must match values recorded from the
hand-written loops they replaced.

The digests were recorded with ``python -m pytest -q tests/test_training_loop.py`` on one
torch thread on an "AMD EPYC" CPU (``lscpu``), 2026-12-07. Float rounding in matrix kernels
differs between CPUs, so elsewhere the test compares the losses with a tolerance instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.config import CriticConfig, DpoConfig, RewardTrainConfig, SftConfig
from rlhf_lab.training.common import Curves, TrainOutcome
from rlhf_lab.training.critic import ScoredReply, train_critic
from rlhf_lab.training.dpo import train_dpo_model
from rlhf_lab.training.loop import Fitted, concat
from rlhf_lab.training.reward_model import PreferencePair, train_reward_model
from rlhf_lab.training.sft import SftExample, train_sft_model

from .ppo_helpers import BAD, GOOD, TINY_LORA, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Start from accelerate's state as a fresh stage process sees it: its state is one per
    process, and an earlier test's HF ``Trainer`` (TRL's configs default to bf16) leaves it in
    bf16 autocast, which changes the last digits. ``_reset_state`` is what accelerate's own
    test case (``accelerate.test_utils.AccelerateTestCase``) calls between tests."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


RECORDED_ON = "AMD EPYC"
"""``model name`` of the CPU the digests below were recorded on (/proc/cpuinfo)."""


def _pairs(n: int = 12) -> list[PreferencePair]:
    return [
        PreferencePair(r["prompt"], GOOD[i % 2], BAD[(i // 2) % 2])
        for i, r in enumerate(prompt_rows(n))
    ]


def _sft(models: dict[str, Path], out: Path) -> TrainOutcome:
    examples = [SftExample(r["prompt"], r["reference"]) for r in prompt_rows(12)]
    cfg = SftConfig(epochs=2, batch_size=4, max_length=48, lr=1e-3, lora=TINY_LORA, seed=3)
    return train_sft_model(models["policy"], examples, examples[:3], cfg, out_dir=out)


def _dpo(models: dict[str, Path], out: Path) -> TrainOutcome:
    pairs = _pairs()
    cfg = DpoConfig(epochs=2, batch_size=4, max_length=48, lr=1e-3, lora=TINY_LORA, seed=3)
    return train_dpo_model(models["policy"], pairs, pairs[:3], cfg, out_dir=out)


def _reward(models: dict[str, Path], out: Path) -> TrainOutcome:
    pairs = _pairs()
    cfg = RewardTrainConfig(epochs=2, batch_size=4, max_length=32, lr=1e-3, seed=3)
    evals = {"valid": pairs[:3], "test": pairs[3:6]}
    return train_reward_model(models["encoder"], pairs, evals, cfg, out_dir=out)


def _critic(models: dict[str, Path], out: Path) -> TrainOutcome:
    replies = [
        ScoredReply(r["prompt"], (GOOD + BAD)[i % 4], float(i % 4))
        for i, r in enumerate(prompt_rows(12))
    ]
    cfg = CriticConfig(  # a trained adapter: the separate layout
        epochs=2, shared_trunk=False, batch_size=4, max_length=48, lr=1e-3, lora=TINY_LORA, seed=3
    )
    return train_critic(models["policy"], replies, replies[:3], cfg, out_dir=out)


TRAINERS = {"sft": _sft, "dpo": _dpo, "reward": _reward, "critic": _critic}

# sha256 of the saved weights, and of the history and metrics (perf/* excluded), and the
# per-step training losses, recorded from the loops before they were shared.
REFERENCE: dict[str, dict[str, Any]] = {
    "sft": {
        "weights": "222feb6ecc10a6685e2d7e17a508f6fdd7499c69da996eed8a63b4dc19718542",
        "logged": "e27c57121e59eed6cb5105ff031fbe2b72befe1c7aa289c7793e1e347b3d337c",
        "losses": [
            6.027452038180444,
            5.995631483734631,
            6.035574776785714,
            6.005344513923891,
            6.003821588331653,
            5.9951166952809976,
        ],
    },
    "dpo": {
        "weights": "b7c1170bb5d5140142728dce258c5e9d5642e6ff804f360d9696453ec5964eb0",
        "logged": "ba2e62893847cac153670c66679f92eaf26ddb6659fb9c436b6ca4f3194ec6f9",
        "losses": [
            0.6931471824645996,
            0.6931471824645996,
            0.6852173805236816,
            0.6772996187210083,
            0.6692625284194946,
            0.6705790758132935,
        ],
    },
    "reward": {
        "weights": "7674c747498b2e8d7183cd5d4827c09c0a567c4c0247d1eac7058516e1e4429a",
        "logged": "29110afe9d0780d1caf6676d1667c5a57d9f4095c6d8f145d1c06f94d741f164",
        "losses": [
            0.6952181458473206,
            0.6939228773117065,
            0.6988222002983093,
            0.6935070753097534,
            0.6940532922744751,
            0.6971491575241089,
        ],
    },
    "critic": {
        "weights": "e958745427f70ddd999c852f93012b2ec704cbf16feb3dc41c68d0731a94cd8f",
        "logged": "5285375fff3bf6d62af1b4144986fea390cd7e2fdcd18bf12de734885e5e078b",
        "losses": [
            0.02611626498401165,
            0.11033374071121216,
            0.09364160895347595,
            0.06488063186407089,
            0.03403788059949875,
            0.06968680024147034,
        ],
    },
}


def _weights_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")):
        for name, t in sorted(load_file(f).items()):
            h.update(name.encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _record(outcome: TrainOutcome, out: Path, curves: list[Any]) -> dict[str, Any]:
    metrics = {k: v for k, v in outcome.metrics.items() if not k.startswith("perf/")}
    logged = json.dumps(
        {"history": outcome.history, "metrics": metrics, "curves": curves}, sort_keys=True
    )
    return {
        "weights": _weights_digest(out),
        "logged": hashlib.sha256(logged.encode()).hexdigest(),
        "losses": [h["train/loss"] for h in outcome.history],
    }


def _cpu() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainers_reproduce_the_recorded_run(name, tiny_models, tmp_path, monkeypatch):
    curves: list[Any] = []  # every curve point, in the order the loop logs them
    monkeypatch.setattr(
        Curves, "log", lambda _self, step, values: curves.append([step, dict(values)])
    )
    outcome = TRAINERS[name](tiny_models, tmp_path / "out")
    got = _record(outcome, tmp_path / "out", curves)
    want = REFERENCE[name]
    assert len(got["losses"]) == len(want["losses"]) >= 4
    assert all(math.isfinite(x) for x in got["losses"])
    if _cpu() == RECORDED_ON:
        assert got == want
    else:
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-3, abs=1e-5)


def test_last_epoch_mean_reads_the_last_epoch_and_is_nan_without_an_applied_step():
    fitted = Fitted(steps=5, epochs=[[{"l": 9.0}], [{"l": 1.0}, {"l": 2.0}]])
    assert fitted.last_epoch_mean("l") == 1.5
    assert fitted.epoch_means("l") == [9.0, 1.5]
    assert math.isnan(Fitted(steps=2, epochs=[[{"l": 1.0}], []]).last_epoch_mean("l"))
    assert math.isnan(Fitted(steps=0).last_epoch_mean("l"))


def test_concat_joins_batches_per_key_in_order():
    batches = [{"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([3.0])}]
    assert concat(batches)["a"].tolist() == [1.0, 2.0, 3.0]
    assert concat([]) == {}
