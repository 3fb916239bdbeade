"""The token toolkit: padding, positions, EOS ids, the device and sampling settings.

One definition of each, shared by sampling (:mod:`rlhf_lab.generation`), PPO rollouts and
updates (:mod:`rlhf_lab.ppo`), the critic warm start, the local judge and evaluate — as TRL's
``trainer/utils.py`` (``pad``, ``selective_log_softmax``) serves every TRL trainer.

Why left padding for anything a decoder-only model continues or scores at the end: the model
continues from the last column, so every row's real tokens must end there; and a forward pass
over a left-padded batch needs explicit :func:`position_ids`, or the padding is numbered too
and every real token gets a shifted position (then a padded row no longer computes what it
computes alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from rlhf_lab.errors import ModelSourceError


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pad(
    seqs: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists → ``(ids, mask)``, long tensors [B, longest], padded on ``side``."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as ``generate()`` computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def eos_token_ids(tok: Any, model: Any) -> list[int]:
    """The tokenizer's EOS plus any others the model's generation config lists (Llama 3 has
    several); sampling stops at, and a reply mask ends with, the first of any of them."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tok.eos_token_id, gen_eos):
        for i in value if isinstance(value, list | tuple) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ModelSourceError("the tokenizer has no EOS token; generation could never stop")
    return ids


def sampling_kwargs(
    max_new_tokens: int, temperature: float, eos_ids: list[int], pad_id: int
) -> dict[str, Any]:
    """``generate()`` settings for pure temperature sampling (greedy when ``temperature`` is 0).

    Every warper a model's ``generation_config.json`` could switch on (top-k, top-p, min-p,
    typical-p, repetition penalties) is set to its neutral value explicitly — None would be
    filled in from the model's config — because PPO recomputes log-probs as
    ``softmax(logits / T)`` and any hidden warper would make the sampling distribution differ
    from the one the loss assumes ("The N Implementation Details of RLHF with PPO",
    temperature detail; TRL's PPO examples sample with top_k=0, top_p=1.0).
    """
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "num_beams": 1,
        "use_cache": True,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        kw.update(min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    else:
        kw.update(do_sample=False)
    return kw
