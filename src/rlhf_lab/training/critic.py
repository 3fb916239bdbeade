"""Critic warm-start: regress per-token values onto each reply's score, as PPO will pay it.

The target (``critic.target``) is PPO's own sequence reward at its first step (``ppo_score``,
the default): the composite of ``reward.weights`` built by the same factory PPO uses
(:func:`rlhf_lab.ppo.composite_score.build_scorer`), clipped to ``±ppo.score_clip``; the KL part
of PPO's return is 0 at step 0, where the policy is the reference. ``reward_model`` is the
reward model's (normalised) score alone; ``judge`` the judge's overall rating (the MACPO-style
setting, worth it once the judge is a strong model; the embedded 135M judge is near-random).

PPO's critic starts from the SFT model with a fresh value head, which knows nothing about the
reward scale; its first updates then mostly fit the scale, and the advantages of the first PPO
steps are noise. Pretraining the critic on scored replies (the supervised critic pretraining
step of MACPO-style pipelines; "critic warm-up" in Ouyang et al. 2022's PPO setup) gives PPO a
useful baseline from step 0.

The critic is :class:`rlhf_lab.ppo.model.PolicyCritic` with only its ``critic`` adapter: the
LoRA adapter + value head PPO loads, on the same frozen ``models/sft`` base, seeing each
example exactly as PPO does: ``[chat prompt (left-padded) | reply tokens + EOS]``. For a reply
with score ``s`` the target is ``z = s`` for ``ppo_score`` / ``reward_model`` (PPO adds the
values to its rewards as they are, so they must be in its units) and ``z = (s - mean) / std``
over the training replies for ``judge``. The loss is the per-token squared error of every value
over the reply, averaged per reply, then over replies::

    loss = mean_replies( mean_t∈reply (V_t - z)^2 )

Before any gradient step the value head is set (``critic.head_init: least_squares``) to the
ridge-regression minimiser of that loss on the frozen features (:func:`fit_value_head`); the
LoRA adapter and the head are then trained together on it.

Metrics (``metrics/train_critic.json``) on valid, for the trained critic, for the untrained one
(peft init — LoRA B = 0 — and a fresh random head, the same seed) and for the least-squares head
before training (``valid/least_squares/*``): ``mse`` is that loss; ``pearson`` / ``spearman``
correlate the value at the reply's last token (the state that has read the whole reply) with
``z``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from rlhf_lab import models
from rlhf_lab.config import CriticConfig
from rlhf_lab.errors import DataError
from rlhf_lab.io import atomic_dir, finite_or_none
from rlhf_lab.judge.rubrics import OVERALL
from rlhf_lab.ppo.core import masked_mean
from rlhf_lab.ppo.model import (
    PolicyCritic,
    chat_prompt_ids,
    new_critic,
    save_critic,
)
from rlhf_lab.tokens import pad
from rlhf_lab.training.common import (
    LengthGroupedBatches,
    TrainOutcome,
    make_accelerator,
    mean_across,
    progress,
    state_dict_for_saving,
    train_mode,
)
from rlhf_lab.training.loop import Step, SupervisedLoop, adamw, concat, evaluation


@dataclass(frozen=True)
class ScoredReply:
    """A reply with the judge's overall rating of it."""

    prompt: list[dict[str, str]]
    reply: str
    score: float


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def scored_replies(rows: Sequence[Mapping[str, Any]]) -> tuple[list[ScoredReply], int]:
    """Every reply a scored row rates: ``row[candidate]`` with ``scores[candidate]["overall"]``.

    Preference rows give ``chosen`` and ``rejected``; scored prompt rows give ``reference``.
    Rows whose ``scores`` is null (the judge was off or failed) are skipped and counted, as are
    candidates without a finite ``overall``. Returns the replies and the rows skipped.
    """
    out, skipped = [], 0
    for row in rows:
        scores = row.get("scores")
        if not isinstance(scores, Mapping):
            skipped += 1
            continue
        n = len(out)
        for candidate, dims in scores.items():
            reply = row.get(candidate)
            value = dims.get(OVERALL) if isinstance(dims, Mapping) else None
            if isinstance(reply, str) and isinstance(value, int | float) and math.isfinite(value):
                out.append(ScoredReply(list(row["prompt"]), reply, float(value)))
        skipped += len(out) == n
    return out, skipped


