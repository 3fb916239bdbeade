"""One rollout batch: sample replies to a step's prompts, score them, and evaluate the
policy, the reference and the critic on the sampled tokens (no gradients).

    rows      = next ppo.batch_size prompts (a seeded shuffle per pass over data/prompts),
                each repeated ppo.num_generations times (one group per prompt)
    response  = sample(policy, T = ppo.temperature, stop at EOS, ≤ ppo.max_new_tokens)
    score     = Σ w_c · component_c  (rlhf_lab.ppo.composite_score), clipped to ±ppo.score_clip
    logp, ref, V = policy / reference / critic on the sampled tokens (per minibatch-sized chunk;
                   with a shared trunk logp and V come from one policy pass)
    drop the replies whose score, logp, ref, V or KL is nan/inf (counted; the rest trains)

Three opt-in levers skip work the plain path repeats; each gives the plain rollout's tokens
and, to float32 rounding, its numbers (``tests/test_ppo_rollout_reuse.py``):

    ppo.logprobs_from_sampling  logp and entropy recorded during sampling, no policy pass
                                (float32 and a separate or no critic only; see _reuses_sampling)
    ppo.share_prompt_cache      one prefill per prompt for its num_generations replies
    ppo.sort_by_length          the logp/ref/V chunks hold rows of similar length

:func:`collect_rollout` is what :meth:`rlhf_lab.ppo.trainer.PpoTrainer.rollout` runs; under
``accelerate launch`` each process samples its own contiguous shard of the global batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import torch

from rlhf_lab import precision, ui
from rlhf_lab.config import CriticLayout, PpoConfig
from rlhf_lab.ppo.composite_score import Scores
from rlhf_lab.ppo.core import kl_estimate, nonfinite_rows
from rlhf_lab.ppo.distributed import DataParallel, shard
from rlhf_lab.ppo.model import PolicyCritic, SampledLogprobs, trim_batch
from rlhf_lab.tokens import pad

Row = dict[str, Any]
Scorer = Callable[[Sequence[str], Sequence[Row], int], Scores]


# ---------------------------------------------------------------------------------------------
# data order
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


# ---------------------------------------------------------------------------------------------
# the batch
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


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


# ---------------------------------------------------------------------------------------------
# collecting one
# ---------------------------------------------------------------------------------------------


def collect_rollout(
    model: PolicyCritic,
    scorer: Scorer,
    cfg: PpoConfig,
    dp: DataParallel,
    rows: Sequence[Row],
    prompt_ids: Sequence[list[int]],
    step: int,
) -> tuple[Rollout, dict[str, float]]:
    """Sample, score and evaluate step ``step``'s batch with the current policy: the rollout
    (non-finite replies dropped) and its timings."""
    batch, query, query_mask, group = _queries(model, cfg, dp, rows, prompt_ids, step)
    t0 = time.perf_counter()
    record = SampledLogprobs() if _reuses_sampling(model, cfg) else None
    response, response_mask, eos_found, replies = _sample(model, query, query_mask, cfg, record)
    t_gen = time.perf_counter() - t0

    t1 = time.perf_counter()
    scores = scorer(replies, batch, step)
    score = scores.total.float()
    if cfg.score_clip is not None:
        score = score.clamp(-cfg.score_clip, cfg.score_clip)
    t_score = time.perf_counter() - t1

    sampled = None
    if record is not None:
        assert record.logprobs is not None and record.entropy is not None
        width = response.shape[1]
        sampled = (
            record.logprobs[:, :width] * response_mask,
            record.entropy[:, :width] * response_mask,
        )
    logprobs, ref_logprobs, values, entropy = _token_stats(
        model,
        query,
        query_mask,
        response,
        response_mask,
        cfg.minibatch_size,
        sampled=sampled,
        sort=cfg.sort_by_length,
    )
    ro = Rollout(
        rows=batch,
        replies=replies,
        query=query,
        query_mask=query_mask,
        response=response,
        response_mask=response_mask,
        eos_found=eos_found,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        entropy=entropy,
        scored=scores,
        clipped_score=score,
        group=group,
    )
    timing = {"time/generate_s": t_gen, "time/score_s": t_score}
    ro = _drop_nonfinite(ro, cfg, step)
    return ro, {"time/rollout_s": time.perf_counter() - t0, **timing}


def _queries(
    model: PolicyCritic,
    cfg: PpoConfig,
    dp: DataParallel,
    rows: Sequence[Row],
    prompt_ids: Sequence[list[int]],
    step: int,
) -> tuple[list[Row], torch.Tensor, torch.Tensor, torch.Tensor]:
    """This process's rows, left-padded query ids and mask, and group ids of step ``step``."""
    # This process's contiguous slice of the global batch: sharded by prompt, so every
    # reply to one prompt (its num_generations samples) is sampled and scored here.
    prompts = shard(batch_indices(step, len(rows), cfg.batch_size, cfg.seed), dp.rank, dp.world)
    # num_generations samples of each prompt, adjacent; a group is a prompt's slot in the
    # global batch (so group ids are unique across processes).
    idx = [i for i in prompts for _ in range(cfg.num_generations)]
    first = dp.rank * len(prompts)
    group = (first + torch.arange(len(prompts))).repeat_interleave(cfg.num_generations)
    query, query_mask = pad([prompt_ids[i] for i in idx], model.tok.pad_token_id)
    return [rows[i] for i in idx], query, query_mask, group


