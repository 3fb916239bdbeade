"""The local judge: a causal LM scored in-process, one forward pass per request, no generation.

The judge prompt (the task's rubric in the model's chat template, generation prompt added)
is run once; the next-token distribution at the last position gives p("1")..p("5") and the
rating is their expectation (G-Eval). Pairwise requests read p("A") vs p("B") the same way.

A reply's rating prompts differ only in their last block (the question on one dimension;
``rubrics.question_block``), so a prompt is tokenised as two segments, a *prefix* (system
message, context, reply) and a *question*, and the prefix of each reply is run once: its
key/value cache is then extended by each dimension's question (deep-copied per extra
dimension). The two rubric dimensions thus cost about 0.6 of two full passes. Single and
batched scoring use the same segmented token ids, so they give the same numbers.

Batches are left-padded (the last position of every row is then its real last token) with
explicit position ids, so a padded row scores as it would alone. A prompt longer than
``max_length`` tokens loses the start of its context first (the oldest turns, as
``data.max_turns`` does), keeping the instructions and the reply; if the reply alone is still
too long, the prefix ids are cut from the left as a last resort.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_lab import models
from rlhf_lab.errors import ModelSourceError
from rlhf_lab.judge.base import Rating, RatingRequest, answer_probs
from rlhf_lab.judge.rubrics import (
    PAIRWISE_LABELS,
    SCALE,
    TASKS,
    dimensions,
    pairwise_messages,
    question_block,
    rating_messages,
)

ELLIPSIS = "…"
"""Put where truncated context starts, so the judge sees the conversation was cut."""
DIMS_PER_REPLY = max(len(spec["dimensions"]) for spec in TASKS.values())
"""Rubric dimensions per reply; a backend call takes ``batch_size`` replies' worth of items."""


