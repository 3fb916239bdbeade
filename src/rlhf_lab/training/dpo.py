"""Direct preference optimisation (DPO) of the SFT policy with LoRA, merged at the end.

DPO (Rafailov et al. 2023, eq. 7) fits the policy to preference pairs directly: with
``Δ = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))`` the loss is
``−log σ(β Δ)``, the Bradley–Terry loss of the *implicit reward* ``β log π/π_ref``, so no reward
model and no sampling. IPO (Azar et al. 2023, eq. 17) regresses Δ onto ``1/(2β)`` instead;
hinge is SLiC's ``relu(1 − β Δ)`` (Zhao et al. 2023).

Why our own loop rather than TRL's ``DPOTrainer`` (trl 1.16): it is an HF ``Trainer``, so it
brings its own accelerator, batch semantics, checkpoint dir and logging, and has no place for
this project's guarded step (skip a non-finite update, abort after ``max_bad_steps``), its
crash-safe output or its chat rendering (the prompt exactly as generation renders it, with
``task.system_prompt``); and its loss lives inside ``_compute_loss`` next to a patched "fused
LM head", so there is no function to call. Training runs the supervised loop SFT runs
(:mod:`rlhf_lab.training.loop`) with DPO's step, on SFT's tokenisation and log-probs
(:mod:`rlhf_lab.training.sft`); :func:`dpo_loss` follows TRL's formulas line for line (cited
there) and is tested against them.

The reference is the SFT model itself with the LoRA adapter switched off (peft's
``disable_adapter()``), so there is no second copy of the weights; its log-probs never change,
so they are computed once before training (TRL's ``precompute_ref_log_probs``), which halves
the forward passes of every step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rlhf_lab import models
from rlhf_lab.config import DpoConfig
from rlhf_lab.training.common import (
    LengthGroupedBatches,
    TrainOutcome,
    lora_policy_builder,
    make_accelerator,
    mean_across,
    save_trained_model,
    trainable_parameters,
)
from rlhf_lab.training.loop import Step, SupervisedLoop, adamw, concat, evaluation
from rlhf_lab.training.reward_model import PreferencePair
from rlhf_lab.training.sft import IGNORE_INDEX, SftCollator, SftExample, batch_nll, tokenize_example

LOSS_TYPES: tuple[str, ...] = get_args(DpoConfig.model_fields["loss_type"].annotation)
"""The ``dpo.loss_type`` values (defined once, by the config's ``Literal``)."""

# ---------------------------------------------------------------------------------------------
# pure math
# ---------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards ``β (log π − log π_ref)`` of both replies.

    Inputs are per-sequence log-probs summed over the reply tokens, shape ``[B]``. Returns
    ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]`` (the rewards detached), as
    TRL's ``DPOTrainer.dpo_loss`` returned them up to 0.19. Formulas as trl 1.16
    ``dpo_trainer.py`` ``_compute_loss``:

    * ``sigmoid``: ``−log σ(β Δ)`` (``logsigmoid``: finite for any margin);
    * ``hinge``: ``relu(1 − β Δ)``;
    * ``ipo``: ``(Δ − 1/(2β))²``; with ``chosen_lengths``/``rejected_lengths`` (reply token
      counts) each log-ratio is first divided by its length, as TRL does (it confirmed that
      normalisation with the IPO authors: the paper's results use it), so β means the same
      for short and long replies.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        if chosen_lengths is not None and rejected_lengths is not None:
            delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / (
                rejected_lengths.clamp(min=1)
            )
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (one of {', '.join(LOSS_TYPES)})")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def preference_metrics(
    losses: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, float]:
    """TRL's DPO metrics (same names) as means over the pairs given.

    ``rewards/accuracies`` counts a pair when the chosen reward is strictly higher, as TRL
    does: at the start (policy = reference, both rewards 0) it reads 0, not 0.5.
    """
    if losses.numel() == 0:
        return dict.fromkeys(METRIC_NAMES, math.nan)
    return {
        "loss": float(losses.double().mean()),
        "rewards/chosen": float(chosen_rewards.double().mean()),
        "rewards/rejected": float(rejected_rewards.double().mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).double().mean()),
        "rewards/margins": float((chosen_rewards.double() - rejected_rewards.double()).mean()),
        "logps/chosen": float(chosen_logps.double().mean()),
        "logps/rejected": float(rejected_logps.double().mean()),
    }


STEP_LINE = ("loss", "rewards/accuracies", "rewards/margins")
"""What the per-step line shows (``ui.step_line``), from the step's train metrics."""
METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


# ---------------------------------------------------------------------------------------------
# tokenisation and batches
# ---------------------------------------------------------------------------------------------


def tokenize_pair(
    tok: Any, pair: PreferencePair, max_length: int, system_prompt: str | None = None
) -> dict[str, dict[str, list[int]]]:
    """Both sides tokenised exactly as SFT tokenises a demonstration (prompt masked, reply +
    EOS labelled, same truncation), so DPO scores what SFT trained and generation emits."""
    return {
        side: tokenize_example(tok, SftExample(pair.prompt, reply), max_length, system_prompt)
        for side, reply in (("chosen", pair.chosen), ("rejected", pair.rejected))
    }


