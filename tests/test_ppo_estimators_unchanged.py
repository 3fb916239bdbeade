"""Every estimator trains exactly as before the estimator registry: a fixed-seed 2-step run of
each existing ``ppo.advantage`` (and the switches around it) gives bit-identical parameters and
logged numbers to those recorded from the if/elif trainer it replaced.

Torch on the CPU is deterministic for a given machine and thread count, not across CPUs (SIMD
paths differ in the last bits, and a sampled token can flip on them), so the recorded digests
are checked on the CPU that recorded them and the test skips elsewhere; the per-estimator maths
is checked on any CPU by ``tests/test_ppo_advantages.py``. Re-record (after a change that
is meant to alter training) with::

    RLHF_LAB_RECORD=1 python -m pytest -q -s tests/test_ppo_estimators_unchanged.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pytest
import torch

from rlhf_lab.config import PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(
    steps=2,
    batch_size=4,
    minibatches=2,
    epochs=2,
    max_new_tokens=6,
    max_prompt_length=48,
    lr=1e-3,
    lora=TINY_LORA.model_dump(),
)
GROUPS = {"batch_size": 2, "num_generations": 2}
ARMS: dict[str, dict] = {
    "gae": {},
    "gae-whiten-adaptive-k3": {
        "whiten_rewards": True,
        "adaptive_kl": True,
        "kl_target": 0.5,
        "kl_horizon": 100,
        "kl_estimator": "k3",
        "gamma": 0.9,
    },
    "gae-warmup": {"critic_warmup_steps": 1},
    "gae-target-kl": {"target_approx_kl": 1e-9, "epochs": 3},
    "gae-shared-trunk": {},
    "gae-shared-trunk-warmup": {"critic_warmup_steps": 1},
    "grpo": {"advantage": "grpo", **GROUPS},
    "grpo-batch-seq-mean": {
        "advantage": "grpo",
        "scale_rewards": "batch",
        "loss_agg": "seq_mean",
        **GROUPS,
    },
    "grpo-none-kl-in-loss": {
        "advantage": "grpo",
        "scale_rewards": "none",
        "kl_in_loss": True,
        **GROUPS,
    },
    "rloo": {"advantage": "rloo", "kl_in_loss": True, "loss_agg": "seq_mean", **GROUPS},
    "reinforce_pp": {"advantage": "reinforce_pp", "gamma": 0.9},
}

RECORDED_ON = "AMD EPYC"
"""``lscpu``'s model name of the CPU the digests below were recorded on (torch 1 thread)."""
EXPECTED: dict[str, tuple[str, str]] = {
    "gae": ("a41ec3041c02961c", "af25b13ab0b5e973"),
    "gae-whiten-adaptive-k3": ("8cf398847e77a240", "e177a0edc344b5f7"),
    "gae-warmup": ("188dcb5d22d5ccaa", "4a0d4ce3b511f6ee"),
    "gae-target-kl": ("c72892076702b5bc", "bb84f34a5157ace4"),
    "gae-shared-trunk": ("2010903288802da0", "0c3c8e70af5241f6"),
    "gae-shared-trunk-warmup": ("e907b41d054b1b23", "93ea3f804d42ce2c"),
    "grpo": ("4753617a2d0e3251", "ab18a386e5208158"),
    "grpo-batch-seq-mean": ("941a90e72256472a", "d09da577ff5a70cd"),
    "grpo-none-kl-in-loss": ("ca51a8a234b5a7aa", "4fea6dd56c99c78f"),
    "rloo": ("9c29436a1f96328f", "c050645577cb8a33"),
    "reinforce_pp": ("3f4b7deefdad4730", "1b3368e2f496853d"),
}
"""arm → (sha256 of the trainable parameters' bytes, sha256 of the logged history), first 16
hex digits each."""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@pytest.fixture(scope="module")
def dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-unchanged")
    sft = copy_policy(tiny_models["policy"], root / "sft", embed_scale=4.0)
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _digests(dirs: dict[str, Path], arm: str) -> tuple[str, str]:
    cfg = PpoConfig(**{**BASE, **ARMS[arm]})
    critic_free = cfg.advantage != "gae"
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(
        dirs["sft"],
        None if critic_free else dirs["critic"],
        cfg.lora,
        cfg.temperature,
        shared_trunk=arm.startswith("gae-shared-trunk"),
    )
    scorer = CompositeScorer(
        {"len": lambda replies, rows: [len(r) / 20 for r in replies]},
        {"len": 1.0},
        total_steps=cfg.steps,
    )
    trainer = PpoTrainer(model, prompt_rows(6), scorer, cfg, progress=False)
    trainer.train()
    params = hashlib.sha256()
    for p in model.trainable_parameters():
        params.update(p.detach().double().cpu().numpy().tobytes())
    history = [{k: v for k, v in h.items() if not k.startswith("time/")} for h in trainer.history]
    logged = hashlib.sha256(json.dumps(history, sort_keys=True).encode())
    return params.hexdigest()[:16], logged.hexdigest()[:16]


@pytest.mark.parametrize("arm", list(ARMS))
def test_each_estimator_trains_bit_identically(dirs, arm):
    got = _digests(dirs, arm)
    if os.environ.get("RLHF_LAB_RECORD"):
        print(f"\n    {arm!r}: {got!r},")
        return
    if _cpu() != RECORDED_ON:
        pytest.skip(f"digests recorded on {RECORDED_ON!r}, this CPU is {_cpu()!r}")
    assert got == EXPECTED[arm]