def answer_token_ids(tok: Any, labels: Sequence[str]) -> dict[str, list[int]]:
    """Token ids that spell each label as the first token of an answer.

    A label may exist bare (``"4"``) and with a word-start marker (``"Ġ4"`` byte-level BPE,
    ``"▁4"`` SentencePiece); every single-token form counts and their probabilities add up.
    """
    vocab = tok.get_vocab()
    out: dict[str, list[int]] = {}
    for label in labels:
        ids = {vocab[form] for form in (label, f"Ġ{label}", f"▁{label}") if form in vocab}
        encoded = tok.encode(label, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
        if not ids:
            raise ModelSourceError(
                f"judge tokenizer has no single token for the answer {label!r}; "
                "the local judge needs one token per rating digit"
            )
        out[label] = sorted(ids)
    seen: dict[int, str] = {}
    for label, ids in out.items():
        for i in ids:
            if seen.setdefault(i, label) != label:
                raise ModelSourceError(
                    f"judge tokenizer: token id {i} spells both {seen[i]!r} and {label!r}"
                )
    return out


def label_probs(logprobs: torch.Tensor, ids: dict[str, list[int]]) -> list[dict[str, float]]:
    """Per row of ``logprobs`` [B, V] (log-softmax), the probability of each label."""
    per_label = {
        label: torch.logsumexp(logprobs[:, idx], dim=-1).exp().tolist()
        for label, idx in ids.items()
    }
    return [{label: per_label[label][i] for label in ids} for i in range(logprobs.shape[0])]


def left_pad(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, position_ids) of left-padded rows.

    Positions count real tokens only: with left padding, the default arange would start
    every padded row at a later position than when it is scored alone.
    """
    width = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, ids in enumerate(batch):
        if ids:
            input_ids[i, width - len(ids) :] = torch.tensor(list(ids))
            mask[i, width - len(ids) :] = 1
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class LocalJudge:
    """Judge backend on a causal LM directory or hub id (see module docstring)."""

    def __init__(
        self,
        model: str | Path,
        *,
        batch_size: int = 8,
        max_length: int = 768,
        dtype: str = "float32",
        device: str | None = None,
    ) -> None:
        self.model_name = str(model)
        self.batch_size = batch_size
        self.chunk_size = batch_size * DIMS_PER_REPLY
        self.max_length = max_length
        source = models.as_source(model)
        self.tok = models.load_tokenizer(source, padding_side="left")
        self.model = models.load_causal_lm(source, dtype).eval()
        models.ensure_pad_token(self.tok, self.model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.rating_ids = answer_token_ids(self.tok, [str(k) for k in SCALE])
        self.choice_ids = answer_token_ids(self.tok, list(PAIRWISE_LABELS))
        self._question_ids: dict[tuple[str, str], list[int]] = {}
        # The weights' sha, not just the path: models/base/policy is rewritten whenever
        # models.policy changes, and the cache must not serve the old model's scores.
        weights = models.source_sha256(source) or f"revision={source.revision}"
        self.judge_id = f"local:{self.model_name}:{weights}:max_length={max_length}:{dtype}"

    # -- prompts ---------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        # The chat template already holds any BOS/special tokens the model wants.
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _chat(self, messages: list[dict[str, str]]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _split(self, req: RatingRequest, context: str) -> tuple[str, str]:
        """(prefix, question) texts of a request's prompt; pairwise prompts are all prefix."""
        if req.pairwise:
            return self._chat(
                pairwise_messages(req.task, context, req.reply, req.reply_b or "")
            ), ""
        text = self._chat(rating_messages(req.task, req.dim, context, req.reply))
        cut = text.rfind(question_block(req.task, req.dim))
        if cut < 0:
            raise ModelSourceError(
                f"judge model {self.model_name!r}: its chat template rewrites the prompt text, "
                "so the rubric question cannot be found in it"
            )
        return text[:cut], text[cut:]

    def question_ids(self, task: str, dim: str) -> list[int]:
        """Token ids of ``dim``'s question block and the chat template's end (reply-free)."""
        key = (task, dim)
        if key not in self._question_ids:
            probe = RatingRequest(task, dim, "", "")
            self._question_ids[key] = self._ids(self._split(probe, "")[1])
        return self._question_ids[key]

    def encode_prefix(self, req: RatingRequest) -> list[int]:
        """Token ids of the prompt before the question, cut to fit (module docstring).

        The budget leaves room for the task's longest question, so every dimension of a
        reply shares one prefix.
        """
        room = self.max_length
        if not req.pairwise:
            room -= max(len(self.question_ids(req.task, d)) for d in dimensions(req.task))
        room = max(room, 1)
        context = req.context
        ids = self._ids(self._split(req, context)[0])
        ctx_ids = self._ids(context)
        # Re-tokenising after a cut can merge tokens differently, so allow a few rounds.
        for _ in range(3):
            over = len(ids) - room
            if over <= 0 or not ctx_ids:
                break
            ctx_ids = ctx_ids[over + 2 :]
            context = ELLIPSIS + self.tok.decode(ctx_ids) if ctx_ids else ELLIPSIS
            ids = self._ids(self._split(req, context)[0])
        return ids[-room:]

    def encode(self, req: RatingRequest) -> list[int]:
        """The full prompt's token ids (prefix + question), at most ``max_length``."""
        question = [] if req.pairwise else self.question_ids(req.task, req.dim)
        return self.encode_prefix(req) + question

    # -- scoring ---------------------------------------------------------------------------

    def _logits(self, **kw: Any) -> Any:
        try:
            # Only the last position's logits are needed: vocab x sequence floats otherwise.
            return self.model(**kw, logits_to_keep=1)
        except TypeError:  # architectures without logits_to_keep
            return self.model(**kw)

    @torch.no_grad()
    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        """Log-softmax of the next-token logits after each prompt: [B, V]."""
        input_ids, mask, pos = left_pad(batch, self.tok.pad_token_id)
        out = self._logits(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()

    @torch.no_grad()
    def _forward_shared(
        self, prefixes: list[list[int]], questions: list[list[int]]
    ) -> list[torch.Tensor]:
        """Log-softmax after ``prefix_i + question_j`` for all i, j: one [B, V] per question."""
        input_ids, mask, pos = left_pad(prefixes, self.tok.pad_token_id)
        mask = mask.to(self.device)
        out = self._logits(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=pos.to(self.device),
            use_cache=True,
        )
        past, lengths, rows = out.past_key_values, mask.sum(-1, keepdim=True), len(prefixes)
        results = []
        for j, question in enumerate(questions):
            # The forward appends to the cache: every question but the last gets a copy.
            cache = past if j == len(questions) - 1 else copy.deepcopy(past)
            q = torch.tensor(question, device=self.device).expand(rows, -1)
            ones = torch.ones_like(q)
            step = self._logits(
                input_ids=q,
                attention_mask=torch.cat([mask, ones], dim=-1),
                position_ids=lengths + torch.arange(len(question), device=self.device),
                past_key_values=cache,
                use_cache=True,
            )
            results.append(torch.log_softmax(step.logits[:, -1].float(), dim=-1).cpu())
        return results

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        """One :class:`Rating` per request; ``batch_size`` replies (or pairs) per batch."""
        out: list[Rating | None] = [None] * len(requests)
        pairs = [i for i, r in enumerate(requests) if r.pairwise]
        for start in range(0, len(pairs), self.batch_size):
            idx = pairs[start : start + self.batch_size]
            logprobs = self._forward([self.encode(requests[i]) for i in idx])
            for row, i in enumerate(idx):
                probs = label_probs(logprobs[row : row + 1], self.choice_ids)[0]
                out[i] = answer_probs(requests[i], probs)
        # Ratings: one group per (task, context, reply), i.e. one shared prefix.
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, r in enumerate(requests):
            if not r.pairwise:
                groups.setdefault((r.task, r.context, r.reply), []).append(i)
        members = list(groups.values())
        for start in range(0, len(members), self.batch_size):
            batch = members[start : start + self.batch_size]
            needed = sorted({(requests[i].task, requests[i].dim) for g in batch for i in g})
            logprobs = self._forward_shared(
                [self.encode_prefix(requests[g[0]]) for g in batch],
                [self.question_ids(task, dim) for task, dim in needed],
            )
            for row, group in enumerate(batch):
                for i in group:
                    lp = logprobs[needed.index((requests[i].task, requests[i].dim))]
                    out[i] = answer_probs(
                        requests[i], label_probs(lp[row : row + 1], self.rating_ids)[0]
                    )
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(f"local judge left requests {missing} unanswered")  # a bug
        return out  # type: ignore[return-value]