def reply_tokens(features: Mapping[str, list[int]]) -> int:
    """Labelled tokens after the first position: what :func:`pair_logps` counts (position 0
    predicts nothing)."""
    return sum(label != IGNORE_INDEX for label in features["labels"][1:])


class PairCollator:
    """``chosen_*`` and ``rejected_*`` tensors of one common width, plus the reference log-probs.

    Both sides are left-padded together (:class:`~rlhf_lab.training.sft.SftCollator`) so they
    can share one forward pass; they are kept as separate keys (as TRL's ``chosen_ids`` /
    ``rejected_ids``) so that splitting a batch across processes keeps each pair together.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.collate = SftCollator(pad_token_id)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        n = len(features)
        both = self.collate([f["chosen"] for f in features] + [f["rejected"] for f in features])
        out = {}
        for key, value in both.items():
            out[f"chosen_{key}"], out[f"rejected_{key}"] = value[:n], value[n:]
        if "ref_chosen" in features[0]:
            out["ref_chosen"] = torch.tensor([f["ref_chosen"] for f in features])
            out["ref_rejected"] = torch.tensor([f["ref_rejected"] for f in features])
        return out


def pair_logps(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Summed reply log-probs and reply token counts of both sides, in one forward pass:
    ``(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)``."""
    keys = ("input_ids", "attention_mask", "position_ids", "labels")
    joined = {k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in keys}
    nll, count = batch_nll(model, joined)
    n = batch["chosen_input_ids"].shape[0]
    return -nll[:n], -nll[n:], count[:n], count[n:]


# ---------------------------------------------------------------------------------------------
# training: the step and the evaluation handed to the supervised loop
# ---------------------------------------------------------------------------------------------


