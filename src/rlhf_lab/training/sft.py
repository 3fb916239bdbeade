"""Supervised fine-tuning (SFT) of the policy with LoRA, merged into a plain causal LM at the end.

Each example is a dialogue and the reply to imitate (the reference where the task has one, else
the preferred reply of a preference pair). The prompt is rendered exactly as generation renders
it (:func:`rlhf_lab.generation.chat_prompt_text`: chat template, optional system message,
generation prompt), and the target is the reply followed by the tokenizer's EOS token, so the
model learns to stop (for SmolLM2 EOS is ``<|im_end|>``; the pad token is a distinct
``<|endoftext|>``, so padding never masks EOS). The loss covers only the reply and its EOS:
prompt tokens get the label ``-100`` (Ouyang et al. 2022 train SFT on demonstrations; TRL's
``completion_only_loss`` does the same).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rlhf_lab import models, precision
from rlhf_lab.config import SftConfig
from rlhf_lab.training.common import (
    LengthGroupedBatches,
    TrainOutcome,
    lora_policy_builder,
    make_accelerator,
    mean_across,
    save_trained_model,
    trainable_parameters,
)
from rlhf_lab.training.loop import Step, SupervisedLoop, adamw, evaluation

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross_entropy default ignore_index)."""


@dataclass(frozen=True)
class SftExample:
    """A dialogue and the assistant reply to imitate."""

    prompt: list[dict[str, str]]
    reply: str


def sft_examples(
    prompt_rows: Sequence[Mapping[str, Any]], preference_rows: Sequence[Mapping[str, Any]]
) -> list[SftExample]:
    """Demonstrations: prompt rows' references when any exist, else preference rows' chosen.

    Chitchat, ReDial and docstring prompts carry a human reference reply; HH-style data has only
    preference pairs, whose preferred reply is the demonstration. Rows without a usable reply
    (``chosen`` is null for judge-labelled ties) are skipped.
    """
    with_reference = [r for r in prompt_rows if isinstance(r.get("reference"), str)]
    if with_reference:
        return [SftExample(list(r["prompt"]), r["reference"]) for r in with_reference]
    return [
        SftExample(list(r["prompt"]), r["chosen"])
        for r in preference_rows
        if isinstance(r.get("chosen"), str)
    ]


# ---------------------------------------------------------------------------------------------
# pure pieces: truncation + label mask, per-sequence loss
# ---------------------------------------------------------------------------------------------


def sft_features(
    prompt_ids: Sequence[int], reply_ids: Sequence[int], max_length: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example: prompt tokens masked with ``IGNORE_INDEX``.

    At most ``max_length`` tokens. The reply keeps everything that fits once the prompt has
    kept up to half the budget (cut from its end: a truncated reply loses its EOS, as it
    should, since it did not end there); the prompt then fills the rest, cut from the left
    so the most recent turns survive, as generation cuts it.
    """
    reply = list(reply_ids[: max_length - min(len(prompt_ids), max_length // 2)])
    room = max_length - len(reply)
    prompt = (
        list(prompt_ids[len(prompt_ids) - room :]) if len(prompt_ids) > room else list(prompt_ids)
    )
    return prompt + reply, [IGNORE_INDEX] * len(prompt) + reply


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of next-token NLL over labelled positions, and their count.

    Position t predicts token t+1 (the causal shift); ``IGNORE_INDEX`` labels are skipped.
    """
    # Half-precision logits are upcast: a log-softmax over a 50k vocabulary in bf16 loses
    # most of its digits.
    shift_logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != IGNORE_INDEX
    return (nll * mask).sum(1), mask.sum(1)


# ---------------------------------------------------------------------------------------------
# tokenisation and batches
# ---------------------------------------------------------------------------------------------


def tokenize_example(
    tok: Any, example: SftExample, max_length: int, system_prompt: str | None = None
) -> dict[str, list[int]]:
    """Chat-template the prompt, append reply + EOS, truncate and mask (see the module doc)."""
    from rlhf_lab.generation import chat_prompt_text

    prompt = chat_prompt_text(tok, example.prompt, system_prompt)
    # Tokenised apart, as at generation time: the prompt alone, then what the model emits.
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tok(example.reply + tok.eos_token, add_special_tokens=False)["input_ids"]
    input_ids, labels = sft_features(prompt_ids, reply_ids, max_length)
    return {"input_ids": input_ids, "labels": labels}


class SftCollator:
    """Left-pad ``input_ids`` with the pad token and ``labels`` with ``IGNORE_INDEX``.

    Left padding puts every reply at the end of the batch, so the LM head only has to run
    over the last :func:`reply_window` positions (``logits_to_keep``): on chat data most
    tokens are prompt, and a full ``[B, T, vocab]`` logits tensor (49k columns for SmolLM2)
    cost more time and memory than the rest of the step. ``position_ids`` skip the padding, so
    the model sees exactly what it would see unpadded.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        from rlhf_lab.tokens import position_ids

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n :] = torch.tensor(f["input_ids"])
            labels[i, width - n :] = torch.tensor(f["labels"])
            mask[i, width - n :] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids(mask),
            "labels": labels,
        }


def reply_window(labels: torch.Tensor) -> int:
    """How many trailing positions hold every labelled token and the position before it.

    Position ``t`` predicts token ``t + 1``, so the window starts one before the earliest
    labelled column; at least 2 so the shifted window is never empty.
    """
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if labelled.numel() == 0:
        return 2
    return max(2, labels.shape[1] - int(labelled[0]) + 1)


def batch_nll(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_nll` of a collated batch, with the LM head run on the reply window only."""
    k = reply_window(batch["labels"])
    # bf16 forward where configured (one context per pass: rlhf_lab.precision); the loss is
    # computed after it, from logits sequence_nll upcasts to float32.
    with precision.training_autocast():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=k,
        )
    return sequence_nll(out.logits, batch["labels"][:, -k:])


