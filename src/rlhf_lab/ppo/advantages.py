"""Advantage estimators: one registered class per ``ppo.advantage``.

As verl registers each estimator by name (``core_algos.py``: ``@register_adv_est("grpo")``)
and OpenRLHF picks one with ``--advantage_estimator``, each estimator here is a small class
that turns one rollout batch into per-token advantages (and, for a critic, value targets),
using the pure functions of :mod:`rlhf_lab.ppo.core`. What an estimator *needs* (a critic? a
group of replies per prompt? a fixed loss aggregation?) is its
:class:`rlhf_lab.config.EstimatorSpec` in :data:`rlhf_lab.config.ESTIMATORS`, read by the
config's validators, the stage (does it load ``models/critic``?) and the trainer alike; the
class exposes it as :attr:`Estimator.needs_critic`, :attr:`Estimator.group_size` and
:attr:`Estimator.loss_agg`. The trainer asks these and never tests an estimator's name.

Every estimator works on the WHOLE rollout batch (before it is cut into minibatches, so a
group split across minibatches has the baseline it would have whole) and on the global batch
under ``accelerate launch``: batch statistics go through :meth:`DataParallel.across`, and group
ids are global prompt slots that never span processes.

Adding one: a class below with ``name`` and :meth:`Estimator.compute`, decorated with
:func:`register_adv_est`; its needs in ``ESTIMATORS``; a unit test against a hand-worked case
in ``tests/test_ppo_advantages.py``. ``docs/estimators.md`` walks through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from rlhf_lab.config import ESTIMATORS, EstimatorSpec, PpoConfig
from rlhf_lab.ppo.core import (
    LossAgg,
    discounted_returns,
    gae,
    grpo_advantages,
    masked_whiten,
    reinforce_pp_returns,
    rloo_advantages,
    shape_rewards,
)
from rlhf_lab.ppo.distributed import DataParallel

if TYPE_CHECKING:
    from rlhf_lab.ppo.rollout import Rollout


@dataclass
class Estimate:
    """What an estimator computes from a rollout: per-token tensors [B, T], 0 on padding."""

    advantages: torch.Tensor
    kl: torch.Tensor
    """The per-token KL estimate (``ppo.kl_estimator``): the KL controller's input and
    ``objective/kl``, whatever the estimator does with it."""
    returns: torch.Tensor | None = None
    """Value targets of the critic's loss; None for a critic-free estimator."""


class Estimator:
    """One ``ppo.advantage``: :meth:`compute` per rollout batch, plus what it needs.

    ``score`` is the clipped composite score minus the missing-EOS penalty ([N-details] "EOS
    trick"), so group baselines compare a truncated reply with its siblings after the penalty;
    ``beta`` is the KL coefficient to put in the per-token reward (0 with ``ppo.kl_in_loss``).
    """

    name: ClassVar[str]

    def __init__(self, cfg: PpoConfig, dp: DataParallel | None = None) -> None:
        self.cfg = cfg
        self.dp = dp or DataParallel()

    @property
    def spec(self) -> EstimatorSpec:
        return ESTIMATORS[self.name]

    @property
    def needs_critic(self) -> bool:
        """Whether it reads the critic's values and returns value targets."""
        return self.spec.critic

    @property
    def group_size(self) -> int:
        """Replies it compares per prompt (``ppo.num_generations``; 1: no group statistic)."""
        return self.cfg.num_generations if self.spec.group else 1

    @property
    def loss_agg(self) -> LossAgg:
        """How the policy loss reduces over a minibatch (``ppo.loss_agg`` unless fixed)."""
        return self.spec.loss_agg or self.cfg.loss_agg  # type: ignore[return-value]

    def compute(
        self, ro: Rollout, score: torch.Tensor, mask: torch.Tensor, beta: float
    ) -> Estimate:
        raise NotImplementedError


REGISTRY: dict[str, type[Estimator]] = {}
"""``ppo.advantage`` → its estimator class (every name of ``ESTIMATORS``, by a test)."""