def _score_all(
    accelerator: Any, model: Any, loader: DataLoader, what: str, reference: bool = False
) -> dict[str, torch.Tensor]:
    """Log-probs and reply lengths of every pair in loader order, gathered from every process
    (``chosen``, ``rejected``, ``chosen_len``, ``rejected_len``, and ``ref_chosen`` /
    ``ref_rejected`` when the batches carry them).

    ``reference``: with the LoRA adapter switched off, i.e. the SFT model as it was.
    """
    unwrapped = accelerator.unwrap_model(model)
    names = ("chosen", "rejected", "chosen_len", "rejected_len")

    def outputs(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if reference:
            with unwrapped.disable_adapter():
                values = dict(zip(names, pair_logps(unwrapped, batch), strict=True))
        else:
            values = dict(zip(names, pair_logps(model, batch), strict=True))
        return values | {k: batch[k] for k in ("ref_chosen", "ref_rejected") if k in batch}

    return concat(evaluation(accelerator, model, loader, what, outputs))


def _with_reference(
    accelerator: Any, model: Any, feats: list[dict[str, Any]], loader: DataLoader
) -> list[dict[str, Any]]:
    """``feats`` (in ``loader``'s order) with the reference log-probs of both sides."""
    ref = _score_all(accelerator, model, loader, "reference log-probs", reference=True)
    return [
        {**f, "ref_chosen": c, "ref_rejected": r}
        for f, c, r in zip(feats, ref["chosen"].tolist(), ref["rejected"].tolist(), strict=True)
    ]


def _losses(
    scored: Mapping[str, torch.Tensor], cfg: DpoConfig, policy: str = ""
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dpo_loss` of gathered scores; ``policy="ref_"`` scores the reference itself."""
    return dpo_loss(
        scored[f"{policy}chosen"],
        scored[f"{policy}rejected"],
        scored["ref_chosen"],
        scored["ref_rejected"],
        cfg.beta,
        cfg.loss_type,
        scored["chosen_len"],
        scored["rejected_len"],
    )


def _metrics(
    prefix: str, scored: Mapping[str, torch.Tensor], cfg: DpoConfig, policy: str = ""
) -> dict[str, float]:
    """TRL's metrics of gathered scores under ``<prefix>/``."""
    values = preference_metrics(
        *_losses(scored, cfg, policy), scored[f"{policy}chosen"], scored[f"{policy}rejected"]
    )
    return {f"{prefix}/{k}": v for k, v in values.items()}


def train_dpo_model(
    sft_dir: str | Path,
    train_pairs: Sequence[PreferencePair],
    valid_pairs: Sequence[PreferencePair],
    cfg: DpoConfig,
    system_prompt: str | None = None,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TrainOutcome:
    """LoRA-train the SFT policy in ``sft_dir`` on the pairs; merge and save to ``out_dir``.

    Valid metrics after every epoch, and before training (``valid_start/*``, which need no
    pass: the policy is then the reference, every implicit reward is 0 and the sigmoid loss
    is log 2). Call it on every process; only the main process writes.
    """
    if not train_pairs:
        raise ValueError("no training pairs")
    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "dpo.batch_size")
    tok = models.load_tokenizer(sft_dir)
    build = lora_policy_builder(sft_dir, tok, cfg.lora)
    model = build()
    collate = PairCollator(tok.pad_token_id)
    train_feats = [tokenize_pair(tok, p, cfg.max_length, system_prompt) for p in train_pairs]
    # Sorted by length: little padding, and the order does not change a mean.
    valid_feats = sorted(
        (tokenize_pair(tok, p, cfg.max_length, system_prompt) for p in valid_pairs),
        key=lambda f: max(len(f["chosen"]["input_ids"]), len(f["rejected"]["input_ids"])),
    )
    batches = LengthGroupedBatches(
        [max(len(f["chosen"]["input_ids"]), len(f["rejected"]["input_ids"])) for f in train_feats],
        cfg.batch_size,
        cfg.seed,
    )
    optimizer, scheduler = adamw(model, cfg, len(batches))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def ordered_loader(feats: list[dict[str, Any]]) -> DataLoader:
        return accelerator.prepare(DataLoader(feats, cfg.batch_size, collate_fn=collate))

    # The reference never changes: its log-probs once, up front (TRL precompute_ref_log_probs).
    train_feats = _with_reference(accelerator, model, train_feats, ordered_loader(train_feats))
    loader = accelerator.prepare(DataLoader(train_feats, batch_sampler=batches, collate_fn=collate))
    valid_loader = None
    if valid_feats:
        valid_feats = _with_reference(accelerator, model, valid_feats, ordered_loader(valid_feats))
        valid_loader = ordered_loader(valid_feats)
    loop = SupervisedLoop(
        accelerator, cfg, stage="train_dpo", section="dpo", plots_dir=plots_dir,
        hint="look for degenerate pairs in the preference data",
    )  # fmt: skip

    valid: dict[str, float] = {f"valid/{k}": math.nan for k in METRIC_NAMES}
    if valid_loader is not None:
        # Before training the policy *is* the reference: no pass needed.
        ref = {
            "chosen_len": torch.tensor([reply_tokens(f["chosen"]) for f in valid_feats]),
            "rejected_len": torch.tensor([reply_tokens(f["rejected"]) for f in valid_feats]),
            "ref_chosen": torch.tensor([f["ref_chosen"] for f in valid_feats]),
            "ref_rejected": torch.tensor([f["ref_rejected"] for f in valid_feats]),
        }
        valid = _metrics("valid", ref, cfg, policy="ref_")
    loop.curves.log(0, valid)
    valid_start = {k.replace("valid/", "valid_start/"): v for k, v in valid.items()}

    def step(model: Any, batch: Mapping[str, torch.Tensor]) -> Step:
        pc, pr, nc, nr = pair_logps(model, batch)
        losses, rc, rr = dpo_loss(
            pc, pr, batch["ref_chosen"], batch["ref_rejected"], cfg.beta, cfg.loss_type, nc, nr
        )

        def point() -> dict[str, float]:
            values = preference_metrics(losses.detach(), rc, rr, pc.detach(), pr.detach())
            return {
                f"train/{k}": mean_across(accelerator, torch.tensor(v, device=accelerator.device))
                for k, v in values.items()
            }

        return Step(losses.mean(), point)

    def evaluate() -> dict[str, float]:
        if valid_loader is not None:
            valid.update(
                _metrics("valid", _score_all(accelerator, model, valid_loader, "valid"), cfg)
            )
        return valid

    fitted = loop.fit(
        model, loader, optimizer, scheduler, step, label="dpo", evaluate=evaluate,
        step_line={k: f"train/{k}" for k in STEP_LINE},
    )  # fmt: skip
    unwrapped = accelerator.unwrap_model(model)
    seen = cfg.batch_size * len(fitted.history)
    metrics: dict[str, Any] = {
        # means over the last epoch's applied steps (nan, null in the file, if none was)
        **{f"train/{k}": fitted.last_epoch_mean(f"train/{k}") for k in METRIC_NAMES},
        "train/pairs": len(train_pairs),
        "train/truncated_replies": sum(
            f[side]["labels"][-1] != tok.eos_token_id
            for f in train_feats
            for side in ("chosen", "rejected")
        ),
        **valid,
        **valid_start,
        "valid/pairs": len(valid_pairs),
        "lora/trainable_parameters": trainable_parameters(unwrapped),
        # Duplicates that fill the last batch (even_batches) are not counted as pairs.
        **loop.metrics(fitted, pairs=min(seen, len(train_pairs) * cfg.epochs)),
    }
    if out_dir is not None:
        save_trained_model(
            accelerator, model, build, loop.guard, out_dir, tok, role="dpo", base=sft_dir,
            metrics=metrics, provenance=provenance, lora=cfg.lora,
        )  # fmt: skip
    return loop.finish(metrics, fitted.history)