def candidate_replies(rows: Sequence[Mapping[str, Any]]) -> list[tuple[list[dict], str]]:
    """Every ``(prompt, reply)`` a row holds (``chosen``, ``rejected``, ``reference``), scored
    or not: what the critic regresses on when its target is the reward model."""
    return [
        (list(row["prompt"]), row[key])
        for row in rows
        for key in ("chosen", "rejected", "reference")
        if isinstance(row.get(key), str) and row[key].strip()
    ]


def reward_model_targets(
    rm: Any, replies: Sequence[tuple[list[dict], str]], batch_size: int = 32
) -> list[ScoredReply]:
    """Score ``replies`` with a :class:`rlhf_lab.reward_scorer.RewardModel` (normalised exactly
    as PPO normalises it), as :class:`ScoredReply` rows."""
    from rlhf_lab import ui

    out: list[ScoredReply] = []
    starts = range(0, len(replies), batch_size)
    for i in ui.track(starts, "reward-model targets", total=len(starts)):
        chunk = replies[i : i + batch_size]
        scores = rm.score([p for p, _ in chunk], [r for _, r in chunk]).tolist()
        out += [ScoredReply(p, r, s) for (p, r), s in zip(chunk, scores, strict=True)]
    return out


def composite_targets(
    scorer: Any,
    rows: Sequence[Mapping[str, Any]],
    score_clip: float | None,
    batch_size: int = 32,
) -> list[ScoredReply]:
    """Every candidate reply of ``rows`` (:func:`candidate_replies`) scored as PPO scores a
    sampled reply at its first step: ``scorer`` is PPO's
    :class:`rlhf_lab.ppo.composite_score.CompositeScorer` (``reward.weights``), the total
    clipped to ``±score_clip`` as ``ppo.score_clip`` clips it. This is the return PPO's critic
    must predict at step 0 (the KL part of it is 0 while the policy equals the reference)."""
    from rlhf_lab import ui

    pairs = [(row, reply) for row in rows for _, reply in candidate_replies([row])]
    out: list[ScoredReply] = []
    starts = range(0, len(pairs), batch_size)
    for i in ui.track(starts, "PPO-score targets", total=len(starts)):
        chunk = pairs[i : i + batch_size]
        total = scorer([r for _, r in chunk], [row for row, _ in chunk], 0).total.float()
        if score_clip is not None:
            total = total.clamp(-score_clip, score_clip)
        out += [
            ScoredReply(list(row["prompt"]), r, s)
            for (row, r), s in zip(chunk, total.tolist(), strict=True)
        ]
    return out


def score_stats(replies: Sequence[ScoredReply]) -> tuple[float, float]:
    """Mean and standard deviation of the raw scores (std 1.0 when they are all equal)."""
    s = np.array([r.score for r in replies], dtype=np.float64)
    std = float(s.std(ddof=1)) if s.size > 1 else 0.0
    return float(s.mean()), std if std > 1e-8 else 1.0


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    reply_ids: list[int]
    target: float


