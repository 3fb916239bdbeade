"""The PPO loop for language models: rollout → score → shape → advantages → clipped updates.

One readable loop in the style of cleanrl's ``ppo.py``; every hyperparameter is a documented
field of :class:`rlhf_lab.config.PpoConfig` (``params.yaml: ppo``), used directly. One step::

    ro        = rollout: prompts, sampled replies, scores, logp / ref / V on the sampled tokens
                (rlhf_lab.ppo.rollout; replies with a nan/inf anywhere dropped and counted)
    score'    = score - ppo.missing_eos_penalty if no EOS (before any group statistic)
    A         = the estimator of ppo.advantage (rlhf_lab.ppo.advantages), over the WHOLE batch:
      gae          r_t = -β·KL_t, + score' at the last token; GAE(r, V; γ, λ); A whitened
      grpo         (score' - group mean) / group std (ppo.scale_rewards), at the last token,
                   -β·KL_t on every token; A_t = Σ_{t'≥t} r_t'
      dr_grpo      score' - group mean (no std); otherwise as grpo, with the loss summed over
                   a constant (replies × ppo.max_new_tokens)
      rloo         score' - mean of the other replies to the prompt; otherwise as grpo
      reinforce_pp r_t as gae; A_t = discounted return (γ), whitened over the batch's tokens
      (with ppo.kl_in_loss the reward holds no KL; β·k3-KL is added to the policy loss)
    for ppo.epochs: for ppo.minibatches:
        loss = clipped policy loss (ppo.clip; the estimator's loss aggregation) [+ β·KL]
               + ppo.vf_coef · clipped value loss (ppo.clip_value; estimators with a critic)
        (the first ppo.critic_warmup_steps steps train only the critic; on a shared trunk one
         backbone pass and one backward serve both losses, and the warm-up trains the value
         head alone on detached hidden states)
        skip if non-finite; clip the global grad norm (ppo.max_grad_norm); AdamW step
        (optionally stop the epochs once approx-KL > ppo.target_approx_kl)
    β ← KL controller (fixed, or adaptive towards ppo.kl_target over ppo.kl_horizon samples;
        a nan/inf KL leaves β as it is)

The details follow OpenAI's lm-human-preferences and "The N Implementation Details of RLHF
with PPO" (Huang et al. 2024, [N-details]); the math lives in :mod:`rlhf_lab.ppo.core`, the
estimators in :mod:`rlhf_lab.ppo.advantages`, the model (one base; its critic laid out as
:class:`rlhf_lab.config.CriticLayout` says) in :mod:`rlhf_lab.ppo.model`, checkpoints and
resume in :mod:`rlhf_lab.ppo.checkpoint`. Under ``accelerate launch`` each process runs this
loop on its shard of every batch, with batch statistics, losses and gradients made global by
:mod:`rlhf_lab.ppo.distributed` (the identity for one process).

This module stays whole: it is the one PPO loop, read top to bottom as cleanrl's ``ppo.py`` is;
its math, estimators, model and checkpoints already live in the modules named above.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rlhf_lab import precision, ui
from rlhf_lab.config import CriticLayout, PpoConfig
from rlhf_lab.errors import NonFiniteLossError, RlhfLabError
from rlhf_lab.ppo.advantages import Estimate, estimator_for
from rlhf_lab.ppo.checkpoint import Checkpointing
from rlhf_lab.ppo.composite_score import Scores
from rlhf_lab.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    kl_loss,
    masked_mean,
    per_reply_agg,
    policy_loss,
    value_loss,
)
from rlhf_lab.ppo.distributed import DataParallel, check_sizes
from rlhf_lab.ppo.model import CRITIC, PolicyCritic, chat_prompt_ids, trim_batch
from rlhf_lab.ppo.rollout import Rollout, Row, Scorer, batch_indices, collect_rollout
from rlhf_lab.training.common import Curves, NonFiniteGuard

MINIBATCH_KEYS = ("loss/policy", "loss/value", "policy/clipfrac", "policy/approxkl", "val/clipfrac")
"""Logged per minibatch (averaged over a step's updates): nan in a step that made none."""
STEP_LINE = {"score": "objective/score", "kl": "objective/kl", "length": "gen/length"}
"""What the per-step line shows (``ui.step_line``), from the step's logged stats."""


class _Units(NamedTuple):
    """A minibatch's share of the global minibatch: what each loss averages over."""

    tokens: float
    scale: float
    """This process's share of the global token mean (1 for one process)."""
    total_tokens: float
    units: float
    """Tokens, or replies when the policy loss weighs replies (seq_mean, token_sum)."""
    pg_scale: float
    total_units: float


class _PolicyTerms(NamedTuple):
    """The policy side of a minibatch's loss (values too on a shared trunk: one pass)."""

    new_values: torch.Tensor | None
    pg_loss: torch.Tensor
    pg_clipfrac: torch.Tensor
    approxkl: torch.Tensor
    objective: torch.Tensor
    kl_term: torch.Tensor | None


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


def _curve_values(stats: Mapping[str, float]) -> dict[str, float]:
    """A history entry's values for the curves (``step`` is their x axis, not a curve)."""
    return {k: v for k, v in stats.items() if k != "step"}


class PpoTrainer(Checkpointing):
    """PPO on ``model`` (policy + critic, or a policy alone) over prompt ``rows``, maximising
    ``scorer``. The critic layout follows the model (:attr:`PolicyCritic.layout`); the
    advantages, ``ppo.advantage``'s estimator (:func:`rlhf_lab.ppo.advantages.estimator_for`).

    ``scorer(replies, rows, step) -> Scores`` is usually a
    :class:`rlhf_lab.ppo.composite_score.CompositeScorer`. ``checkpoint_dir`` / ``plots_dir`` are
    optional (tests run without curves). ``fingerprint`` is what the run depends on besides
    ``ppo`` (:func:`rlhf_lab.ppo.fingerprint.stage_fingerprint`); the trainer adds the ``ppo``
    section itself. Call :meth:`train`.
    """

    def __init__(
        self,
        model: PolicyCritic,
        rows: Sequence[Row],
        scorer: Scorer,
        cfg: PpoConfig,
        *,
        system_prompt: str | None = None,
        checkpoint_dir: str | Path | None = None,
        plots_dir: str | Path | None = None,
        progress: bool = True,
        fingerprint: Mapping[str, Any] | None = None,
        dp: DataParallel | None = None,
    ) -> None:
        if not rows:
            raise RlhfLabError("train_ppo: no prompts to train on")
        # One process unless the stage runs under `accelerate launch` (ppo/distributed.py).
        self.dp = dp or DataParallel()
        self.estimator = estimator_for(cfg, self.dp)
        if model.layout.has_critic != self.estimator.needs_critic:
            need = "a critic" if self.estimator.needs_critic else "no critic"
            raise RlhfLabError(
                f"train_ppo: ppo.advantage {cfg.advantage!r} needs a model with {need}"
            )
        check_sizes(cfg.batch_size, cfg.rollout_size, cfg.minibatches, self.dp.world)
        self.model = model
        self.tok = model.tok
        self.rows = list(rows)
        self.scorer = scorer
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.plots_dir = Path(plots_dir) if plots_dir is not None else None
        self.progress = progress
        # Tokenise every prompt once; a row is re-used every pass over the data.
        self.prompt_ids = [
            chat_prompt_ids(self.tok, r["prompt"], system_prompt, cfg.max_prompt_length)
            for r in self.rows
        ]
        self.params = model.trainable_parameters()
        # Adam eps 1e-5 as lm-human-preferences / cleanrl ([N-details] "Adam epsilon").
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl
            else FixedKLController(cfg.kl_coef)
        )
        self.step = 0
        self.guard = NonFiniteGuard(
            "train_ppo",
            "ppo.max_bad_steps",
            cfg.max_bad_steps,
            "lower ppo.lr, or check the reward components for nan/inf",
        )
        self.history: list[dict[str, float]] = []
        self.fingerprint = {**self._ppo_fingerprint(), **dict(fingerprint or {})}
        # Checkpoints of another run (or of this one, for a fresh start): removed once this
        # run has saved its first, never before (see train()).
        self._stale: list[Path] = []

    @property
    def skipped_updates(self) -> int:
        """Updates skipped so far for a non-finite loss, gradient or batch (checkpointed)."""
        return self.guard.skipped

    @skipped_updates.setter
    def skipped_updates(self, value: int) -> None:
        self.guard.skipped = value

    # -- rollout -------------------------------------------------------------------------------

    def rollout(self, step: int) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and evaluate one batch with the current policy (no gradients)."""
        return collect_rollout(
            self.model, self.scorer, self.cfg, self.dp, self.rows, self.prompt_ids, step
        )

    # -- update --------------------------------------------------------------------------------

    def update(self, ro: Rollout, step: int) -> dict[str, float]:
        """Advantages by ``ppo.advantage``'s estimator, then ``ppo.epochs`` passes of clipped
        updates over minibatches; the step's logged numbers."""
        mask = ro.response_mask.float()
        beta = self.kl_ctl.value
        # Global decisions (every process must take the same branch): a process left with no
        # reply at all skips the step everywhere (its minibatches would be empty).
        if self.dp.max(int(not ro.rows)) or self.dp.sum(float(mask.sum())) < 2:
            # Every reply was dropped as non-finite (or fewer than the 2 tokens whitening
            # needs remain): nothing to learn from; each planned update counts as skipped.
            for _ in range(self.cfg.epochs * self.cfg.minibatches):
                self._skip(step, "no reply with a finite score left in the batch")
            return self._no_update_stats(ro, beta)
        est = self._estimate(ro, mask, beta)
        warmup = step < self.cfg.critic_warmup_steps
        sums, updates, epochs_run = self._epochs(ro, est, beta, warmup, step)
        stats = {k: v / max(updates, 1) for k, v in sums.items()}
        stats.update(self._batch_stats(ro, est, mask, beta))
        stats.update(
            {
                "train/updates": float(updates),
                "train/epochs": float(epochs_run),
                "train/skipped_updates": float(self.skipped_updates),
                "objective/nonfinite_replies": self.dp.sum(float(ro.nonfinite)),
                "objective/nonfinite_kl": float(not math.isfinite(stats["objective/kl"])),
                "train/critic_warmup": float(warmup),
            }
        )
        if self.estimator.needs_critic:
            stats.update(self._critic_stats(ro, est, mask))
        for key in MINIBATCH_KEYS:  # a step whose every update was skipped logs nan
            stats.setdefault(key, float("nan"))
        return self._without_critic_keys(stats)

    def _penalised(self, score: torch.Tensor, eos_found: torch.Tensor) -> torch.Tensor:
        """The score minus ppo.missing_eos_penalty for replies with no EOS ([N-details] "EOS
        trick"): what every estimator and ``objective/score`` see."""
        return score - ((self.cfg.missing_eos_penalty or 0.0) * (~eos_found).float())

    def _estimate(self, ro: Rollout, mask: torch.Tensor, beta: float) -> Estimate:
        """The estimator's advantages (and returns) over the WHOLE rollout batch, before it
        is cut into minibatches: a group split across minibatches keeps its baseline, so the
        estimator does not depend on ppo.minibatches."""
        cfg = self.cfg
        # With ppo.kl_in_loss the KL is a loss term (GRPO, TRL's beta): the reward holds none.
        reward_beta = 0.0 if cfg.kl_in_loss else beta
        # The penalty before any group statistic: a truncated reply meets its siblings with it.
        penalised = self._penalised(ro.clipped_score, ro.eos_found)
        with torch.no_grad():
            return self.estimator.compute(ro, penalised, mask, reward_beta)

    def _epochs(
        self, ro: Rollout, est: Estimate, beta: float, warmup: bool, step: int
    ) -> tuple[dict[str, float], int, int]:
        """``ppo.epochs`` shuffled passes over the batch: (summed logs, updates, epochs run)."""
        cfg, dp = self.cfg, self.dp
        n = len(ro.rows)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * step + 1)
        sums: dict[str, float] = {}
        updates = epochs_run = 0
        # Per process: its share of each minibatch, and the same number of minibatches on every
        # process (the most any needs; a process short of replies after non-finite drops runs
        # a zero-weight row), so the gradient all-reduces line up.
        mb_size = cfg.minibatch_size // dp.world
        n_minibatches = dp.max(math.ceil(n / mb_size))
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            epoch_kl = []
            for start in range(0, n_minibatches * mb_size, mb_size):
                mb = perm[start : start + mb_size]
                weight = 1.0 if len(mb) else 0.0
                mb = mb if len(mb) else perm[:1]
                logged = self._minibatch(ro, est, mb, weight, beta, warmup, step)
                if logged is None:
                    continue
                updates += 1
                for key, value in logged.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                epoch_kl.append(float(logged["policy/approxkl"]))
            epochs_run += 1
            # cleanrl's target_kl: stop this step's epochs once the policy moved too far.
            if (
                cfg.target_approx_kl is not None
                and epoch_kl
                and sum(epoch_kl) / len(epoch_kl) > cfg.target_approx_kl
            ):
                break
        self.optimizer.zero_grad(set_to_none=True)
        return sums, updates, epochs_run

    def _units(self, m: torch.Tensor) -> _Units:
        """scale: this process's share of the global minibatch's mean — over tokens, or over
        replies when the policy loss weighs replies (the unit it averages)."""
        dp = self.dp
        tokens = float(m.sum())
        scale, total_tokens = dp.loss_scale(tokens)
        if per_reply_agg(self.estimator.loss_agg):
            units = float((m.sum(dim=1) > 0).sum())
            pg_scale, total_units = dp.loss_scale(units)
        else:
            units, pg_scale, total_units = tokens, scale, total_tokens
        return _Units(tokens, scale, total_tokens, units, pg_scale, total_units)

    def _policy_terms(
        self,
        batch: tuple[torch.Tensor, ...],
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        ref_logp: torch.Tensor,
        m: torch.Tensor,
        beta: float,
        warmup: bool,
    ) -> _PolicyTerms:
        """The clipped policy loss (+ β·KL with ppo.kl_in_loss) of one minibatch.

        Critic warm-up (OpenRLHF --critic_warmup_steps): the policy loss is only measured,
        never backpropagated, so the policy adapter stays as it is; a shared trunk then trains
        the value head alone on detached hidden states (policy_grad=False), outside the
        no-grad block so the head gets its gradient.
        """
        cfg, model = self.cfg, self.model
        agg = self.estimator.loss_agg
        shared = model.layout is CriticLayout.SHARED_TRUNK
        new_values = kl_term = None
        if shared:
            new_logp, _, new_values = model.logprobs_and_values(*batch, policy_grad=not warmup)
        with torch.set_grad_enabled(not warmup):
            if not shared:
                new_logp, _ = model.policy_logprobs(*batch)
            pg_loss, pg_clipfrac, approxkl = policy_loss(
                new_logp, old_logp, advantages, m, cfg.clip, agg, cfg.max_new_tokens
            )
            objective = pg_loss
            if cfg.kl_in_loss:
                kl_term = kl_loss(new_logp, ref_logp, m, agg, cfg.max_new_tokens)
                objective = pg_loss + beta * kl_term
        return _PolicyTerms(new_values, pg_loss, pg_clipfrac, approxkl, objective, kl_term)

    def _minibatch(
        self,
        ro: Rollout,
        est: Estimate,
        mb: torch.Tensor,
        weight: float,
        beta: float,
        warmup: bool,
        step: int,
    ) -> dict[str, torch.Tensor] | None:
        """One optimiser step on the rows ``mb`` (``weight`` 0: a stand-in row that only keeps
        the processes' all-reduces in step); its logged numbers, or None if skipped.

        Separate critic: the policy and value losses go through disjoint graphs (policy
        adapter vs critic adapter + head), so each is backpropagated as soon as it is built:
        the gradients are those of pg_loss + vf_coef * vf_loss, but only one graph's
        activations are alive at a time (peak memory = the larger, not the sum). Shared trunk
        (lm-human-preferences, TRL's original PPOTrainer): one backbone pass gives both, and
        their sum is backpropagated once, so the value loss also moves the policy adapter.
        """
        cfg, dp, model = self.cfg, self.dp, self.model
        batch = trim_batch(ro.query[mb], ro.query_mask[mb], ro.response[mb], ro.response_mask[mb])
        w = batch[2].shape[1]
        m = batch[3].float() * weight
        u = self._units(m)
        dev = model.device
        self.optimizer.zero_grad(set_to_none=True)
        pt = self._policy_terms(
            batch,
            ro.logprobs[mb, :w].to(dev),
            est.advantages[mb, :w].to(dev),
            ro.ref_logprobs[mb, :w].to(dev),
            m.to(dev),
            beta,
            warmup,
        )
        (loss,) = dp.global_mean(u.units, u.total_units, pt.objective.detach())
        ok = bool(torch.isfinite(loss))
        pg_term = None
        if ok and not warmup:
            pg_term = pt.objective * u.pg_scale
            if model.layout is not CriticLayout.SHARED_TRUNK:
                pg_term.backward()
                pg_term = None
        vf = None
        if ok and self.estimator.needs_critic:
            vf = self._value_terms(batch, pt.new_values, ro, est, mb, m.to(dev))
            (vf_mean,) = dp.global_mean(u.tokens, u.total_tokens, vf[0].detach())
            loss = loss + cfg.vf_coef * vf_mean
            ok = bool(torch.isfinite(loss))
            if ok:
                vf_term = cfg.vf_coef * vf[0] * u.scale
                # the shared trunk's one backward: both losses through one graph
                (vf_term if pg_term is None else pg_term + vf_term).backward()
        if ok:
            # averaged before clipping: every process clips the same global gradient.
            dp.average_gradients(self.params)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            ok = bool(torch.isfinite(grad_norm))
        if not ok:
            self._skip(step, f"non-finite loss/gradient ({float(loss)})")
            return None
        self.optimizer.step()
        return self._minibatch_logs(u, pt, vf, loss, grad_norm)

    def _value_terms(
        self,
        batch: tuple[torch.Tensor, ...],
        new_values: torch.Tensor | None,
        ro: Rollout,
        est: Estimate,
        mb: torch.Tensor,
        m: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped value loss and clipfrac of one minibatch (values from the policy pass
        on a shared trunk, else from the critic adapter's own pass)."""
        if new_values is None:
            new_values = self.model.values(*batch)
        assert est.returns is not None
        w, dev = batch[2].shape[1], self.model.device
        return value_loss(
            new_values,
            ro.values[mb, :w].to(dev),
            est.returns[mb, :w].to(dev),
            m,
            self.cfg.clip_value,
        )

    def _minibatch_logs(
        self,
        u: _Units,
        pt: _PolicyTerms,
        vf: tuple[torch.Tensor, torch.Tensor] | None,
        loss: torch.Tensor,
        grad_norm: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """What a minibatch logs (and target_approx_kl compares): the global minibatch's."""
        dp = self.dp
        (pg_loss,) = dp.global_mean(u.units, u.total_units, pt.pg_loss)
        pg_clipfrac, approxkl = dp.global_mean(
            u.tokens, u.total_tokens, pt.pg_clipfrac, pt.approxkl
        )
        logged = {
            "loss/policy": pg_loss,
            "loss/total": loss,
            "policy/clipfrac": pg_clipfrac,
            "policy/approxkl": approxkl,
            "train/grad_norm": grad_norm,
        }
        if pt.kl_term is not None:
            (logged["loss/kl"],) = dp.global_mean(u.units, u.total_units, pt.kl_term)
        if vf is not None:
            vf_loss, vf_clipfrac = dp.global_mean(u.tokens, u.total_tokens, *vf)
            logged.update({"loss/value": vf_loss, "val/clipfrac": vf_clipfrac})
        return logged

    def _batch_stats(
        self, ro: Rollout, est: Estimate, mask: torch.Tensor, beta: float
    ) -> dict[str, float]:
        """The step's objective and generation numbers over the global batch (every process's
        rows; the tensors themselves for one process); moves the KL controller."""
        kl, mask, clipped_score, eos_found, entropy = self.dp.gather_rows(
            est.kl, mask, ro.clipped_score, ro.eos_found, ro.entropy
        )
        # Mean KL per reply (sum over tokens): what the adaptive controller targets.
        kl_per_reply = (kl * mask).sum(dim=1)
        mean_kl = float(kl_per_reply.mean())
        # The controllers ignore a non-finite KL too (counted in objective/nonfinite_kl).
        if math.isfinite(mean_kl):
            self.kl_ctl.update(mean_kl, len(kl))
        penalised = self._penalised(clipped_score, eos_found)
        return {
            "objective/score": float(penalised.mean()),
            "objective/kl": mean_kl,
            "objective/kl_coef": beta,
            "objective/rlhf_reward": float((penalised - beta * kl_per_reply).mean()),
            "objective/entropy": float(masked_mean(entropy, mask)),
            "gen/length": float(mask.sum(dim=1).mean()),
            "gen/eos_rate": float(eos_found.float().mean()),
        }

    def _critic_stats(self, ro: Rollout, est: Estimate, mask: torch.Tensor) -> dict[str, float]:
        """How well the critic's values predicted this step's returns (global batch)."""
        assert est.returns is not None
        values, returns, mask = self.dp.gather_rows(ro.values, est.returns, mask)
        return {
            "val/explained_variance": float(explained_variance(values, returns, mask)),
            "val/mean": float(masked_mean(values, mask)),
            "val/returns_mean": float(masked_mean(returns, mask)),
        }

    def _without_critic_keys(self, stats: dict[str, float]) -> dict[str, float]:
        """A critic-free run logs no critic metric at all (not zeros, not nan)."""
        if self.estimator.needs_critic:
            return stats
        return {k: v for k, v in stats.items() if not (k.startswith("val/") or k == "loss/value")}

    def _skip(self, step: int, reason: str) -> None:
        """A non-finite loss, gradient or batch: skip the update, count it, abort past the limit."""
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.skip(step, reason)

    def _no_update_stats(self, ro: Rollout, beta: float) -> dict[str, float]:
        """The stats of a step whose batch had nothing finite left (same keys, nan values)."""
        nan = float("nan")
        stats = dict.fromkeys(
            (
                "loss/policy",
                "loss/value",
                "loss/total",
                "policy/clipfrac",
                "policy/approxkl",
                "val/clipfrac",
                "train/grad_norm",
                "objective/score",
                "objective/kl",
                "objective/rlhf_reward",
                "objective/entropy",
                "val/explained_variance",
                "val/mean",
                "val/returns_mean",
                "gen/length",
                "gen/eos_rate",
            ),
            nan,
        )
        stats.update(
            {
                "objective/kl_coef": beta,
                "train/updates": 0.0,
                "train/epochs": 0.0,
                "train/skipped_updates": float(self.skipped_updates),
                "objective/nonfinite_replies": self.dp.sum(float(ro.nonfinite)),
                "objective/nonfinite_kl": 0.0,
            }
        )
        return self._without_critic_keys(stats)

    # -- the loop ------------------------------------------------------------------------------

    def train(self, resume: bool | None = None) -> dict[str, Any]:
        """Train to ``ppo.steps``, continuing a compatible checkpoint; return final metrics.

        ``resume=None`` (what a plain ``dvc repro`` runs) continues from the newest checkpoint
        whose fingerprint equals this run's, else starts at step 0: the natural re-run after a
        crash continues, and a changed input can never be continued by accident (the
        fingerprint covers params, prompts, models and code). ``resume=True`` requires such a
        checkpoint and fails with one line naming what changed; it tolerates a change of the
        source code alone (with a warning), which is how a run continues after a fix to what
        crashed it. ``resume=False`` starts at step 0. Checkpoints a run does not continue
        from are deleted only after it has saved its own first one, so a run killed before
        that leaves them resumable.
        """
        cfg = self.cfg
        self._start(resume)
        # Identical replicas from here on; after that, identical averaged gradients keep them so.
        self.dp.broadcast_parameters(self.params)
        # A fresh folder, then the history replayed: after --resume the curves are exactly
        # those of an uninterrupted run (no duplicate points for re-run steps).
        with Curves(self.plots_dir) as curves:
            for stats in self.history:
                curves.log(int(stats["step"]), _curve_values(stats))
            steps = range(self.step, cfg.steps)
            it = ui.track(steps, "train_ppo", total=len(steps)) if self.progress else steps
            for step in it:
                ro, timing = self.rollout(step)
                t0 = time.perf_counter()
                stats = self.update(ro, step)
                timing["time/update_s"] = time.perf_counter() - t0
                timing["time/samples_per_s"] = self.dp.sum(len(ro.rows)) / (
                    timing["time/rollout_s"] + timing["time/update_s"]
                )
                stats = {**self._reward_means(ro.scored), **stats, **timing}
                if self.scorer_has_schedule():
                    stats.update({f"weight/{k}": v for k, v in ro.scored.weights.items()})
                stats = {"step": float(step), **stats}
                self.history.append(stats)
                curves.log(step, _curve_values(stats))
                if self.dp.is_main:
                    ui.step_line(
                        "train_ppo",
                        step + 1,
                        cfg.steps,
                        {k: stats.get(f, math.nan) for k, f in STEP_LINE.items()},
                        timing["time/rollout_s"] + timing["time/update_s"],
                    )
                self.step = step + 1
                if self.checkpoint_dir is not None and (
                    self.step % cfg.save_every == 0 or self.step == cfg.steps
                ):
                    self.save_checkpoint()
        return self.final_metrics()

    def _reward_means(self, scored: Scores) -> dict[str, float]:
        """``reward/<component>`` → mean over the global batch (``Scores.means`` for one
        process)."""
        if not self.dp.active:
            return scored.means()
        names = list(scored.components)
        columns = self.dp.gather_rows(*(scored.components[k].float() for k in names))
        return {f"reward/{k}": float(c.mean()) for k, c in zip(names, columns, strict=True)}

    def scorer_has_schedule(self) -> bool:
        return getattr(self.scorer, "weights_end", None) is not None

    def final_metrics(self) -> dict[str, Any]:
        """The last step's metrics, plus run totals (for ``metrics/train_ppo.json``)."""
        if not self.history:
            return {}
        last = {k: v for k, v in self.history[-1].items() if k != "step"}
        last["objective/score_start"] = self.history[0]["objective/score"]
        last["train/steps"] = self.step
        last["train/skipped_updates"] = self.skipped_updates
        for key in ("objective/nonfinite_replies", "objective/nonfinite_kl"):
            # run totals (each step logs its own count); .get: histories of older checkpoints
            last[key.replace("objective/", "train/")] = sum(h.get(key, 0.0) for h in self.history)
        last["time/total_rollout_s"] = sum(h["time/rollout_s"] for h in self.history)
        last["time/total_update_s"] = sum(h["time/update_s"] for h in self.history)
        # Which precision the log-probs and values ran in (rlhf_lab.precision).
        last["perf/bf16"] = int(precision.bf16_enabled())
        return last


__all__ = ["CRITIC", "NonFiniteLossError", "PpoTrainer", "Rollout", "batch_indices"]
