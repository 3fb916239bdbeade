"""Reward-model training: a Bradley–Terry loss on preference pairs, any sequence-classifier encoder.

The loss is ``-log σ(r(x, y_chosen) - r(x, y_rejected))`` (Bradley & Terry 1952; Ouyang et al.
2022, eq. 1), the same whatever produced the label (human, reference-vs-sample, judge). Inputs go
through :func:`rlhf_lab.reward_scorer.encoder_inputs`, the format PPO and evaluate score with, so
the reply is always kept and the oldest context is cut first.

We train with the supervised loop (:mod:`rlhf_lab.training.loop`) instead of TRL's
``RewardTrainer``: it appends an EOS token that BERT tokenizers do not have. Each batch holds
the chosen and the rejected side as separate tensors (``chosen_*`` / ``rejected_*``, as TRL's
``chosen_ids/rejected_ids``) so that splitting a batch across processes keeps every pair on one
process; both sides then go through the encoder in one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rlhf_lab import models, precision
from rlhf_lab.config import RewardTrainConfig
from rlhf_lab.reward_scorer import encoder_inputs, save_reward_stats
from rlhf_lab.training.common import (
    TrainOutcome,
    make_accelerator,
    mean_across,
    save_trained_model,
)
from rlhf_lab.training.loop import Step, SupervisedLoop, adamw, concat, evaluation


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: a dialogue and two candidate replies, ``chosen`` preferred."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


# ---------------------------------------------------------------------------------------------
# pure math
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log σ(r_chosen - r_rejected)``; ``logsigmoid`` keeps it finite for any margin."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Fraction of pairs where the chosen reply scores higher; a tie counts as half.

    Counting ties as half makes a constant scorer read 0.5 (chance), not 0.
    """
    if r_chosen.numel() == 0:
        return float("nan")
    wins = (r_chosen > r_rejected).double() + 0.5 * (r_chosen == r_rejected).double()
    return float(wins.mean())