def encode(
    tok: Any,
    replies: Sequence[ScoredReply],
    max_length: int,
    system_prompt: str | None,
    mean: float,
    std: float,
) -> list[Example]:
    """Tokenise as PPO sees a rollout: chat prompt ids, then the reply's ids and EOS.

    The reply keeps at most half of ``max_length`` (cut from the right, EOS kept); the prompt
    takes the rest (oldest turns first, see :func:`rlhf_lab.ppo.model.chat_prompt_ids`).
    """
    out = []
    budget = max(2, max_length // 2)
    for r in replies:
        ids = tok(r.reply, add_special_tokens=False)["input_ids"][: budget - 1]
        ids = [*ids, tok.eos_token_id]
        prompt = chat_prompt_ids(tok, r.prompt, system_prompt, max_length - len(ids))
        out.append(Example(prompt, ids, (r.score - mean) / std))
    return out


class Collator:
    """Examples → ``query``/``query_mask`` (left-padded), ``response``/``response_mask``
    (right-padded) and ``target``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[Example]) -> dict[str, torch.Tensor]:
        query, query_mask = pad([e.prompt_ids for e in batch], self.pad_id)
        response, response_mask = pad([e.reply_ids for e in batch], self.pad_id, side="right")
        target = torch.tensor([e.target for e in batch], dtype=torch.float32)
        return {
            "query": query,
            "query_mask": query_mask,
            "response": response,
            "response_mask": response_mask,
            "target": target,
        }


# ---------------------------------------------------------------------------------------------
# math
# ---------------------------------------------------------------------------------------------


def per_reply_mse(values: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each reply's tokens of ``(V_t - target)^2`` → [B]."""
    return masked_mean((values - target[:, None]) ** 2, mask, dim=1)


def last_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The value at each row's last valid token → [B] (right-padded masks)."""
    last = (mask.long().sum(dim=1) - 1).clamp_min(0)
    return values.gather(1, last[:, None]).squeeze(1)


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant or has fewer than 2 values."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan as :func:`pearson`."""
    from scipy.stats import rankdata

    return pearson(rankdata(np.asarray(a)), rankdata(np.asarray(b)))


# ---------------------------------------------------------------------------------------------
# least-squares value head (ridge regression from sufficient statistics)
# ---------------------------------------------------------------------------------------------

# Candidate ridge strengths, relative to each standardised feature's variance (scale-free).
RIDGE_ALPHAS = tuple(10.0**k for k in range(-4, 3))
RIDGE_FOLDS = 5


@dataclass
class RidgeStats:
    """Weighted sufficient statistics of ``(x, y)`` rows: everything ridge regression needs.

    Sums, so the statistics of several batches, folds or processes add up (``+``).
    """

    n: torch.Tensor  # Σ w                 []
    sx: torch.Tensor  # Σ w·x              [H]
    sy: torch.Tensor  # Σ w·y              []
    sxx: torch.Tensor  # Σ w·x·xᵀ          [H, H]
    sxy: torch.Tensor  # Σ w·x·y           [H]
    syy: torch.Tensor  # Σ w·y²            []

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> RidgeStats:
        """Statistics of rows ``x`` [N, H], targets ``y`` [N], weights ``w`` [N] (float64)."""
        x, y, w = x.double(), y.double(), w.double()
        wx = w[:, None] * x
        return cls(w.sum(), wx.sum(0), (w * y).sum(), wx.T @ x, wx.T @ y, (w * y * y).sum())

    def __add__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(*(a + b for a, b in zip(self.tensors(), other.tensors(), strict=True)))

    def __sub__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(*(a - b for a, b in zip(self.tensors(), other.tensors(), strict=True)))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.n, self.sx, self.sy, self.sxx, self.sxy, self.syy)