def register_adv_est(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: register ``cls`` under ``cls.name``, which ``ESTIMATORS`` must declare."""
    if cls.name not in ESTIMATORS:
        raise ValueError(f"estimator {cls.name!r} has no EstimatorSpec in config.ESTIMATORS")
    if cls.name in REGISTRY:
        raise ValueError(f"estimator {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def estimator_for(cfg: PpoConfig, dp: DataParallel | None = None) -> Estimator:
    """The estimator of ``ppo.advantage``."""
    return REGISTRY[cfg.advantage](cfg, dp)


# ---------------------------------------------------------------------------------------------
# with a critic
# ---------------------------------------------------------------------------------------------


@register_adv_est
class Gae(Estimator):
    """PPO's estimator: r_t = -β·KL_t, + the score at the last token; GAE(r, V; γ, λ); the
    advantages whitened over the batch ([N-details] "advantage whitening", as TRL right
    after GAE). ``ppo.whiten_rewards`` whitens the rewards first (shift_mean=False: the sign
    of the mean reward carries information, TRL)."""

    name = "gae"

    def compute(
        self, ro: Rollout, score: torch.Tensor, mask: torch.Tensor, beta: float
    ) -> Estimate:
        cfg, dp = self.cfg, self.dp
        # The penalty is subtracted by shape_rewards itself (lm-human-preferences
        # compute_rewards), from the unpenalised score.
        rewards, kl = shape_rewards(
            ro.clipped_score,
            ro.logprobs,
            ro.ref_logprobs,
            mask,
            kl_coef=beta,
            kind=cfg.kl_estimator,
            eos_found=ro.eos_found,
            missing_eos_penalty=cfg.missing_eos_penalty,
        )
        if cfg.whiten_rewards:
            rewards = dp.across(masked_whiten, rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        return Estimate(dp.across(masked_whiten, advantages, mask), kl, returns)


# ---------------------------------------------------------------------------------------------
# critic-free
# ---------------------------------------------------------------------------------------------


class CriticFree(Estimator):
    """As OpenRLHF's experience maker: a sequence-level signal (:meth:`sequence`) at the last
    token, ``-β·KL_t`` on every token (``compute_reward`` after the baseline), and the advantage
    of a token the return from it (:meth:`token_advantages`). The group estimators' return is
    undiscounted (γ = 1): the group advantage belongs to the whole reply, so with β = 0 or
    ``ppo.kl_in_loss`` every token gets exactly it (DeepSeekMath); they are not whitened (the
    baseline already centres them; TRL and OpenRLHF do not whiten ``group_norm`` either)."""

    def sequence(self, score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        """The per-reply signal [N] put at the last token."""
        raise NotImplementedError

    def token_advantages(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return discounted_returns(rewards, mask, 1.0)

    def compute(
        self, ro: Rollout, score: torch.Tensor, mask: torch.Tensor, beta: float
    ) -> Estimate:
        assert ro.group is not None
        # The penalty is already in `score`: shape_rewards must not subtract it again.
        rewards, kl = shape_rewards(
            self.sequence(score, ro.group),
            ro.logprobs,
            ro.ref_logprobs,
            mask,
            kl_coef=beta,
            kind=self.cfg.kl_estimator,
        )
        return Estimate(self.token_advantages(rewards, mask), kl)

    def _per_group(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        score: torch.Tensor,
        group: torch.Tensor,
    ) -> torch.Tensor:
        # On the global batch (a group never spans processes; grpo's batch std needs all).
        return self.dp.across(fn, score, group)


@register_adv_est
class Grpo(CriticFree):
    """(score - group mean) / std, the std by ``ppo.scale_rewards`` [GRPO; TRL]."""

    name = "grpo"

    def sequence(self, score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        scale = self.cfg.scale_rewards
        return self._per_group(lambda x, g: grpo_advantages(x, g, scale), score, group)


@register_adv_est
class DrGrpo(CriticFree):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): GRPO without its two
    biases. The advantage is the score minus its group's mean, never divided by the group's
    std (which up-weights prompts whose replies are all nearly equally good or bad), and the
    policy loss sums each token's term over a constant, replies × ``ppo.max_new_tokens``
    (``loss_agg`` ``token_sum``), instead of averaging each reply over its own length (which
    lets a wrong reply grow long at a low cost per token). TRL: ``scale_rewards="none"`` with
    ``loss_type="dr_grpo"``."""

    name = "dr_grpo"

    def sequence(self, score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return self._per_group(lambda x, g: grpo_advantages(x, g, "none"), score, group)


@register_adv_est
class Rloo(CriticFree):
    """score - mean of the other replies to the same prompt [RLOO; OpenRLHF ``rloo``]."""

    name = "rloo"

    def sequence(self, score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return self._per_group(rloo_advantages, score, group)


@register_adv_est
class ReinforcePp(CriticFree):
    """REINFORCE++: the penalised score itself at the last token, r_t as gae; the discounted
    return (γ = ``ppo.gamma``) whitened over the global batch's tokens (REINFORCE++'s batch
    normalisation replaces the critic as a baseline)."""

    name = "reinforce_pp"

    def sequence(self, score: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return score

    def token_advantages(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gamma = self.cfg.gamma
        return self.dp.across(lambda x, m: reinforce_pp_returns(x, m, gamma), rewards, mask)


__all__ = [
    "REGISTRY",
    "CriticFree",
    "Estimate",
    "Estimator",
    "estimator_for",
    "register_adv_est",
]