def _reuses_sampling(model: PolicyCritic, cfg: PpoConfig) -> bool:
    """Whether the sampling pass's log-probs stand in for the policy pass
    (``ppo.logprobs_from_sampling``): only where it is the same computation — the same policy
    weights (sampled just before), the same temperature, float32 logits from a float32
    backbone. Under bf16 autocast the sampling pass's backbone and LM head run in bf16 where
    the recomputation's head is float32; with a shared trunk the policy pass also gives the
    values, so there is nothing to skip."""
    if not cfg.logprobs_from_sampling:
        return False
    if precision.bf16_enabled():
        _note_recomputed("bf16 sampling (models.mixed_precision)")
        return False
    if model.layout is CriticLayout.SHARED_TRUNK:
        _note_recomputed("critic.shared_trunk: the policy pass gives the values too")
        return False
    return True


@cache
def _note_recomputed(why: str) -> None:
    """Say once per process why ``ppo.logprobs_from_sampling`` does not apply."""
    ui.console.print(
        f"[yellow]note:[/] ppo.logprobs_from_sampling does not apply with {why}; "
        "the rollout recomputes the policy's log-probs",
        highlight=False,
    )


def _sample(
    model: PolicyCritic,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    cfg: PpoConfig,
    record: SampledLogprobs | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """``(response, response_mask, eos_found, replies)``: the replies decoded up to (not
    including) the EOS, the text a user would see and the scorers read."""
    tok = model.tok
    group_size = cfg.num_generations if cfg.share_prompt_cache else 1
    with torch.inference_mode():
        sampled = model.generate(
            query, query_mask, cfg.max_new_tokens, group_size=group_size, record=record
        )
    # clone(): tensors made under inference_mode cannot be saved for backward later.
    response, response_mask, eos_found = (t.clone() for t in sampled)
    is_eos = torch.isin(response, torch.tensor(model.eos_ids))
    replies = tok.batch_decode(
        torch.where(is_eos, tok.pad_token_id, response), skip_special_tokens=True
    )
    return response, response_mask, eos_found, replies


def length_order(query_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Row indices sorted by prompt length, then reply length (stable): consecutive chunks of
    this order are padded to little more than their own rows."""
    keys = [
        (int(q), int(r), i)
        for i, (q, r) in enumerate(zip(query_mask.sum(1), response_mask.sum(1), strict=True))
    ]
    return torch.tensor([i for *_, i in sorted(keys)], dtype=torch.long)


def _token_stats(
    model: PolicyCritic,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    response_mask: torch.Tensor,
    chunk: int,
    *,
    sampled: tuple[torch.Tensor, torch.Tensor] | None = None,
    sort: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logprobs, ref_logprobs, values, entropy)`` [B, R] of the sampled tokens.

    One no-grad pass each per ``chunk``-sized slice (log-probs and values share one on a
    shared trunk), trimmed to the slice's own padding. Recomputed rather than taken from
    generate(): [N-details] "recompute logprobs" (generation-time logits differ with caching
    and padding) — unless ``sampled`` (``(logprobs, entropy)`` recorded by the sampling pass,
    :func:`_reuses_sampling`) is given, and then the policy pass is skipped. ``sort``: the
    slices are taken in :func:`length_order` and the results put back in the rows' order.
    Values are zeros without a critic (never logged or used then).
    """
    layout = model.layout
    width = response.shape[1]
    order = length_order(query_mask, response_mask) if sort else None
    if order is not None:
        query, query_mask, response, response_mask = (
            t[order] for t in (query, query_mask, response, response_mask)
        )
    lp, ref, val, ent = [], [], [], []
    with torch.inference_mode():
        for sl in _chunks(len(query), chunk):
            q, qm, r, rm = trim_batch(query[sl], query_mask[sl], response[sl], response_mask[sl])
            logp = entropy = values = None
            if layout is CriticLayout.SHARED_TRUNK:
                logp, entropy, values = model.logprobs_and_values(q, qm, r, rm, entropy=True)
            else:
                if sampled is None:
                    logp, entropy = model.policy_logprobs(q, qm, r, rm, entropy=True)
                values = model.values(q, qm, r, rm) if layout.has_critic else None
            if logp is not None:
                assert entropy is not None
                lp.append(_pad_to(logp.cpu(), width))
                ent.append(_pad_to(entropy.cpu(), width))
            ref.append(_pad_to(model.ref_logprobs(q, qm, r, rm).cpu(), width))
            if values is not None:
                val.append(_pad_to(values.float().cpu(), width))
            else:
                val.append(torch.zeros_like(ref[-1]))
    out = {"ref": torch.cat(ref), "val": torch.cat(val)}
    if sampled is None:
        out.update(lp=torch.cat(lp), ent=torch.cat(ent))
    if order is not None:
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        out = {k: v[inverse] for k, v in out.items()}
    if sampled is not None:
        out.update(lp=sampled[0], ent=sampled[1])
    return out["lp"].clone(), out["ref"].clone(), out["val"].clone(), out["ent"].clone()


def _drop_nonfinite(ro: Rollout, cfg: PpoConfig, step: int) -> Rollout:
    """The rollout without the replies whose score, log-probs, values or KL are nan/inf.

    One such value would spread to the whole batch through whitening and the KL mean. The raw
    composite is checked, since score_clip turns inf into a finite number.
    """
    bad = nonfinite_rows(
        ro.scored.total,
        ro.response_mask,
        ro.logprobs,
        ro.ref_logprobs,
        ro.values,
        kl_estimate(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator),
    )
    if not bool(bad.any()):
        return ro
    ui.console.print(
        f"[yellow]warning:[/] train_ppo step {step}: {int(bad.sum())} of {len(ro.rows)} "
        "replies dropped for a non-finite score, log-prob, value or KL",
        highlight=False,
    )
    return ro.select(~bad)