def ridge_fit(stats: RidgeStats, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge regression with an intercept on standardised features → ``(w, b)`` in the
    raw feature space: minimises ``Σ w_i (y_i - x_iᵀw - b)² / Σ w_i + alpha · Σ_j σ_j² w_j²``.

    Penalising ``σ_j² w_j²`` is ridge on features scaled to unit variance (scikit-learn's
    ``StandardScaler`` + ``Ridge``), so one ``alpha`` grid fits any hidden size or activation
    scale: LM hidden states have a few dimensions hundreds of times larger than the rest.
    """
    mx, my = stats.sx / stats.n, stats.sy / stats.n
    cov = stats.sxx / stats.n - torch.outer(mx, mx)
    cxy = stats.sxy / stats.n - mx * my
    var = cov.diagonal().clamp_min(1e-12)
    w = torch.linalg.solve(cov + alpha * torch.diag(var), cxy)
    return w, my - mx @ w


def ridge_sse(stats: RidgeStats, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ w_i (y_i - x_iᵀw - b)²`` over the rows ``stats`` summarises (expanded square)."""
    return (
        stats.syy
        - 2 * (w @ stats.sxy)
        - 2 * b * stats.sy
        + w @ stats.sxx @ w
        + 2 * b * (w @ stats.sx)
        + b * b * stats.n
    )


def ridge_cv(
    folds: Sequence[RidgeStats], alphas: Sequence[float] = RIDGE_ALPHAS
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``alpha`` with the least held-out error over ``folds`` (fit on the others, score on
    each), then the fit on all of them → ``(w, b, alpha)``."""
    total = sum(folds[1:], start=folds[0])

    def held_out(alpha: float) -> float:
        return sum(float(ridge_sse(f, *ridge_fit(total - f, alpha))) for f in folds)

    best = min(alphas, key=held_out)
    return (*ridge_fit(total, best), best)


@torch.no_grad()
def fit_value_head(accelerator: Any, model: Any, loader: DataLoader) -> dict[str, float]:
    """Set the value head to the least-squares fit of the training loss on the current (frozen)
    features, with a cross-validated ridge strength; returns ``head/alpha`` and ``head/r2``.

    The rows are the hidden states the head reads at every reply token (captured with a hook
    on the head itself, so they are exactly its inputs), each weighted ``1/len(reply)`` as in
    :func:`per_reply_mse`: this is the head that minimises the training loss with the backbone
    frozen. Replies go to ``RIDGE_FOLDS`` folds whole (tokens of one reply are not
    independent). The statistics are summed across processes, so every process sets the same
    head. A random head instead adds its own noise to every value (its untrained MSE is above
    the targets' variance) and AdamW at the LoRA learning rate moves it too little to unlearn
    it in one epoch: the warm start learnt nothing (valid Pearson -0.03 on the default run
    with ``critic.head_init: random``, 2026-12-02).
    """
    head = accelerator.unwrap_model(model).value_head
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    folds: list[RidgeStats] = []
    seen = 0
    try:
        with train_mode(model, False):
            for batch in progress(accelerator, loader, "critic head (least squares)"):
                captured.clear()
                _values(model, batch)
                hidden = captured[0]
                mask = batch["response_mask"].to(hidden.device).bool()
                lengths = mask.sum(dim=1, keepdim=True).clamp_min(1)
                weight = (1.0 / lengths).expand_as(mask)[mask]
                target = batch["target"].to(hidden.device)[:, None].expand_as(mask)[mask]
                reply = torch.arange(len(mask), device=hidden.device)[:, None].expand_as(mask)
                fold_of = ((reply + seen) % RIDGE_FOLDS)[mask]
                seen += len(mask)
                rows = hidden[mask]
                stats = [
                    RidgeStats.of(rows[fold_of == k], target[fold_of == k], weight[fold_of == k])
                    for k in range(RIDGE_FOLDS)
                ]
                folds = stats if not folds else [a + b for a, b in zip(folds, stats, strict=True)]
    finally:
        hook.remove()
    folds = [
        RidgeStats(*(accelerator.reduce(t, reduction="sum") for t in f.tensors())) for f in folds
    ]
    w, b, alpha = ridge_cv(folds)
    total = sum(folds[1:], start=folds[0])
    baseline = ridge_sse(total, torch.zeros_like(w), total.sy / total.n)
    head.linear.weight.copy_(w.to(head.linear.weight)[None])
    head.linear.bias.copy_(b.to(head.linear.bias).reshape(1))
    return {"head/alpha": alpha, "head/r2": float(1 - ridge_sse(total, w, b) / baseline)}


# ---------------------------------------------------------------------------------------------
# training: the step and the evaluation handed to the supervised loop
# ---------------------------------------------------------------------------------------------


def _values(model: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    # model(...) is PolicyCritic.forward = the critic's values (so DDP wrapping works); its
    # backbone pass runs under precision.training_autocast, its value head in float32.
    return model(batch["query"], batch["query_mask"], batch["response"], batch["response_mask"])


def evaluate(accelerator: Any, model: Any, loader: DataLoader, what: str) -> dict[str, float]:
    """``mse``, ``pearson``, ``spearman`` of the critic on ``loader`` (all processes)."""

    def outputs(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        values = _values(model, batch)
        mask = batch["response_mask"].to(values.device)
        t = batch["target"].to(values.device)
        return {
            "mse": per_reply_mse(values, t, mask),
            "last": last_values(values, mask),
            "target": t,
        }

    out = concat(evaluation(accelerator, model, loader, what, outputs))
    if not out:
        nan = float("nan")
        return {"mse": nan, "pearson": nan, "spearman": nan}
    lv, tv = out["last"].numpy(), out["target"].numpy()
    return {
        "mse": float(out["mse"].mean()),
        "pearson": pearson(lv, tv),
        "spearman": spearman(lv, tv),
    }


def train_critic(
    sft_dir: str | Path,
    train: Sequence[ScoredReply],
    valid: Sequence[ScoredReply],
    cfg: CriticConfig,
    *,
    system_prompt: str | None = None,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TrainOutcome:
    """Train the critic adapter + value head on ``train``; compare with the untrained one on
    ``valid``; with ``out_dir`` save it (atomically) in the format PPO loads."""
    if not train:
        raise DataError("train_critic: no scored training replies")
    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "critic.batch_size")

    def build() -> PolicyCritic:
        torch.manual_seed(cfg.seed)
        return new_critic(sft_dir, cfg.lora, device=accelerator.device)

    model = build()
    tok = model.tok
    mean, std = score_stats(train)
    # PPO adds the critic's values to its rewards as they are, so a target already in PPO's
    # units (ppo_score, reward_model: the RM is normalised by train_reward) is used as is;
    # z-scoring it would shift every value by the score's mean and PPO's first returns would
    # be off by it. Only the judge's 1..5 rating, not itself a PPO reward, is z-scored.
    shift, scale = (mean, std) if cfg.target == "judge" else (0.0, 1.0)
    train_ex = encode(tok, train, cfg.max_length, system_prompt, shift, scale)
    valid_ex = encode(tok, valid, cfg.max_length, system_prompt, shift, scale)
    # Evaluation sorted by length: batches of similar lengths need little padding.
    valid_ex.sort(key=lambda e: len(e.prompt_ids) + len(e.reply_ids))
    collate = Collator(tok.pad_token_id)
    # Batches of similar length (a batch is padded to its longest member), reshuffled per epoch.
    batches = LengthGroupedBatches(
        [len(e.prompt_ids) + len(e.reply_ids) for e in train_ex], cfg.batch_size, cfg.seed
    )
    loader = DataLoader(train_ex, batch_sampler=batches, collate_fn=collate)
    valid_loader = DataLoader(valid_ex, cfg.batch_size, collate_fn=collate)
    head_ex = sorted(train_ex, key=lambda e: len(e.prompt_ids) + len(e.reply_ids))
    head_loader = DataLoader(head_ex, cfg.batch_size, collate_fn=collate)
    optimizer, scheduler = adamw(model, cfg, len(loader))
    model, optimizer, loader, scheduler, valid_loader, head_loader = accelerator.prepare(
        model, optimizer, loader, scheduler, valid_loader, head_loader
    )
    loop = SupervisedLoop(
        accelerator, cfg, stage="train_critic", section="critic", plots_dir=plots_dir,
        hint="check the scored replies for nan/inf scores",
    )  # fmt: skip

    untrained = evaluate(accelerator, model, valid_loader, "critic valid (untrained)")
    head_metrics: dict[str, float] = {}
    # With critic.epochs 0 the warm start is the least-squares head alone.
    valid_metrics = untrained
    if cfg.head_init == "least_squares":
        head_metrics = fit_value_head(accelerator, model, head_loader)
        valid_metrics = evaluate(
            accelerator, model, valid_loader, "critic valid (least-squares head)"
        )
        head_metrics.update({f"valid/least_squares/{k}": v for k, v in valid_metrics.items()})

    def step(model: Any, batch: Mapping[str, torch.Tensor]) -> Step:
        values = _values(model, batch)
        mask = batch["response_mask"].to(values.device)
        loss = per_reply_mse(values, batch["target"].to(values.device), mask).mean()
        return Step(loss, lambda: {"train/loss": mean_across(accelerator, loss)})

    def evaluate_epoch() -> dict[str, float]:
        nonlocal valid_metrics
        valid_metrics = evaluate(accelerator, model, valid_loader, "critic valid")
        return {f"valid/{k}": v for k, v in valid_metrics.items() if math.isfinite(v)}

    fitted = loop.fit(
        model, loader, optimizer, scheduler, step, label="critic", evaluate=evaluate_epoch
    )
    epoch_losses = fitted.epoch_means("train/loss")
    metrics: dict[str, Any] = {
        # nan (null) without a training epoch (critic.epochs 0)
        "train/loss": epoch_losses[-1] if epoch_losses else math.nan,
        "train/loss_first_epoch": epoch_losses[0] if epoch_losses else math.nan,
        "train/replies": len(train),
        "valid/replies": len(valid_ex),
        **{f"valid/{k}": v for k, v in valid_metrics.items()},
        **{f"valid/untrained/{k}": v for k, v in untrained.items()},
        **head_metrics,
        "score/mean": mean,
        "score/std": std,
        **loop.metrics(fitted, replies=len(train) * cfg.epochs),
    }
    if out_dir is not None:
        final = state_dict_for_saving(accelerator, model, build)
        if final is not None:
            loop.guard.check_weights(final)
            with atomic_dir(out_dir) as tmp:
                save_critic(
                    final,
                    tmp,
                    base=str(sft_dir),
                    score_mean=shift,
                    score_std=scale,
                    max_length=cfg.max_length,
                    target=cfg.target,
                    lora=cfg.lora.model_dump(mode="json"),
                )
                models.write_provenance(
                    tmp,
                    role="critic",
                    base=str(sft_dir),
                    parameters=sum(p.numel() for p in final.trainable_parameters()),
                    metrics=finite_or_none({k: v for k, v in metrics.items() if "perf/" not in k}),
                    **dict(provenance or {}),
                )
        accelerator.wait_for_everyone()
    return loop.finish(metrics, fitted.history)
