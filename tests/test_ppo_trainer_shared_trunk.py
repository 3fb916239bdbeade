"""critic.shared_trunk in the PPO loop: one backbone pass and one backward per
minibatch where the separate critic needs two of each; the critic warm-up trains the value head
alone, the policy bit-for-bit unchanged."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.config import PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import POLICY, load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # see ppo_helpers.one_thread

CFG = dict(steps=2, batch_size=4, minibatches=2, epochs=2, max_new_tokens=6, max_prompt_length=48)


@pytest.fixture(scope="module")
def dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-shared")
    sft = copy_policy(tiny_models["policy"], root / "sft")
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _trainer(dirs, shared_trunk, **over):
    cfg = PpoConfig(**{**CFG, **over}, lora=TINY_LORA.model_dump())
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(
        dirs["sft"], dirs["critic"], cfg.lora, cfg.temperature, shared_trunk=shared_trunk
    )
    scorer = CompositeScorer(
        {"len": lambda replies, rows: [len(r) / 10 for r in replies]},
        {"len": 1.0},
        total_steps=cfg.steps,
    )
    return PpoTrainer(model, prompt_rows(4), scorer, cfg, progress=False)


def _count_passes(trainer, monkeypatch, fn):
    """(backbone forwards, backward calls) while ``fn`` runs: a forward hook on the decoder and
    a wrapper around ``Tensor.backward``; sampling's forwards (one per new token) not counted."""
    counts = {"forward": 0, "backward": 0}
    sampling = []
    generate = trainer.model.generate

    def uncounted_generate(*args, **kwargs):
        sampling.append(True)
        try:
            return generate(*args, **kwargs)
        finally:
            sampling.pop()

    monkeypatch.setattr(trainer.model, "generate", uncounted_generate)

    def count(*_):
        if not sampling:
            counts["forward"] += 1

    hook = trainer.model.lm.get_decoder().register_forward_hook(count)
    backward = torch.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        counts["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    try:
        out = fn()
    finally:
        hook.remove()
        monkeypatch.setattr(torch.Tensor, "backward", backward)
    return counts, out


@pytest.mark.parametrize("shared_trunk", [True, False])
def test_one_backbone_pass_and_one_backward_per_minibatch(dirs, monkeypatch, shared_trunk):
    trainer = _trainer(dirs, shared_trunk)
    counts, (ro, _) = _count_passes(trainer, monkeypatch, lambda: trainer.rollout(0))
    chunks = CFG["minibatches"]  # the rollout recomputes in minibatch-sized chunks
    # policy + values in one pass (shared) or two, and the reference
    assert counts == {"forward": chunks * (2 if shared_trunk else 3), "backward": 0}

    counts, stats = _count_passes(trainer, monkeypatch, lambda: trainer.update(ro, 0))
    minibatches = CFG["epochs"] * CFG["minibatches"]
    assert stats["train/updates"] == minibatches
    per = 1 if shared_trunk else 2
    assert counts == {"forward": per * minibatches, "backward": per * minibatches}
    # the same logged keys either way
    for key in ("loss/value", "loss/policy", "val/clipfrac", "val/explained_variance"):
        assert torch.isfinite(torch.tensor(stats[key])), key


def test_shared_trunk_rollout_values_are_the_value_heads_on_the_policy(dirs):
    trainer = _trainer(dirs, True)
    ro, _ = trainer.rollout(0)
    model = trainer.model
    with torch.no_grad():
        values = model.values(ro.query, ro.query_mask, ro.response, ro.response_mask)
        logp, _ = model.policy_logprobs(ro.query, ro.query_mask, ro.response, ro.response_mask)
    w = values.shape[1]
    torch.testing.assert_close(ro.values[:, :w], values, atol=1e-5, rtol=0)
    torch.testing.assert_close(ro.logprobs[:, :w], logp, atol=1e-5, rtol=0)


def test_shared_trunk_warmup_trains_the_value_head_alone(dirs):
    """ppo.critic_warmup_steps with a shared trunk: the value head learns on detached hidden
    states while the policy adapter stays bit-for-bit; after the warm-up both move."""
    trainer = _trainer(dirs, True, critic_warmup_steps=1, epochs=1)
    model = trainer.model
    policy, head = model.adapter_parameters(POLICY), list(model.value_head.parameters())
    p0, h0 = [p.detach().clone() for p in policy], [p.detach().clone() for p in head]

    def changed(before, params):
        return any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))

    stats = trainer.update(trainer.rollout(0)[0], 0)
    assert stats["train/critic_warmup"] == 1.0 and stats["train/updates"] == 2.0
    assert not changed(p0, policy) and changed(h0, head)
    stats = trainer.update(trainer.rollout(1)[0], 1)
    assert stats["train/critic_warmup"] == 0.0
    assert changed(p0, policy)
