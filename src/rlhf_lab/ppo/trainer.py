"""The PPO loop for language models: rollout → score → shape → advantages → clipped updates.

One readable loop in the style of cleanrl's ``ppo.py``; every hyperparameter is a documented
field of :class:`rlhf_lab.config.PpoConfig` (``params.yaml: ppo``), used directly. One step::

    rows      = next ppo.batch_size prompts (a seeded shuffle per pass over data/prompts),
                each repeated ppo.num_generations times (one group per prompt)
    response  = sample(policy, T = ppo.temperature, stop at EOS, ≤ ppo.max_new_tokens)
    score     = Σ w_c · component_c  (rlhf_lab.ppo.composite_score), clipped to ±ppo.score_clip
    logp, ref, V = policy / reference / critic on the sampled tokens (no grad, per minibatch;
                   with critic.shared_trunk logp and V come from one policy pass)
    drop the replies whose score, logp, ref, V or KL is nan/inf (counted; the rest trains)
    score'    = score - ppo.missing_eos_penalty if no EOS (before any group statistic)
    A         = by ppo.advantage (OpenRLHF's --advantage_estimator), over the WHOLE batch:
      gae          r_t = -β·KL_t, + score' at the last token; GAE(r, V; γ, λ); A whitened
      grpo         (score' - group mean) / group std (ppo.scale_rewards), at the last token,
                   -β·KL_t on every token; A_t = Σ_{t'≥t} r_t'
      rloo         score' - mean of the other replies to the prompt; otherwise as grpo
      reinforce_pp r_t as gae; A_t = discounted return (γ), whitened over the batch's tokens
      (with ppo.kl_in_loss the reward holds no KL; β·k3-KL is added to the policy loss)
    for ppo.epochs: for ppo.minibatches:
        loss = clipped policy loss (ppo.clip; ppo.loss_agg) [+ β·KL]
               + ppo.vf_coef · clipped value loss (ppo.clip_value; gae only)
        (gae: the first ppo.critic_warmup_steps steps train only the critic; with
         critic.shared_trunk one backbone pass and one backward serve both losses, and the
         warm-up trains the value head alone on detached hidden states)
        skip if non-finite; clip the global grad norm (ppo.max_grad_norm); AdamW step
        (optionally stop the epochs once approx-KL > ppo.target_approx_kl)
    β ← KL controller (fixed, or adaptive towards ppo.kl_target over ppo.kl_horizon samples;
        a nan/inf KL leaves β as it is)

The details follow OpenAI's lm-human-preferences and "The N Implementation Details of RLHF
with PPO" (Huang et al. 2024, [N-details]); the math lives in :mod:`rlhf_lab.ppo.core`, the
model (one base, two adapters, or one adapter + value head for a shared trunk) in
:mod:`rlhf_lab.ppo.model`. Under ``accelerate launch`` each
process runs this loop on its shard of every batch, with batch statistics, losses and
gradients made global by :mod:`rlhf_lab.ppo.distributed` (the identity for one process).

Checkpoints (``checkpoints/train_ppo/step-NNNNNN/``, atomic, the last two kept) hold the
policy adapter, the critic (its value head alone for a shared trunk), the optimiser, every RNG
state, the KL controller, the metric history, the step and the run's fingerprint
(:mod:`rlhf_lab.ppo.fingerprint`), so a resume continues bit-for-bit where an uninterrupted
run with the same inputs would be (``tests/test_ppo_resume.py``) and never continues a run
whose inputs changed.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from rlhf_lab import precision, tracking, ui
from rlhf_lab.config import PpoConfig
from rlhf_lab.errors import NonFiniteLossError, RlhfLabError
from rlhf_lab.io import atomic_dir, remove_dir
from rlhf_lab.ppo import fingerprint as fp
from rlhf_lab.ppo.composite_score import Scores
from rlhf_lab.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    discounted_returns,
    explained_variance,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    masked_mean,
    masked_whiten,
    nonfinite_rows,
    policy_loss,
    reinforce_pp_returns,
    rloo_advantages,
    shape_rewards,
    value_loss,
)
from rlhf_lab.ppo.distributed import DataParallel, check_sizes, rank_seed, shard
from rlhf_lab.ppo.model import (
    CRITIC,
    POLICY,
    PolicyCritic,
    chat_prompt_ids,
    load_adapter_dir,
    load_critic_weights,
    save_adapter,
    save_critic,
    trim_batch,
)
from rlhf_lab.tokens import pad
from rlhf_lab.training.common import NonFiniteGuard

Row = dict[str, Any]
Scorer = Callable[[Sequence[str], Sequence[Row], int], Scores]

STEP_LINE = {"score": "objective/score", "kl": "objective/kl", "length": "gen/length"}
"""What the per-step line shows (``ui.step_line``), from the step's logged stats."""
CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
# ppo keys that may change between a checkpoint and a resume (they do not change what the
# finished steps computed). ppo.steps does when a weight schedule (reward.weights_end) spreads
# over the steps; the trainer then keeps it in the fingerprint.
RESUMABLE_CHANGES = {"steps", "save_every", "max_bad_steps"}


