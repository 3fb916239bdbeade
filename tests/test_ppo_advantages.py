"""The estimator registry (rlhf_lab.ppo.advantages): every ``ppo.advantage`` is one registered
class whose needs come from ``config.ESTIMATORS``; each computes exactly what the core
functions give (on any CPU); Dr. GRPO against a hand-worked case, and in the trainer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import get_args

import pytest
import torch

from rlhf_lab.config import ESTIMATORS, CriticLayout, Params, PpoConfig, parse_params
from rlhf_lab.errors import ConfigError, RlhfLabError
from rlhf_lab.ppo.advantages import REGISTRY, Estimator, estimator_for, register_adv_est
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.core import (
    aggregate_loss,
    discounted_returns,
    gae,
    grpo_advantages,
    masked_whiten,
    reinforce_pp_returns,
    rloo_advantages,
    shape_rewards,
)
from rlhf_lab.ppo.model import load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
GROUP = torch.tensor([0, 0, 1, 1])


def _rollout(seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(4, 3, generator=g) * MASK
    return SimpleNamespace(
        clipped_score=torch.tensor([0.5, -1.0, 2.0, 0.25]),
        eos_found=torch.tensor([True, False, True, True]),
        logprobs=logprobs,
        ref_logprobs=(logprobs - 0.1 * torch.rand(4, 3, generator=g)) * MASK,
        values=torch.randn(4, 3, generator=g) * MASK,
        group=GROUP,
    )


def _penalised(ro: SimpleNamespace, cfg: PpoConfig) -> torch.Tensor:
    return ro.clipped_score - cfg.missing_eos_penalty * (~ro.eos_found).float()


def test_every_advantage_is_one_registered_class_with_its_declared_needs():
    assert (
        list(REGISTRY)
        == list(ESTIMATORS)
        == list(get_args(PpoConfig.model_fields["advantage"].annotation))
    )
    for name, cls in REGISTRY.items():
        cfg = PpoConfig(advantage=name, batch_size=2, num_generations=3)
        est = estimator_for(cfg)
        assert type(est) is cls and est.name == name
        assert est.needs_critic == ESTIMATORS[name].critic == (not cfg.critic_free)
        assert est.group_size == (3 if ESTIMATORS[name].group else 1)
    assert [n for n, s in ESTIMATORS.items() if s.critic] == ["gae"]
    assert estimator_for(PpoConfig(advantage="dr_grpo", num_generations=2)).loss_agg == "token_sum"
    assert estimator_for(PpoConfig(loss_agg="seq_mean")).loss_agg == "seq_mean"


def test_a_class_without_a_spec_or_registered_twice_is_refused():
    class Unknown(Estimator):
        name = "a2c"

    class Again(Estimator):
        name = "gae"

    with pytest.raises(ValueError, match="no EstimatorSpec"):
        register_adv_est(Unknown)
    with pytest.raises(ValueError, match="registered twice"):
        register_adv_est(Again)


def test_the_critic_layout_is_chosen_once_from_the_estimator_and_shared_trunk():
    assert Params().critic_layout is CriticLayout.SHARED_TRUNK
    separate = {"critic": {"shared_trunk": False}}
    assert parse_params(separate).critic_layout is CriticLayout.SEPARATE
    shared = {"critic": {"shared_trunk": True}}
    assert parse_params(shared).critic_layout is CriticLayout.SHARED_TRUNK
    for name in ("grpo", "dr_grpo", "rloo"):
        params = parse_params({**shared, "ppo": {"advantage": name, "num_generations": 2}})
        assert params.critic_layout is CriticLayout.NONE
    assert not CriticLayout.NONE.has_critic and CriticLayout.SHARED_TRUNK.has_critic


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"advantage": "dr_grpo"},
            "ppo.num_generations must be at least 2 for ppo.advantage: dr_grpo",
        ),
        (
            {"advantage": "dr_grpo", "num_generations": 2, "loss_agg": "seq_mean"},
            "ppo.advantage: dr_grpo fixes the policy loss's aggregation (token_sum)",
        ),
        (
            {"advantage": "dr_grpo", "num_generations": 2, "critic_warmup_steps": 1},
            "ppo.critic_warmup_steps applies only to ppo.advantage: gae",
        ),
    ],
)
def test_dr_grpo_params_are_checked_from_its_spec(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params({"ppo": raw})


@pytest.mark.parametrize("whiten", [False, True])
def test_gae_is_shaped_rewards_then_gae_then_whitening(whiten):
    cfg = PpoConfig(gamma=0.9, lam=0.8, whiten_rewards=whiten, kl_estimator="k3")
    ro = _rollout()
    got = estimator_for(cfg).compute(ro, _penalised(ro, cfg), MASK, beta=0.3)
    rewards, kl = shape_rewards(
        ro.clipped_score, ro.logprobs, ro.ref_logprobs, MASK, 0.3, "k3", ro.eos_found, 1.0
    )
    if whiten:
        rewards = masked_whiten(rewards, MASK, shift_mean=False)
    adv, returns = gae(rewards, ro.values, MASK, 0.9, 0.8)
    assert torch.equal(got.advantages, masked_whiten(adv, MASK))
    assert torch.equal(got.returns, returns) and torch.equal(got.kl, kl)


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp"])
def test_critic_free_estimators_are_their_core_functions(name):
    cfg = PpoConfig(advantage=name, num_generations=2, scale_rewards="batch", gamma=0.9)
    ro = _rollout(1)
    score = _penalised(ro, cfg)
    got = estimator_for(cfg).compute(ro, score, MASK, beta=0.2)
    seq = {
        "grpo": grpo_advantages(score, GROUP, "batch"),
        "rloo": rloo_advantages(score, GROUP),
        "reinforce_pp": score,
    }[name]
    rewards, kl = shape_rewards(seq, ro.logprobs, ro.ref_logprobs, MASK, 0.2, "k1")
    want = (
        reinforce_pp_returns(rewards, MASK, 0.9)
        if name == "reinforce_pp"
        else discounted_returns(rewards, MASK, 1.0)
    )
    assert torch.equal(got.advantages, want) and torch.equal(got.kl, kl)
    assert got.returns is None


def test_dr_grpo_hand_worked():
    """Two prompts × 2 replies. Scores 0.5, -1 (no EOS: -1 - 1 = -2), 2, 0.25 → group means
    -0.75 and 1.125 → sequence advantages 1.25, -1.25, 0.875, -0.875: the score minus the group
    mean, never divided by the group's std (GRPO would give ±0.7071 to both groups). With
    β = 0 every valid token carries its reply's advantage; with β = 0.5 and a k1 KL of 0.1 on
    every token, token t also carries -0.05 per token from t to the reply's end."""
    cfg = PpoConfig(advantage="dr_grpo", num_generations=2)
    ro = _rollout()
    ro.ref_logprobs = (ro.logprobs - 0.1) * MASK
    est = estimator_for(cfg)
    score = _penalised(ro, cfg)
    assert score.tolist() == [0.5, -2.0, 2.0, 0.25]

    flat = est.compute(ro, score, MASK, beta=0.0).advantages
    want = torch.tensor(
        [[1.25, 1.25, 1.25], [-1.25, -1.25, 0.0], [0.875, 0.0, 0.0], [-0.875, -0.875, -0.875]]
    )
    torch.testing.assert_close(flat, want)

    got = est.compute(ro, score, MASK, beta=0.5)
    kl_to_end = torch.tensor([[3, 2, 1], [2, 1, 0], [1, 0, 0], [3, 2, 1]]) * -0.05
    torch.testing.assert_close(got.advantages, want + kl_to_end)
    torch.testing.assert_close(got.kl, 0.1 * MASK)
    assert got.returns is None
    grpo = estimator_for(PpoConfig(advantage="grpo", num_generations=2))
    torch.testing.assert_close(
        grpo.compute(ro, score, MASK, beta=0.0).advantages[:, 0],
        torch.tensor([0.7071, -0.7071, 0.7071, -0.7071]),
        atol=1e-4,
        rtol=0,
    )


