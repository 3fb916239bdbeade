"""Checkpoints and --resume: an interrupted run resumes to exactly the uninterrupted result;
non-finite losses are skipped, counted, and abort the run past ppo.max_bad_steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_lab.config import PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import POLICY, load_policy_critic
from rlhf_lab.ppo.trainer import NonFiniteLossError, PpoTrainer

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # see ppo_helpers.one_thread

CFG = dict(
    steps=4,
    batch_size=4,
    minibatches=2,
    epochs=2,
    max_new_tokens=6,
    save_every=2,
    lora=TINY_LORA,
    lr=1e-3,
    kl_target=0.5,
    kl_horizon=100,  # the adaptive β moves
)


@pytest.fixture(scope="module")
def dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-resume")
    sft = copy_policy(tiny_models["policy"], root / "sft", embed_scale=4.0)
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _length(replies, rows):
    return [len(r) / 20 for r in replies]


def _trainer(dirs, ckpt, plots=None, scorer_fn=_length, shared_trunk=False, **over):
    cfg = PpoConfig(**{**CFG, **over})
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(
        dirs["sft"], dirs["critic"], cfg.lora, cfg.temperature, shared_trunk=shared_trunk
    )
    scorer = CompositeScorer({"len": scorer_fn}, {"len": 1.0}, total_steps=cfg.steps)
    return PpoTrainer(
        model, prompt_rows(6), scorer, cfg, checkpoint_dir=ckpt, plots_dir=plots, progress=False
    )


def _strip(history):
    return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]


@pytest.mark.parametrize("shared_trunk", [False, True], ids=["separate", "shared_trunk"])
def test_interrupted_run_resumes_to_the_same_result(dirs, tmp_path, shared_trunk):
    full = _trainer(dirs, tmp_path / "full", shared_trunk=shared_trunk)
    full_metrics = full.train()

    calls = {"n": 0}

    def crash_at_step_3(replies, rows):
        calls["n"] += 1
        if calls["n"] == 4:  # step 3: after the checkpoint at step 2, mid-way through step 3
            raise KeyboardInterrupt
        return _length(replies, rows)

    ckpt, plots = tmp_path / "ckpt", tmp_path / "plots"
    with pytest.raises(KeyboardInterrupt):
        _trainer(dirs, ckpt, plots, scorer_fn=crash_at_step_3, shared_trunk=shared_trunk).train()
    assert [p.name for p in sorted(ckpt.iterdir())] == ["step-000002"]
    # a shared trunk's checkpoint holds the value head and no critic adapter
    saved = ckpt / "step-000002/critic"
    assert (saved / "value_head.safetensors").is_file()
    assert (saved / "adapter").is_dir() != shared_trunk

    resumed = _trainer(dirs, ckpt, plots, shared_trunk=shared_trunk)
    metrics = resumed.train(resume=True)
    assert resumed.history[0]["step"] == 0 and len(resumed.history) == 4
    assert _strip(resumed.history) == _strip(full.history)
    assert {k: v for k, v in metrics.items() if not k.startswith("time/")} == {
        k: v for k, v in full_metrics.items() if not k.startswith("time/")
    }
    assert full.history[-1]["objective/kl_coef"] != CFG.get("kl_coef", 0.05)
    for a, b in zip(
        resumed.model.trainable_parameters(), full.model.trainable_parameters(), strict=True
    ):
        assert torch.equal(a, b)
    # the curves hold each step once, as an uninterrupted run writes them
    tsv = (plots / "plots/metrics/objective/score.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in tsv[1:]] == ["0", "1", "2", "3"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000002", "step-000004"]

    # a changed hyperparameter refuses to resume, and so does the other critic layout
    with pytest.raises(Exception, match=r"ppo\.clip"):
        _trainer(dirs, ckpt, clip=0.1, shared_trunk=shared_trunk).train(resume=True)
    with pytest.raises(Exception, match=r"critic\.shared_trunk changed"):
        _trainer(dirs, ckpt, shared_trunk=not shared_trunk).train(resume=True)

    # a checkpoint from before the option existed (no key) was a separate critic's
    last = ckpt / "step-000004" / "state.json"
    state = json.loads(last.read_text())
    del state["fingerprint"]["critic.shared_trunk"]
    last.write_text(json.dumps(state))
    assert (
        bool(_trainer(dirs, ckpt, shared_trunk=shared_trunk)._mismatch(last.parent)) == shared_trunk
    )


def test_non_finite_updates_are_skipped_then_abort(dirs, tmp_path):
    def nan_at_step_1(replies, rows, calls={"n": 0}):  # noqa: B006
        calls["n"] += 1
        return [math.nan if calls["n"] == 2 else 0.5] * len(replies)

    trainer = _trainer(dirs, None, scorer_fn=nan_at_step_1, steps=3, epochs=1, max_bad_steps=3)
    before = [p.detach().clone() for p in trainer.model.adapter_parameters(POLICY)]
    metrics = trainer.train()
    assert metrics["train/skipped_updates"] == 2  # both minibatches of step 1
    assert [h["train/updates"] for h in trainer.history] == [2.0, 0.0, 2.0]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, trainer.model.adapter_parameters(POLICY), strict=True)
    )
    assert all(torch.isfinite(p).all() for p in trainer.model.trainable_parameters())

    always_nan = _trainer(
        dirs, None, scorer_fn=lambda r, rows: [math.nan] * len(r), epochs=1, max_bad_steps=3
    )
    with pytest.raises(NonFiniteLossError, match=r"3 updates skipped.*ppo.max_bad_steps=3"):
        always_nan.train()
