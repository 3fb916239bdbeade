"""The local judge: a causal LM scored in-process, one forward pass per request, no generation.

The judge prompt (the task's rubric in the model's chat template, generation prompt added)
is run once; the next-token distribution at the last position gives p("1")..p("5") and the
rating is their expectation (G-Eval). Pairwise requests read p("A") vs p("B") the same way.

A reply's rating prompts differ only in their last block (the question on one dimension), so
each reply's prompts are tokenised whole, exactly as the model would see them, and split at
their longest common token prefix: the prefix (system message, context, reply) runs once, and
its key/value cache is extended by each dimension's remaining tokens (deep-copied for all but
the last dimension). Two dimensions cost about 0.6 of two full passes. Splitting at tokens,
not at text, matters: BPE merges across the boundary (``".\n\n"`` is not ``"." + "\n\n"``), so
tokenising the parts separately would feed the model token sequences it never saw in training.
Single and batched scoring build the same token ids, so they give the same numbers.

Batches are left-padded (the last position of every row is then its real last token) with
explicit position ids, so a padded row scores as it would alone; the per-dimension tails are
right-padded and read at each row's last real token. A prompt longer than ``max_length``
tokens loses the start of its context first (the oldest turns, as ``data.max_turns`` does),
keeping the instructions and the reply; if the reply alone is still too long, the shared
prefix is cut from the left as a last resort.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
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
    rating_messages,
)
from rlhf_lab.tokens import default_device, pad, position_ids

ELLIPSIS = "…"
"""Put where truncated context starts, so the judge sees the conversation was cut."""
DIMS_PER_REPLY = max(len(dimensions(task)) for task in TASKS)
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


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all ``seqs`` share."""
    n = min(len(x) for x in seqs)
    for i in range(n):
        if any(x[i] != seqs[0][i] for x in seqs[1:]):
            return i
    return n


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
        self.device = device or default_device().type
        self.model.to(self.device)
        self.rating_ids = answer_token_ids(self.tok, [str(k) for k in SCALE])
        self.choice_ids = answer_token_ids(self.tok, list(PAIRWISE_LABELS))
        # The weights' sha, not just the path: models/base/policy is rewritten whenever
        # models.policy changes, and the cache must not serve the old model's scores.
        weights = models.source_sha256(source) or f"revision={source.revision}"
        self.judge_id = f"local:{self.model_name}:{weights}:max_length={max_length}:{dtype}"

    # -- prompts ---------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        # The chat template already holds any BOS/special tokens the model wants.
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._ids(text)

    def _fit(self, context: str, render: Callable[[str], list[list[int]]]) -> list[list[int]]:
        """``render(context)``, the context cut from the left until the longest prompt fits."""
        prompts = render(context)
        ctx_ids: list[int] | None = None
        # Re-tokenising after a cut can merge tokens differently, so allow a few rounds.
        for _ in range(3):
            over = max(len(p) for p in prompts) - self.max_length
            if over <= 0 or ctx_ids == []:
                break
            ctx_ids = (self._ids(context) if ctx_ids is None else ctx_ids)[over + 2 :]
            prompts = render(ELLIPSIS + self.tok.decode(ctx_ids) if ctx_ids else ELLIPSIS)
        return prompts

    def encode_reply(
        self, task: str, context: str, reply: str
    ) -> tuple[list[int], list[list[int]]]:
        """(shared prefix, one tail per dimension of ``task``) for rating ``reply``."""
        dims = dimensions(task)
        full = self._fit(
            context, lambda ctx: [self._chat(rating_messages(task, d, ctx, reply)) for d in dims]
        )
        # Every tail keeps at least its last token: that is where the rating is read.
        n = min(common_prefix_len(full), min(len(f) for f in full) - 1)
        prefix, tails = full[0][:n], [f[n:] for f in full]
        over = n + max(len(t) for t in tails) - self.max_length
        if over > 0:  # the reply alone is too long: cut the prefix, keep at least one token
            prefix = prefix[min(over, n - 1) :]
        return prefix, tails

    def encode(self, req: RatingRequest) -> list[int]:
        """The full prompt's token ids, at most ``max_length`` (module docstring)."""
        if req.pairwise:
            [ids] = self._fit(
                req.context,
                lambda ctx: [
                    self._chat(pairwise_messages(req.task, ctx, req.reply, req.reply_b or ""))
                ],
            )
            return ids[-self.max_length :]
        prefix, tails = self.encode_reply(req.task, req.context, req.reply)
        return prefix + tails[dimensions(req.task).index(req.dim)]

    # -- scoring ---------------------------------------------------------------------------

    def _logits(self, **kw: Any) -> Any:
        from rlhf_lab import precision

        # bf16 where configured (rlhf_lab.precision): a rating's expected value over 5 tokens
        # does not need float32 logits.
        with precision.inference():
            try:
                # Only the last positions' logits are needed: vocab x sequence floats otherwise.
                return self.model(**kw)
            except TypeError:  # architectures without logits_to_keep
                kw.pop("logits_to_keep", None)
                return self.model(**kw)

    @torch.no_grad()
    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        """Log-softmax of the next-token logits after each prompt: [B, V]."""
        input_ids, mask = pad(batch, self.tok.pad_token_id)
        pos = position_ids(mask)
        out = self._logits(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            logits_to_keep=1,
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()

    @torch.no_grad()
    def _forward_shared(
        self, prefixes: list[list[int]], tails: list[list[list[int]]]
    ) -> list[torch.Tensor]:
        """Log-softmax after ``prefixes[i] + tails[j][i]``: one [B, V] per tail set ``j``."""
        input_ids, mask = pad(prefixes, self.tok.pad_token_id)
        pos = position_ids(mask)
        mask = mask.to(self.device)
        out = self._logits(
            input_ids=input_ids.to(self.device),
            attention_mask=mask,
            position_ids=pos.to(self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        past, lengths = out.past_key_values, mask.sum(-1, keepdim=True)
        results = []
        for j, rows in enumerate(tails):
            # The forward appends to the cache: every tail set but the last gets a copy.
            cache = past if j == len(tails) - 1 else copy.deepcopy(past)
            width = max(len(t) for t in rows)
            # Right padding: the padded positions come after each row's real tokens, so
            # causal attention never lets them change a real token's logits.
            ids = torch.full((len(rows), width), self.tok.pad_token_id, dtype=torch.long)
            tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, t in enumerate(rows):
                ids[i, : len(t)] = torch.tensor(t)
                tail_mask[i, : len(t)] = 1
            step = self._logits(
                input_ids=ids.to(self.device),
                attention_mask=torch.cat([mask, tail_mask.to(self.device)], dim=-1),
                position_ids=lengths + torch.arange(width, device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=width,
            )
            last = torch.tensor([len(t) - 1 for t in rows], device=self.device)
            logits = step.logits[torch.arange(len(rows), device=self.device), last]
            results.append(torch.log_softmax(logits.float(), dim=-1).cpu())
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
        keys = list(groups)
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start : start + self.batch_size]
            tasks = {task for task, _, _ in batch}
            if len(tasks) > 1:  # tails are per dimension, so a batch holds one task
                raise ValueError(f"one local judge batch mixes tasks {sorted(tasks)}")
            encoded = [self.encode_reply(*key) for key in batch]
            dims = dimensions(batch[0][0])
            logprobs = self._forward_shared(
                [prefix for prefix, _ in encoded],
                [[tails[j] for _, tails in encoded] for j in range(len(dims))],
            )
            for row, key in enumerate(batch):
                for i in groups[key]:
                    lp = logprobs[dims.index(requests[i].dim)][row : row + 1]
                    out[i] = answer_probs(requests[i], label_probs(lp, self.rating_ids)[0])
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            raise RuntimeError(f"local judge left requests {missing} unanswered")  # a bug
        return out  # type: ignore[return-value]