# ---------------------------------------------------------------------------------------------
# data order and RNG
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Prompt indices of ``step``: consecutive slices of a seeded shuffle, reshuffled per pass.

    A pure function of the step, so a resumed run draws exactly the prompts it would have.
    """
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, n)
        out.append(_permutation(n, seed, epoch)[i])
    return out


def rng_file(rank: int) -> str:
    """A checkpoint's RNG file of process ``rank`` (``rng.pt`` for rank 0 / one process)."""
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (sampling uses torch's global generator)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": json.dumps(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


# ---------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of sampled replies and everything the update needs (all on the CPU).

    Per-token tensors are [B, R] on the right-padded response; 0 on padding.
    """

    rows: list[Row]
    replies: list[str]
    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    eos_found: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    """Critic values; zeros for a critic-free estimator (never logged or used then)."""
    entropy: torch.Tensor
    scored: Scores
    """What the scorer returned: the raw composite, each component and the weights used."""
    clipped_score: torch.Tensor
    """The composite after normalisation and ``ppo.score_clip`` (before the EOS penalty): the
    sequence reward PPO optimises."""
    group: torch.Tensor | None = None
    """[B] int: the prompt (slot in the batch) each reply answers; replies of a group share it."""
    nonfinite: int = 0
    """Replies dropped from this batch for a non-finite score, log-prob, value or KL."""

    def select(self, keep: torch.Tensor) -> Rollout:
        """The rollout restricted to the replies where ``keep`` [B] is True."""
        idx = keep.nonzero().flatten()
        rows = idx.tolist()
        tensors = {
            name: getattr(self, name)[idx]
            for name in (
                "query",
                "query_mask",
                "response",
                "response_mask",
                "eos_found",
                "logprobs",
                "ref_logprobs",
                "values",
                "entropy",
                "clipped_score",
                "group",
            )
            if getattr(self, name) is not None
        }
        scored = Scores(
            self.scored.total[idx],
            {k: v[idx] for k, v in self.scored.components.items()},
            self.scored.weights,
        )
        return Rollout(
            rows=[self.rows[i] for i in rows],
            replies=[self.replies[i] for i in rows],
            scored=scored,
            nonfinite=self.nonfinite + len(self.rows) - len(rows),
            **tensors,
        )


def _delete_checkpoint(path: Path) -> None:
    # state.json first: it is what marks a checkpoint complete, so a kill midway through the
    # deletion leaves a directory checkpoints() ignores rather than one missing its weights.
    (path / "state.json").unlink(missing_ok=True)
    remove_dir(path)  # renamed aside first: never a half-deleted directory under its name


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------


class PpoTrainer:
    """PPO on ``model`` (policy + critic, or a policy alone) over prompt ``rows``, maximising
    ``scorer``. The critic layout follows the model (:attr:`PolicyCritic.shared_trunk`).

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
        if model.has_critic == cfg.critic_free:
            need = "no critic" if cfg.critic_free else "a critic"
            raise RlhfLabError(
                f"train_ppo: ppo.advantage {cfg.advantage!r} needs a model with {need}"
            )
        # One process unless the stage runs under `accelerate launch` (ppo/distributed.py).
        self.dp = dp or DataParallel()
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
        cfg, model, tok = self.cfg, self.model, self.tok
        # This process's contiguous slice of the global batch: sharded by prompt, so every
        # reply to one prompt (its num_generations samples) is sampled and scored here.
        prompts = shard(
            batch_indices(step, len(self.rows), cfg.batch_size, cfg.seed),
            self.dp.rank,
            self.dp.world,
        )
        # num_generations samples of each prompt, adjacent; a group is a prompt's slot in the
        # global batch (so group ids are unique across processes).
        idx = [i for i in prompts for _ in range(cfg.num_generations)]
        first = self.dp.rank * len(prompts)
        group = (first + torch.arange(len(prompts))).repeat_interleave(cfg.num_generations)
        rows = [self.rows[i] for i in idx]
        query, query_mask = pad([self.prompt_ids[i] for i in idx], tok.pad_token_id)

        t0 = time.perf_counter()
        with torch.inference_mode():
            sampled = model.generate(query, query_mask, cfg.max_new_tokens)
        # clone(): tensors made under inference_mode cannot be saved for backward later.
        response, response_mask, eos_found = (t.clone() for t in sampled)
        t_gen = time.perf_counter() - t0
        # Decode up to (not including) the EOS: the scorers see the text a user would.
        is_eos = torch.isin(response, torch.tensor(model.eos_ids))
        replies = tok.batch_decode(
            torch.where(is_eos, tok.pad_token_id, response), skip_special_tokens=True
        )

        t1 = time.perf_counter()
        scores = self.scorer(replies, rows, step)
        score = scores.total.float()
        if cfg.score_clip is not None:
            score = score.clamp(-cfg.score_clip, cfg.score_clip)
        t_score = time.perf_counter() - t1

        # logprobs (policy), reference logprobs (adapters off) and values (critic) of the
        # sampled tokens, one no-grad pass each per minibatch-sized chunk (logprobs and values
        # share one with critic.shared_trunk), trimmed to the chunk's own padding. Recomputed
        # rather than taken from generate(): the N-details ("recompute logprobs") —
        # generation-time logits differ with caching and padding.
        width = response.shape[1]
        lp, ref, val, ent = [], [], [], []
        with torch.inference_mode():
            for sl in _chunks(len(rows), cfg.minibatch_size):
                q, qm, r, rm = trim_batch(
                    query[sl], query_mask[sl], response[sl], response_mask[sl]
                )
                if model.shared_trunk:
                    logp, entropy, values = model.logprobs_and_values(q, qm, r, rm, entropy=True)
                else:
                    logp, entropy = model.policy_logprobs(q, qm, r, rm, entropy=True)
                    values = model.values(q, qm, r, rm) if model.has_critic else None
                assert entropy is not None
                lp.append(_pad_to(logp.cpu(), width))
                ent.append(_pad_to(entropy.cpu(), width))
                ref.append(_pad_to(model.ref_logprobs(q, qm, r, rm).cpu(), width))
                if values is not None:
                    val.append(_pad_to(values.float().cpu(), width))
                else:
                    val.append(torch.zeros_like(lp[-1]))
        ro = Rollout(
            rows=rows,
            replies=replies,
            query=query,
            query_mask=query_mask,
            response=response,
            response_mask=response_mask,
            eos_found=eos_found,
            logprobs=torch.cat(lp).clone(),
            ref_logprobs=torch.cat(ref).clone(),
            values=torch.cat(val).clone(),
            entropy=torch.cat(ent).clone(),
            scored=scores,
            clipped_score=score,
            group=group,
        )
        # A nan/inf anywhere in a reply's score, log-probs, values or KL would spread to the
        # whole batch through whitening and the KL mean: drop that reply (counted) instead.
        # The raw composite is checked, since score_clip turns inf into a finite number.
        bad = nonfinite_rows(
            scores.total,
            ro.response_mask,
            ro.logprobs,
            ro.ref_logprobs,
            ro.values,
            kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator),
        )
        if bool(bad.any()):
            ui.console.print(
                f"[yellow]warning:[/] train_ppo step {step}: {int(bad.sum())} of {len(rows)} "
                "replies dropped for a non-finite score, log-prob, value or KL",
                highlight=False,
            )
            ro = ro.select(~bad)
        timing = {
            "time/rollout_s": time.perf_counter() - t0,
            "time/generate_s": t_gen,
            "time/score_s": t_score,
        }
        return ro, timing

    # -- update --------------------------------------------------------------------------------

    def update(self, ro: Rollout, step: int) -> dict[str, float]:
        """Shape rewards, advantages (``ppo.advantage``), and ``ppo.epochs`` passes of clipped
        updates over minibatches."""
        cfg, model = self.cfg, self.model
        mask = ro.response_mask.float()
        beta = self.kl_ctl.value
        dp = self.dp
        # Global decisions (every process must take the same branch): a process left with no
        # reply at all skips the step everywhere (its minibatches would be empty).
        if dp.max(int(not ro.rows)) or dp.sum(float(mask.sum())) < 2:
            # Every reply was dropped as non-finite (or fewer than the 2 tokens whitening
            # needs remain): nothing to learn from; each planned update counts as skipped.
            for _ in range(cfg.epochs * cfg.minibatches):
                self._skip(step, "no reply with a finite score left in the batch")
            return self._no_update_stats(ro, beta)
        # With ppo.kl_in_loss the KL is a loss term (GRPO, TRL's beta), so the reward holds none.
        reward_beta = 0.0 if cfg.kl_in_loss else beta
        # The score every estimator sees: missing-EOS penalty included ([N-details] "EOS
        # trick"), so grpo/rloo compare a truncated reply with its siblings after the penalty.
        penalised = ro.clipped_score - ((cfg.missing_eos_penalty or 0.0) * (~ro.eos_found).float())
        # Advantages are computed over the WHOLE rollout batch before it is cut into
        # minibatches, so a group split across minibatches has the same baseline as if it were
        # not: the estimator does not depend on ppo.minibatches.
        returns = None
        with torch.no_grad():
            if cfg.advantage == "gae":
                # -β·KL_t per token, the score at the last valid token (lm-human-preferences
                # compute_rewards), missing-EOS penalty on the score.
                rewards, kl = shape_rewards(
                    ro.clipped_score,
                    ro.logprobs,
                    ro.ref_logprobs,
                    mask,
                    kl_coef=reward_beta,
                    kind=cfg.kl_estimator,
                    eos_found=ro.eos_found,
                    missing_eos_penalty=cfg.missing_eos_penalty,
                )
                if cfg.whiten_rewards:
                    # shift_mean=False: the sign of the mean reward carries information (TRL).
                    rewards = dp.across(masked_whiten, rewards, mask, shift_mean=False)
                advantages, returns = gae(rewards, ro.values, mask, cfg.gamma, cfg.lam)
                # Whitened over the whole batch, as TRL right after GAE ([N-details] "advantage
                # whitening"); padding stays 0.
                advantages = dp.across(masked_whiten, advantages, mask)
            else:
                advantages, kl = self._critic_free_advantages(ro, penalised, mask, reward_beta)

        n = len(ro.rows)
        warmup = step < cfg.critic_warmup_steps
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * step + 1)
        sums: dict[str, float] = {}
        updates = 0
        epochs_run = 0
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
                q, qm, r, rm = trim_batch(
                    ro.query[mb], ro.query_mask[mb], ro.response[mb], ro.response_mask[mb]
                )
                w = r.shape[1]
                m = rm.float() * weight
                # scale: this process's share of the global minibatch's mean — over tokens, or
                # over replies for ppo.loss_agg seq_mean (the unit the policy loss averages).
                tokens = float(m.sum())
                scale, total_tokens = dp.loss_scale(tokens)
                if cfg.loss_agg == "seq_mean":
                    units = float((m.sum(dim=1) > 0).sum())
                    pg_scale, total_units = dp.loss_scale(units)
                else:
                    units, pg_scale, total_units = tokens, scale, total_tokens
                dev = model.device
                self.optimizer.zero_grad(set_to_none=True)
                # Separate critic: the policy and value losses go through disjoint graphs
                # (policy adapter vs critic adapter + head), so each is backpropagated as soon
                # as it is built: the gradients are those of pg_loss + vf_coef * vf_loss, but
                # only one graph's activations are alive at a time (peak memory = the larger,
                # not the sum). Shared trunk (critic.shared_trunk; lm-human-preferences, TRL's
                # original PPOTrainer): one backbone pass gives both, and their sum is
                # backpropagated once, so the value loss also moves the policy adapter.
                shared = model.shared_trunk
                new_values = pg_term = None
                # Critic warm-up (OpenRLHF --critic_warmup_steps): the policy loss is only
                # measured, never backpropagated, so the policy adapter stays as it is; a
                # shared trunk then trains the value head alone on detached hidden states
                # (policy_grad=False), outside the no-grad block so the head gets its gradient.
                if shared:
                    new_logp, _, new_values = model.logprobs_and_values(
                        q, qm, r, rm, policy_grad=not warmup
                    )
                with torch.set_grad_enabled(not warmup):
                    if not shared:
                        new_logp, _ = model.policy_logprobs(q, qm, r, rm)
                    pg_loss, pg_clipfrac, approxkl = policy_loss(
                        new_logp,
                        ro.logprobs[mb, :w].to(dev),
                        advantages[mb, :w].to(dev),
                        m.to(dev),
                        cfg.clip,
                        cfg.loss_agg,
                    )
                    objective = pg_loss
                    if cfg.kl_in_loss:
                        kl_term = kl_loss(
                            new_logp, ro.ref_logprobs[mb, :w].to(dev), m.to(dev), cfg.loss_agg
                        )
                        objective = pg_loss + beta * kl_term
                (loss,) = dp.global_mean(units, total_units, objective.detach())
                ok = bool(torch.isfinite(loss))
                if ok and not warmup:
                    pg_term = objective * pg_scale
                    if not shared:
                        pg_term.backward()
                        pg_term = None
                if ok and returns is not None:
                    if new_values is None:
                        new_values = model.values(q, qm, r, rm)
                    vf_loss, vf_clipfrac = value_loss(
                        new_values,
                        ro.values[mb, :w].to(dev),
                        returns[mb, :w].to(dev),
                        m.to(dev),
                        cfg.clip_value,
                    )
                    (vf_mean,) = dp.global_mean(tokens, total_tokens, vf_loss.detach())
                    loss = loss + cfg.vf_coef * vf_mean
                    ok = bool(torch.isfinite(loss))
                    if ok:
                        vf_term = cfg.vf_coef * vf_loss * scale
                        # the shared trunk's one backward: both losses through one graph
                        (vf_term if pg_term is None else pg_term + vf_term).backward()
                if ok:
                    # averaged before clipping: every process clips the same global gradient.
                    dp.average_gradients(self.params)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    ok = bool(torch.isfinite(grad_norm))
                if not ok:
                    self._skip(step, f"non-finite loss/gradient ({float(loss)})")
                    continue
                self.optimizer.step()
                updates += 1
                # What is logged (and what target_approx_kl compares) is the global minibatch's.
                (pg_loss,) = dp.global_mean(units, total_units, pg_loss)
                pg_clipfrac, approxkl = dp.global_mean(tokens, total_tokens, pg_clipfrac, approxkl)
                logged = [
                    ("loss/policy", pg_loss),
                    ("loss/total", loss),
                    ("policy/clipfrac", pg_clipfrac),
                    ("policy/approxkl", approxkl),
                    ("train/grad_norm", grad_norm),
                ]
                if cfg.kl_in_loss:
                    logged.append(("loss/kl", *dp.global_mean(units, total_units, kl_term)))
                if returns is not None:
                    vf_loss, vf_clipfrac = dp.global_mean(
                        tokens, total_tokens, vf_loss, vf_clipfrac
                    )
                    logged += [("loss/value", vf_loss), ("val/clipfrac", vf_clipfrac)]
                for key, value in logged:
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                epoch_kl.append(float(approxkl))
            epochs_run += 1
            # cleanrl's target_kl: stop this step's epochs once the policy moved too far.
            if (
                cfg.target_approx_kl is not None
                and epoch_kl
                and sum(epoch_kl) / len(epoch_kl) > cfg.target_approx_kl
            ):
                break
        self.optimizer.zero_grad(set_to_none=True)

        # The logged means and the KL controller's input are over the global batch (every
        # process's rows; the tensors themselves for one process).
        kl, mask, clipped_score, eos_found, entropy, values = dp.gather_rows(
            kl, mask, ro.clipped_score, ro.eos_found, ro.entropy, ro.values
        )
        if returns is not None:
            (returns,) = dp.gather_rows(returns)
        n = len(kl)
        # Mean KL per reply (sum over tokens): what the adaptive controller targets.
        kl_per_reply = (kl * mask).sum(dim=1)
        mean_kl = float(kl_per_reply.mean())
        # The controllers ignore a non-finite KL too; counted here so it shows in the curves.
        kl_finite = math.isfinite(mean_kl)
        if kl_finite:
            self.kl_ctl.update(mean_kl, n)
        penalised = clipped_score - ((cfg.missing_eos_penalty or 0.0) * (~eos_found).float())
        stats = {k: v / max(updates, 1) for k, v in sums.items()}
        stats.update(
            {
                "objective/score": float(penalised.mean()),
                "objective/kl": mean_kl,
                "objective/kl_coef": beta,
                "objective/rlhf_reward": float((penalised - beta * kl_per_reply).mean()),
                "objective/entropy": float(masked_mean(entropy, mask)),
                "gen/length": float(mask.sum(dim=1).mean()),
                "gen/eos_rate": float(eos_found.float().mean()),
                "train/updates": float(updates),
                "train/epochs": float(epochs_run),
                "train/skipped_updates": float(self.skipped_updates),
                "objective/nonfinite_replies": dp.sum(float(ro.nonfinite)),
                "objective/nonfinite_kl": float(not kl_finite),
                "train/critic_warmup": float(warmup),
            }
        )
        if returns is not None:
            stats.update(
                {
                    "val/explained_variance": float(explained_variance(values, returns, mask)),
                    "val/mean": float(masked_mean(values, mask)),
                    "val/returns_mean": float(masked_mean(returns, mask)),
                }
            )
        for key in (
            "loss/policy",
            "loss/value",
            "policy/clipfrac",
            "policy/approxkl",
            "val/clipfrac",
        ):
            stats.setdefault(key, float("nan"))
        return self._without_critic_keys(stats)

    def _critic_free_advantages(
        self, ro: Rollout, penalised: torch.Tensor, mask: torch.Tensor, reward_beta: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token advantages ``[B, T]`` and KL of grpo / rloo / reinforce_pp (no critic).

        As OpenRLHF's experience maker: the sequence-level signal (the group-relative
        advantage, or the penalised score itself for reinforce_pp) sits at the last token,
        ``-β·KL_t`` on every token (OpenRLHF ``compute_reward`` after the group baseline), and
        the advantage of a token is the return from it. For grpo/rloo the return is undiscounted
        (γ = 1): the group advantage belongs to the whole reply, so with ``β = 0`` or
        ``ppo.kl_in_loss`` every token gets exactly the group advantage (DeepSeekMath). Their
        advantages are not whitened (the group baseline already centres them; TRL and OpenRLHF
        do not whiten ``group_norm`` either); reinforce_pp whitens over the batch.
        """
        cfg = self.cfg
        assert ro.group is not None
        dp = self.dp
        # Group statistics (and grpo's batch std) on the global batch: group ids are global
        # slots and a group never spans processes, so N processes compute what one does.
        if cfg.advantage == "grpo":
            scale = cfg.scale_rewards
            seq = dp.across(lambda x, g: grpo_advantages(x, g, scale), penalised, ro.group)
            gamma = 1.0
        elif cfg.advantage == "rloo":
            seq, gamma = dp.across(rloo_advantages, penalised, ro.group), 1.0
        else:
            seq, gamma = penalised, cfg.gamma
        # The penalty is already in `penalised`: shape_rewards must not subtract it again.
        rewards, kl = shape_rewards(
            seq, ro.logprobs, ro.ref_logprobs, mask, kl_coef=reward_beta, kind=cfg.kl_estimator
        )
        if cfg.advantage == "reinforce_pp":
            # Whitened over the global batch's tokens (REINFORCE++'s batch normalisation).
            return dp.across(lambda x, m: reinforce_pp_returns(x, m, gamma), rewards, mask), kl
        return discounted_returns(rewards, mask, gamma), kl

    def _without_critic_keys(self, stats: dict[str, float]) -> dict[str, float]:
        """A critic-free run logs no critic metric at all (not zeros, not nan)."""
        if self.model.has_critic:
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
        found = self.checkpoints()
        ignore = {fp.CODE} if resume else set()
        source = None if resume is False else self._resumable(found, ignore, required=bool(resume))
        if source is not None:
            self.load_checkpoint(source)
            if self.dp.is_main:
                ui.console.print(
                    f"resuming train_ppo at step {self.step}/{cfg.steps}", highlight=False
                )
            self._stale = [p for p in found if self._mismatch(p, ignore)]
        else:
            if resume and not found:
                ui.console.print("no checkpoint to resume from; starting at step 0")
            seed_everything(rank_seed(cfg.seed, self.dp.rank))
            self._stale = found
        # Identical replicas from here on; after that, identical averaged gradients keep them so.
        self.dp.broadcast_parameters(self.params)
        live = self._open_live()
        try:
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
                if self.dp.is_main:
                    ui.step_line(
                        "train_ppo",
                        step + 1,
                        cfg.steps,
                        {k: stats.get(f, math.nan) for k, f in STEP_LINE.items()},
                        timing["time/rollout_s"] + timing["time/update_s"],
                    )
                if live is not None:
                    self._log(live, stats)
                    tracking.log(step, {k: v for k, v in stats.items() if k != "step"})
                self.step = step + 1
                if self.checkpoint_dir is not None and (
                    self.step % cfg.save_every == 0 or self.step == cfg.steps
                ):
                    self.save_checkpoint()
        finally:
            if live is not None:
                live.end()
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

    # -- curves --------------------------------------------------------------------------------

    def _open_live(self) -> Any:
        if self.plots_dir is None:
            return None
        from dvclive import Live

        # Always a fresh directory, then the history replayed: after --resume the curves are
        # exactly those of an uninterrupted run (no duplicate points for re-run steps).
        live = Live(
            dir=str(self.plots_dir), resume=False, dvcyaml=None, save_dvc_exp=False, report=None
        )
        for stats in self.history:
            self._log(live, stats)
        return live

    @staticmethod
    def _log(live: Any, stats: Mapping[str, float]) -> None:
        live.step = int(stats["step"])
        for key, value in stats.items():
            if key != "step":
                live.log_metric(key, float(value))

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written ones are hidden temp dirs)."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        found = [
            p
            for p in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if (p / "state.json").is_file()
        ]
        return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))

    def save_checkpoint(self) -> Path:
        """Write ``step-NNNNNN/`` atomically; keep this run's newest :data:`KEEP_CHECKPOINTS`.

        The previous checkpoints are deleted only once the new one is complete (renamed into
        place by :func:`rlhf_lab.io.atomic_dir`), so a kill at any point leaves a complete one.
        """
        assert self.checkpoint_dir is not None
        target = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        # Every process's RNG (each samples its own stream); the main process alone writes.
        rngs = self.dp.gather_objects(rng_state())
        if not self.dp.is_main:
            return target
        with atomic_dir(target) as tmp:
            save_adapter(self.model, POLICY, tmp / "policy")
            if self.model.has_critic:
                save_critic(self.model, tmp / "critic")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rngs[0], tmp / "rng.pt")
            for rank, state in enumerate(rngs[1:], start=1):
                torch.save(state, tmp / rng_file(rank))
            state = {
                "step": self.step,
                "skipped_updates": self.skipped_updates,
                "kl_controller": self.kl_ctl.state_dict(),
                "config": self.cfg.model_dump(mode="json"),
                "fingerprint": self.fingerprint,
                # Python's json keeps NaN (explained variance of a constant return can be nan),
                # so the replayed history is exactly what was logged.
                "history": self.history,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        for old in self._stale:
            if old != target:  # a stale checkpoint of the same step was just replaced
                _delete_checkpoint(old)
        self._stale = []
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            _delete_checkpoint(old)
        return target

    def _ppo_fingerprint(self) -> dict[str, Any]:
        ppo = self.cfg.model_dump(mode="json")
        resumable = RESUMABLE_CHANGES - ({"steps"} if self.scorer_has_schedule() else set())
        out = fp.flatten({"ppo": {k: v for k, v in ppo.items() if k not in resumable}})
        if self.model.has_critic:
            # What the optimiser's state and the checkpoint's critic are laid out for (a value
            # head on the policy vs a critic adapter); critic-free runs ignore the option.
            out["critic.shared_trunk"] = self.model.shared_trunk
        return out

    def _mismatch(self, path: Path, ignore: AbstractSet[str] = frozenset()) -> list[str]:
        """Why the checkpoint at ``path`` cannot be continued by this run (empty: it can)."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            return ["state.json is unreadable"]
        if "fingerprint" not in state:
            return ["it records no fingerprint (made by an older rlhf-lab)"]
        saved = dict(state["fingerprint"])
        if self.model.has_critic:
            # Checkpoints from before critic.shared_trunk existed had the separate critic.
            saved.setdefault("critic.shared_trunk", False)
        found = fp.changes(saved, self.fingerprint, ignore)
        if int(state["step"]) > self.cfg.steps and "ppo.steps" not in self.fingerprint:
            found.append(
                f"ppo.steps changed (checkpoint at step {state['step']} vs now {self.cfg.steps})"
            )
        return found

    def _resumable(
        self, found: list[Path], ignore: AbstractSet[str], required: bool
    ) -> Path | None:
        """The newest of ``found`` this run can continue; else None, or an error if required."""
        newest_reasons: list[str] = []
        for path in reversed(found):
            reasons = self._mismatch(path, ignore)
            if not reasons:
                for change in fp.changes(
                    json.loads((path / "state.json").read_text())["fingerprint"],
                    self.fingerprint,
                ):
                    ui.console.print(
                        f"[yellow]warning:[/] {escape(f'{path}: resuming although {change}')}"
                    )
                return path
            newest_reasons = newest_reasons or reasons
        if found:
            why = fp.summarise(newest_reasons)
            if required:
                raise RlhfLabError(
                    f"{self.checkpoint_dir}: cannot resume: {why}; "
                    "run without --resume to start over, or delete the directory"
                )
            ui.console.print(
                f"{self.checkpoint_dir}: not resuming: {why}; starting at step 0 "
                "(the old checkpoints stay until this run saves its first)",
                highlight=False,
                markup=False,
            )
        return None

    def load_checkpoint(self, path: Path) -> None:
        """Restore the checkpoint at ``path`` (chosen by :meth:`train`)."""
        state = json.loads((path / "state.json").read_text())
        load_adapter_dir(self.model, POLICY, path / "policy")
        if self.model.has_critic:
            load_critic_weights(self.model, path / "critic")
        self.optimizer.load_state_dict(
            # On the CPU: load_state_dict moves each state to its parameter's device itself.
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        rng = path / rng_file(self.dp.rank)
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            # Saved by fewer processes: this rank's stream did not exist; start a new one
            # that depends on the seed, rank and step only (a resume under a different process
            # count continues the optimisation but not the exact samples).
            ui.console.print(
                f"[yellow]warning:[/] {path}: no RNG state for process {self.dp.rank} "
                "(saved by fewer processes); its sampling is reseeded",
                highlight=False,
            )
            seed_everything(rank_seed(self.cfg.seed, self.dp.rank) + 7919 * int(state["step"]))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.step = int(state["step"])
        self.skipped_updates = int(state["skipped_updates"])
        self.history = state["history"]


__all__ = ["CRITIC", "NonFiniteLossError", "PpoTrainer", "Rollout", "batch_indices"]
