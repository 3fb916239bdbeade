"""BERTScore (Zhang et al. 2020, "BERTScore: Evaluating Text Generation with BERT"), computed here.

Why not ``bert_score.score``: it does work offline with a local directory as ``model_type``, but
it loads the encoder with its own ``from_pretrained`` (only ``rlhf_lab.models`` may), and it
prints to stderr and builds a multiprocessing pool for idf. The metric itself is a few lines, so
we compute it on the encoder ``rlhf_lab.models`` loads and check it against ``bert_score.score``
in ``tests/test_evaluate_bertscore.py``. The recipe is bert_score 0.3.13's with ``idf=False``
and ``rescale_with_baseline=False`` (rescaling needs per-model baseline files we do not have
for a local encoder):

- each text is stripped and encoded with the tokenizer's special tokens (``[CLS] ... [SEP]``),
  truncated to the encoder's maximum length; an empty text is just the special tokens;
- token embeddings are the hidden states after layer ``num_layers`` (bert_score truncates the
  encoder to its first ``num_layers`` layers and reads the last one: the same tensor);
- greedy matching on cosine similarity: precision averages, over the candidate's tokens, the
  best similarity to any reference token; recall the other way round. The special tokens get
  weight 0 as tokens being scored (bert_score's ``idf_dict[cls] = idf_dict[sep] = 0``) but may
  still be matched against;
- ``F1 = 2PR / (P + R)``; a candidate or reference with no real tokens scores 0 (as bert_score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_lab import models
from rlhf_lab.errors import ConfigError


@dataclass(frozen=True)
class BertScores:
    """Per-pair BERTScore precision, recall and F1 (each in [-1, 1], in practice [0, 1])."""

    precision: list[float]
    recall: list[float]
    f1: list[float]


def greedy_match(
    cand: torch.Tensor, ref: torch.Tensor, cand_weight: torch.Tensor, ref_weight: torch.Tensor
) -> tuple[float, float, float]:
    """BERTScore (P, R, F1) of one pair from token embeddings ``[m, d]`` and ``[n, d]``.

    ``*_weight`` are per-token weights (1 for real tokens, 0 for special ones; idf weights
    would go here). Embeddings need not be normalised.
    """
    cand = torch.nn.functional.normalize(cand.float(), dim=-1)
    ref = torch.nn.functional.normalize(ref.float(), dim=-1)
    cand_weight, ref_weight = cand_weight.float(), ref_weight.float()
    if cand_weight.sum() <= 0 or ref_weight.sum() <= 0:
        return 0.0, 0.0, 0.0
    sim = cand @ ref.T  # [m, n]
    precision = float((sim.max(dim=1).values * cand_weight).sum() / cand_weight.sum())
    recall = float((sim.max(dim=0).values * ref_weight).sum() / ref_weight.sum())
    denom = precision + recall
    f1 = 2 * precision * recall / denom if denom != 0 else 0.0
    return precision, recall, f1


class BertScorer:
    """An encoder and its tokenizer, ready to score (candidate, reference) pairs."""

    def __init__(
        self, model: Any, tok: Any, num_layers: int, batch_size: int = 32, max_length: int = 512
    ) -> None:
        total = int(model.config.num_hidden_layers)
        if not 1 <= num_layers <= total:
            raise ConfigError(
                f"eval.bertscore_layers: {num_layers} is not a layer of the encoder "
                f"(it has {total}; use 1..{total})"
            )
        self.model = model.eval()
        self.tok = tok
        self.num_layers = num_layers
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", max_length) or max_length
        self.max_length = min(max_length, int(limit), int(tok.model_max_length))
        specials = {tok.cls_token_id, tok.sep_token_id} - {None}
        # Encoders without CLS/SEP (sentencepiece models) mark sentences with BOS/EOS instead.
        self.special_ids = specials or {tok.bos_token_id, tok.eos_token_id} - {None}

    @classmethod
    def from_dir(cls, encoder_dir: str | Path, num_layers: int, batch_size: int = 32) -> BertScorer:
        """Load the encoder saved by ``prepare_models`` (e.g. ``models/base/encoder``)."""
        tok = models.load_tokenizer(encoder_dir, padding_side="right")
        return cls(models.load_encoder(encoder_dir), tok, num_layers, batch_size)

    def _encode(self, text: str) -> list[int]:
        return self.tok(
            text.strip(), add_special_tokens=True, truncation=True, max_length=self.max_length
        )["input_ids"]

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``text -> (token embeddings [len, d], token weights [len])`` for each distinct text."""
        unique = sorted(set(texts), key=len)  # similar lengths per batch: less padding
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for start in range(0, len(unique), self.batch_size):
            chunk = unique[start : start + self.batch_size]
            ids = [self._encode(t) for t in chunk]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for i, x in enumerate(ids):
                input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
                mask[i, : len(x)] = 1
            hidden = self.model(
                input_ids=input_ids, attention_mask=mask, output_hidden_states=True
            ).hidden_states[self.num_layers]  # [0] is the embedding layer
            for i, (text, x) in enumerate(zip(chunk, ids, strict=True)):
                weight = torch.tensor([0.0 if t in self.special_ids else 1.0 for t in x])
                out[text] = (hidden[i, : len(x)].float(), weight)
        return out

    def score(self, cands: Sequence[str], refs: Sequence[str]) -> BertScores:
        """BERTScore of ``cands[i]`` against ``refs[i]``."""
        if len(cands) != len(refs):
            raise ValueError(f"got {len(cands)} candidates but {len(refs)} references")
        emb = self.embed([*cands, *refs])
        p_all, r_all, f_all = [], [], []
        for cand, ref in zip(cands, refs, strict=True):
            (c_emb, c_w), (r_emb, r_w) = emb[cand], emb[ref]
            p, r, f = greedy_match(c_emb, r_emb, c_w, r_w)
            p_all.append(p)
            r_all.append(r)
            f_all.append(f)
        return BertScores(p_all, r_all, f_all)