def mean_margin(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Mean of ``r_chosen - r_rejected`` (raw reward units)."""
    if r_chosen.numel() == 0:
        return float("nan")
    return float((r_chosen.double() - r_rejected.double()).mean())


def longer_wins_accuracy(chosen: Sequence[str], rejected: Sequence[str]) -> float:
    """Pairwise accuracy of the baseline "the longer reply (in characters) wins", ties half.

    A reward model that only learned length scores about this; it has to beat it to have
    learned anything else.
    """
    if not chosen:
        return float("nan")
    c = torch.tensor([len(s) for s in chosen], dtype=torch.float64)
    r = torch.tensor([len(s) for s in rejected], dtype=torch.float64)
    return pairwise_accuracy(c, r)


def pairs_from_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[PreferencePair], int]:
    """Preference rows → pairs; rows without both replies, or with identical ones, are dropped.

    An identical pair carries no preference: its loss is log 2 whatever the model does. Judge
    mode can leave ``chosen`` null (a tie). Returns the pairs and the number dropped.
    """
    pairs, dropped = [], 0
    for row in rows:
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str) or chosen == rejected:
            dropped += 1
            continue
        pairs.append(PreferencePair(list(row["prompt"]), chosen, rejected))
    return pairs, dropped


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


class PairCollator:
    """Tokenise a list of pairs into ``chosen_*`` and ``rejected_*`` tensors of equal length."""

    def __init__(self, tok: Any, max_length: int) -> None:
        self.tok = tok
        self.max_length = max_length

    def __call__(self, pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
        n = len(pairs)
        prompts = [p.prompt for p in pairs]
        # One call for both sides pads them to a common length, so they can be concatenated
        # into one forward pass later.
        batch = encoder_inputs(
            self.tok,
            prompts + prompts,
            [p.chosen for p in pairs] + [p.rejected for p in pairs],
            self.max_length,
        )
        out: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            out[f"chosen_{key}"] = value[:n]
            out[f"rejected_{key}"] = value[n:]
        return out


def score_batch(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[Any, Any]:
    """Rewards of the chosen and the rejected side of a collated batch (one forward pass)."""
    keys = [k.removeprefix("chosen_") for k in batch if k.startswith("chosen_")]
    inputs = {k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in keys}
    # bf16 forward where configured (one context per pass: rlhf_lab.precision); the
    # Bradley-Terry loss and the metrics take the float32 reward.
    with precision.training_autocast():
        logits = model(**inputs).logits
    rewards = logits[:, 0].float()
    n = batch[f"chosen_{keys[0]}"].shape[0]
    return rewards[:n], rewards[n:]


def by_length(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Pairs sorted by text length: evaluation batches then need little padding."""

    def size(p: PreferencePair) -> int:
        return sum(len(m["content"]) for m in p.prompt) + max(len(p.chosen), len(p.rejected))

    return sorted(pairs, key=size)


# ---------------------------------------------------------------------------------------------
# training: the step and the evaluation handed to the supervised loop
# ---------------------------------------------------------------------------------------------


def _score_all(accelerator: Any, model: Any, loader: DataLoader, what: str) -> tuple[Any, Any]:
    """Rewards of the chosen and the rejected replies, in loader order, from every process."""

    def outputs(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(("chosen", "rejected"), score_batch(model, batch), strict=True))

    scores = concat(evaluation(accelerator, model, loader, what, outputs))
    return scores.get("chosen", torch.zeros(0)), scores.get("rejected", torch.zeros(0))


def _eval_metrics(prefix: str, rc: torch.Tensor, rr: torch.Tensor, pairs: Sequence) -> dict:
    # Pairs the length baseline gets wrong: a model that only learned length scores 0 here.
    shorter = torch.tensor([len(p.chosen) < len(p.rejected) for p in pairs], dtype=torch.bool)
    return {
        f"{prefix}/accuracy": pairwise_accuracy(rc, rr),
        f"{prefix}/accuracy_chosen_shorter": pairwise_accuracy(rc[shorter], rr[shorter]),
        f"{prefix}/margin": mean_margin(rc, rr),
        f"{prefix}/longer_wins_accuracy": longer_wins_accuracy(
            [p.chosen for p in pairs], [p.rejected for p in pairs]
        ),
        f"{prefix}/pairs": len(pairs),
    }


def train_reward_model(
    encoder_dir: str | Path,
    train_pairs: Sequence[PreferencePair],
    eval_sets: Mapping[str, Sequence[PreferencePair]],
    cfg: RewardTrainConfig,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TrainOutcome:
    """Train a 1-logit reward head + encoder on ``train_pairs``; evaluate on ``eval_sets``.

    With ``out_dir`` the main process saves the model there (atomically) with
    ``reward_stats.json`` (mean/std of the raw scores of every training reply, which PPO
    normalises with) and ``provenance.json``. The ``"valid"`` eval set, if given, is also
    scored after every epoch for the curves. Call it on every process.
    """
    if not train_pairs:
        raise ValueError("no training pairs")
    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "reward.train.batch_size")

    def build() -> Any:
        model = models.load_sequence_classifier(encoder_dir, num_labels=1)
        # Decoder-style encoders pool the last non-pad token, so they need a real pad id.
        models.ensure_pad_token(tok, model)
        return model

    tok = models.load_tokenizer(encoder_dir, padding_side="right")
    model = build()
    collate = PairCollator(tok, cfg.max_length)
    loader = DataLoader(list(train_pairs), cfg.batch_size, shuffle=True, collate_fn=collate)
    optimizer, scheduler = adamw(model, cfg, len(loader))
    # Scores come back in loader order, so the metrics below use these sorted lists too.
    eval_sets = {name: by_length(pairs) for name, pairs in eval_sets.items()}
    eval_loaders = {
        name: DataLoader(pairs, cfg.batch_size, collate_fn=collate)
        for name, pairs in eval_sets.items()
    }
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    eval_loaders = {k: accelerator.prepare(v) for k, v in eval_loaders.items()}
    loop = SupervisedLoop(
        accelerator, cfg, stage="train_reward", section="reward.train", plots_dir=plots_dir,
        hint="look for degenerate pairs in the preference data",
    )  # fmt: skip
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def step(model: Any, batch: Mapping[str, torch.Tensor]) -> Step:
        rc, rr = score_batch(model, batch)
        loss = bradley_terry_loss(rc, rr)
        return Step(
            loss,
            lambda: {
                "train/loss": mean_across(accelerator, loss),
                "train/accuracy": mean_across(accelerator, (rc > rr).float().mean()),
            },
        )

    def evaluate() -> dict[str, float]:
        scored["valid"] = _score_all(accelerator, model, eval_loaders["valid"], "valid")
        return {"valid/accuracy": pairwise_accuracy(*scored["valid"])}

    fitted = loop.fit(
        model, loader, optimizer, scheduler, step, label="reward",
        evaluate=evaluate if "valid" in eval_loaders else None,
    )  # fmt: skip
    metrics: dict[str, Any] = {
        # nan (null in the file) when every step of the last epoch was skipped
        "train/loss": fitted.last_epoch_mean("train/loss"),
        "train/accuracy": fitted.last_epoch_mean("train/accuracy"),
        "train/pairs": len(train_pairs),
    }
    for name, pairs in eval_sets.items():
        if name not in scored:  # valid was already scored after the last epoch
            scored[name] = _score_all(accelerator, model, eval_loaders[name], name)
        metrics.update(_eval_metrics(name, *scored[name], pairs))
    # Duplicates that fill the last batch (even_batches) are not counted as pairs.
    seen = cfg.batch_size * len(fitted.history)
    metrics.update(loop.metrics(fitted, pairs=min(seen, len(train_pairs) * cfg.epochs)))

    if out_dir is not None:
        # Normalisation PPO applies: raw scores of every training reply, chosen and rejected.
        stats_loader = accelerator.prepare(
            DataLoader(by_length(train_pairs), cfg.batch_size, collate_fn=collate)
        )
        rc, rr = _score_all(accelerator, model, stats_loader, "reward stats")
        scores = torch.cat([rc, rr]).double()
        metrics["reward/mean"] = float(scores.mean())
        metrics["reward/std"] = float(scores.std()) if scores.numel() > 1 else 1.0
        save_trained_model(
            accelerator, model, build, loop.guard, out_dir, tok, role="reward", base=encoder_dir,
            metrics=metrics, provenance=provenance,
            write_extra=lambda tmp: save_reward_stats(
                tmp, metrics["reward/mean"], metrics["reward/std"] or 1.0, cfg.max_length
            ),
        )  # fmt: skip
    return loop.finish(metrics, fitted.history)
