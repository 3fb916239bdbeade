"""The reward model as its users see it: how (prompt, reply) becomes encoder input, and scoring.

The reward model is a separate encoder (any ``AutoModelForSequenceClassification``; default the
embedded MiniLM) that scores *decoded text*, so it works with any policy tokenizer. Training
(``rlhf_lab.training.reward_model``), PPO and evaluate all go through :func:`encoder_inputs`, so the
three agree exactly on the input format.

Input format: a text pair ``(context, reply)``. The context is the dialogue rendered as
``"User: ...\\nAssistant: ..."`` lines; the reply is the candidate. Truncation keeps the reply
(capped at half the budget) and drops the *oldest* context tokens first, so the part that is
being judged is always seen (train_reward issue: "inputs truncated from the left so the final
reply is always kept").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_lab import models

REWARD_STATS = "reward_stats.json"
ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def render_context(messages: Sequence[dict[str, str]]) -> str:
    """A dialogue as plain ``Role: text`` lines (no chat template: the encoder is not a chat LM)."""
    return "\n".join(f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def encoder_inputs(
    tok: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    replies: Sequence[str],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Tokenise (context, reply) pairs, keeping the reply and the most recent context."""
    reply_budget = max(8, max_length // 2)
    # Cap the reply first (from the right: its opening is what a reader sees first)...
    reply_ids = tok(
        list(replies), add_special_tokens=False, truncation=True, max_length=reply_budget
    )
    capped = [tok.decode(ids) for ids in reply_ids["input_ids"]]
    contexts = [render_context(p) for p in prompts]
    # ...then let the context take what is left, cut from the left (oldest turns go first).
    side = tok.truncation_side
    tok.truncation_side = "left"
    try:
        batch = tok(
            contexts,
            capped,
            truncation="only_first",
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
    finally:
        tok.truncation_side = side
    return dict(batch)


class RewardModel:
    """Load ``models/reward`` and score replies; normalises with the stats saved at training."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None) -> None:
        self.dir = Path(model_dir)
        self.tok = models.load_tokenizer(self.dir, padding_side="right")
        self.model = models.load_sequence_classifier(self.dir).eval()
        stats_path = self.dir / REWARD_STATS
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        self.mean = float(stats.get("mean", 0.0))
        self.std = float(stats.get("std", 1.0)) or 1.0
        self.max_length = int(max_length or stats.get("max_length", 256))

    @torch.inference_mode()
    def score(
        self,
        prompts: Sequence[Sequence[dict[str, str]]],
        replies: Sequence[str],
        batch_size: int = 32,
        normalize: bool = True,
    ) -> torch.Tensor:
        """One scalar per reply; ``normalize`` maps training-set scores to mean 0, std 1."""
        out = []
        for i in range(0, len(replies), batch_size):
            batch = encoder_inputs(
                self.tok, prompts[i : i + batch_size], replies[i : i + batch_size], self.max_length
            )
            out.append(self.model(**batch).logits[:, 0].float())
        scores = torch.cat(out) if out else torch.zeros(0)
        return (scores - self.mean) / self.std if normalize else scores


def save_reward_stats(model_dir: str | Path, mean: float, std: float, max_length: int) -> None:
    """Write the normalisation PPO uses (mean/std of raw scores on the training prompts)."""
    from rlhf_lab.io import write_json

    write_json(Path(model_dir) / REWARD_STATS, {"mean": mean, "std": std, "max_length": max_length})