def test_dr_grpo_loss_divides_by_a_constant_not_by_each_replys_length():
    """Per-token losses of a 3-token and a 1-token reply, max_new_tokens 4: token_sum is
    (1 + 2 + 3 + 4) / (2 replies × 4) = 1.25, and every token's gradient is 1/8 whatever its
    reply's length (seq_mean gives the lone token of the short reply 1/2, the others 1/6)."""
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss = aggregate_loss(losses, mask, "token_sum", max_length=4)
    assert float(loss.detach()) == 1.25
    loss.backward()
    assert losses.grad.tolist() == [[0.125, 0.125, 0.125], [0.125, 0.0, 0.0]]
    assert float(aggregate_loss(losses, mask, "seq_mean")) == 3.0
    assert float(aggregate_loss(losses, mask, "token_mean")) == 2.5
    with pytest.raises(ValueError, match="max_length"):
        aggregate_loss(losses, mask, "token_sum")


@pytest.mark.usefixtures("one_thread")
def test_the_trainer_runs_dr_grpo_without_a_critic_and_refuses_one(tiny_models, tmp_path):
    cfg = PpoConfig(
        advantage="dr_grpo",
        num_generations=2,
        steps=2,
        batch_size=2,
        minibatches=2,
        max_new_tokens=6,
        max_prompt_length=48,
        lr=1e-2,
        kl_in_loss=True,
        lora=TINY_LORA.model_dump(),
    )
    sft = copy_policy(tiny_models["policy"], tmp_path / "sft", embed_scale=4.0)
    scorer = CompositeScorer(
        {"len": lambda replies, rows: [len(r) / 20 for r in replies]},
        {"len": 1.0},
        total_steps=cfg.steps,
    )
    with pytest.raises(RlhfLabError, match="'dr_grpo' needs a model with no critic"):
        with_critic = load_policy_critic(
            sft, make_critic(sft, tmp_path / "critic"), cfg.lora, cfg.temperature
        )
        PpoTrainer(with_critic, prompt_rows(4), scorer, cfg, progress=False)
    torch.manual_seed(0)
    model = load_policy_critic(sft, None, cfg.lora, cfg.temperature)
    assert model.layout is CriticLayout.NONE
    before = [p.detach().clone() for p in model.trainable_parameters()]
    trainer = PpoTrainer(model, prompt_rows(4), scorer, cfg, progress=False)
    metrics = trainer.train()
    assert trainer.estimator.loss_agg == "token_sum"
    moved = sum(
        float((p.detach() - b).abs().sum())
        for p, b in zip(model.trainable_parameters(), before, strict=True)
    )
    assert moved > 0 and metrics["train/updates"] == 4 and metrics["train/skipped_updates"] == 0
    assert all(h["loss/kl"] >= 0 for h in trainer.history)
    assert not [k for k in metrics if k.startswith("val/") or k == "loss/value"]