# ---------------------------------------------------------------------------------------------
# training: the step and the evaluation handed to the supervised loop
# ---------------------------------------------------------------------------------------------


def _evaluate(accelerator: Any, model: Any, loader: DataLoader | None, what: str) -> float:
    """Token-weighted mean NLL over a loader, gathered from every process (NaN if empty)."""
    if loader is None:
        return float("nan")
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for out in evaluation(accelerator, model, loader, what, _nll_outputs):
        total += out["nll"].double().sum()
        count += out["n"].double().sum()
    return float(total / count) if count > 0 else float("nan")


def _nll_outputs(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    nll, n = batch_nll(model, batch)
    return {"nll": nll, "n": n}


def _loss_per_token(points: Sequence[Mapping[str, float]], tokens: Sequence[int]) -> float:
    """Token-weighted mean of the points' ``train/loss`` (step i trained on ``tokens[i]``)."""
    total = 0.0
    for point, n in zip(points, tokens, strict=True):
        total += point["train/loss"] * n
    return total / max(sum(tokens), 1)


def _perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) else float("nan")


def train_sft_model(
    policy_dir: str | Path,
    train_examples: Sequence[SftExample],
    valid_examples: Sequence[SftExample],
    cfg: SftConfig,
    system_prompt: str | None = None,
    out_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> TrainOutcome:
    """LoRA-train the policy in ``policy_dir`` on the replies; merge and save to ``out_dir``.

    Valid loss is measured before training (the base model: LoRA starts as the identity) and
    after every epoch. Call it on every process; only the main process writes.
    """
    if not train_examples:
        raise ValueError("no training examples")
    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "sft.batch_size")
    tok = models.load_tokenizer(policy_dir)
    build = lora_policy_builder(policy_dir, tok, cfg.lora)
    model = build()
    collate = SftCollator(tok.pad_token_id)
    train_feats = [
        tokenize_example(tok, ex, cfg.max_length, system_prompt) for ex in train_examples
    ]
    valid_feats = [
        tokenize_example(tok, ex, cfg.max_length, system_prompt) for ex in valid_examples
    ]
    batches = LengthGroupedBatches(
        [len(f["input_ids"]) for f in train_feats], cfg.batch_size, cfg.seed
    )
    loader = DataLoader(train_feats, batch_sampler=batches, collate_fn=collate)
    optimizer, scheduler = adamw(model, cfg, len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    valid_loader = None
    if valid_feats:
        # Sorted by length: little padding, and the order does not change a mean.
        ordered = sorted(valid_feats, key=lambda f: len(f["input_ids"]))
        valid_loader = accelerator.prepare(DataLoader(ordered, cfg.batch_size, collate_fn=collate))
    loop = SupervisedLoop(
        accelerator, cfg, stage="train_sft", section="sft", plots_dir=plots_dir,
        hint="look for degenerate rows in the SFT data",
    )  # fmt: skip

    valid_base = _evaluate(accelerator, model, valid_loader, "valid (base)")
    loop.curves.log(0, {"valid/loss": valid_base})
    valid = {"valid/loss": valid_base}
    tokens: list[int] = []  # reply tokens of each applied step

    def step(model: Any, batch: Mapping[str, torch.Tensor]) -> Step:
        nll, n = batch_nll(model, batch)
        # A token-weighted mean over the *global* batch: DDP averages gradients over
        # processes, so scale by num_processes / global token count (HF's
        # num_items_in_batch fix) rather than taking a per-process mean.
        global_n = accelerator.reduce(n.sum().detach(), reduction="sum").clamp(min=1)

        def point() -> dict[str, float]:
            tokens.append(int(global_n.item()))
            batch_loss = mean_across(accelerator, nll.sum()) * accelerator.num_processes
            return {"train/loss": batch_loss / tokens[-1]}

        return Step(nll.sum() * accelerator.num_processes / global_n, point)

    def evaluate() -> dict[str, float]:
        valid["valid/loss"] = _evaluate(accelerator, model, valid_loader, "valid")
        return valid

    fitted = loop.fit(model, loader, optimizer, scheduler, step, label="sft", evaluate=evaluate)
    last = fitted.epochs[-1]  # the last epoch's applied steps: the last len(last) of tokens
    unwrapped = accelerator.unwrap_model(model)
    metrics: dict[str, Any] = {
        "train/loss": _loss_per_token(last, tokens[len(tokens) - len(last) :]),
        "train/examples": len(train_examples),
        "train/reply_tokens": sum(tokens) // cfg.epochs,
        "train/truncated_replies": sum(f["labels"][-1] != tok.eos_token_id for f in train_feats),
        "valid/loss": valid["valid/loss"],
        "valid/perplexity": _perplexity(valid["valid/loss"]),
        "valid/loss_base": valid_base,
        "valid/perplexity_base": _perplexity(valid_base),
        "valid/examples": len(valid_examples),
        "lora/trainable_parameters": trainable_parameters(unwrapped),
        **loop.metrics(fitted, tokens=sum(tokens)),
    }
    if out_dir is not None:
        save_trained_model(
            accelerator, model, build, loop.guard, out_dir, tok, role="sft", base=policy_dir,
            metrics=metrics, provenance=provenance, lora=cfg.lora,
        )  # fmt: skip
    return loop.finish(metrics, fitted.history)
