"""evaluate's sampling: every policy answers the test prompts, and KL(policy || baseline).

Every model (``eval.baseline`` and each of ``eval.policies``) answers the same prompts with
the same sampling settings and seed (``eval.temperature``, ``eval.max_new_tokens``,
``eval.seed``) through
:func:`rlhf_lab.generation.generate`, so the only difference between two reply sets is the
model. The KL is the k1 estimator summed over each reply's *sampled* tokens (the ids the
sample carries, never a re-tokenisation of its text),
``Σ_t log p_policy(y_t | ·) - log p_base(y_t | ·)`` with ``y ~ p_policy``, logits divided by the
sampling temperature (as in PPO training, [N-details] "scale the logits by sampling
temperature"), averaged over prompts (nats per reply).

:func:`sample_models` holds one model in memory at a time: each policy generates and scores
its own samples, then is freed; the baseline comes last, generates, and scores every
policy's samples.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_lab import models
from rlhf_lab.config import EvalConfig
from rlhf_lab.data.rows import Row
from rlhf_lab.errors import DataError
from rlhf_lab.generation import chat_prompt_text, generate, next_token_logits
from rlhf_lab.ppo.core import logprobs_from_logits
from rlhf_lab.tokens import default_device, pad, position_ids

MAX_PROMPT_TOKENS = 1024
"""Longest prompt (chat template applied) the policies see; older tokens are cut."""


def load_policy(model_dir: str | Path) -> tuple[Any, Any]:
    """A policy directory as (model in eval mode, left-padding tokenizer)."""
    tok = models.load_tokenizer(model_dir, padding_side="left")
    model = models.load_causal_lm(model_dir).eval()
    models.ensure_pad_token(tok, model)
    return model.to(default_device()), tok


@torch.inference_mode()
def sequence_logprobs(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    reply_ids: Sequence[Sequence[int]],
    *,
    temperature: float,
    pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """``Σ_t log p(reply_t | prompt, reply_<t)`` per (prompt, reply), logits / ``temperature``.

    Sequences are left-padded with explicit position ids (as generation sees them), so every
    reply ends at the last column and only the last ``max reply length + 1`` logits are
    needed (``logits_to_keep``): a [batch, reply, vocab] slice instead of the full
    [batch, prompt + reply, vocab] tensor, which for a 49k vocabulary and 1k-token prompts
    would not fit in memory. Batches are made of sequences of similar length (results come
    back in the input order): in prompt order, half of a batch's positions were padding.
    """
    out = np.zeros(len(reply_ids), dtype=np.float64)
    device = next(model.parameters()).device
    order = sorted(range(len(reply_ids)), key=lambda i: len(prompt_ids[i]) + len(reply_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        p_chunk = [prompt_ids[i] for i in idx]
        r_chunk = [reply_ids[i] for i in idx]
        r_max = max(len(r) for r in r_chunk)
        if r_max == 0:
            continue
        seqs = [list(p) + list(r) for p, r in zip(p_chunk, r_chunk, strict=True)]
        input_ids, mask = pad(seqs, pad_id)
        reply_mask = pad(r_chunk, 0)[1].float()  # left-padded too: replies end at the last column
        pos = position_ids(mask)
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": mask.to(device),
            "position_ids": pos.to(device),
        }
        logits = next_token_logits(model, inputs, r_max)  # float32 head, reply positions only
        logp = logprobs_from_logits(logits / temperature, input_ids[:, -r_max:].to(device))
        # where, not a product: a padding position's logits can be NaN (nothing to attend to)
        logp = torch.where(reply_mask > 0, logp.cpu(), torch.zeros_like(reply_mask))
        out[idx] = logp.sum(-1).double().numpy()
    return out


def kl_temperature(temperature: float) -> float:
    """Temperature the KL is computed at: the sampling one; 1 for greedy decoding.

    With greedy decoding (``eval.temperature: 0``) the replies are not samples of either
    policy, so the "KL" is only the log-ratio on the greedy reply, at temperature 1.
    """
    return temperature if temperature > 0 else 1.0


@dataclass(frozen=True)
class Generated:
    """A policy's replies, with the token ids the KL is computed on."""

    texts: list[str]
    n_tokens: list[int]
    eos: list[bool]
    prompt_ids: list[list[int]]
    reply_ids: list[list[int]]


def generate_replies(
    model: Any,
    tok: Any,
    rows: Sequence[Row],
    cfg: EvalConfig,
    system_prompt: str | None,
    desc: str,
) -> Generated:
    """Sample one reply per row with ``rlhf_lab.generation`` under ``eval``'s settings."""
    prompts = [row["prompt"] for row in rows]
    samples = generate(
        model,
        tok,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        system_prompt=system_prompt,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        desc=desc,
    )
    return Generated(
        texts=[s.text for s in samples],
        n_tokens=[int(s.n_tokens) for s in samples],
        eos=[bool(s.eos) for s in samples],
        prompt_ids=prompt_token_ids(tok, prompts, system_prompt),
        reply_ids=[list(s.token_ids) for s in samples],
    )


def prompt_token_ids(
    tok: Any, prompts: Sequence[Sequence[Mapping[str, str]]], system_prompt: str | None
) -> list[list[int]]:
    """Prompt ids as the policy saw them: encoded exactly as :func:`rlhf_lab.generation.generate`
    does (chat template, no extra special tokens, the last :data:`MAX_PROMPT_TOKENS`)."""
    return [
        tok(chat_prompt_text(tok, list(p), system_prompt), add_special_tokens=False)["input_ids"][
            -MAX_PROMPT_TOKENS:
        ]
        for p in prompts
    ]


def sample_models(
    model_dirs: Mapping[str, Path],
    baseline: str,
    policies: Sequence[str],
    rows: Sequence[Row],
    cfg: EvalConfig,
    system_prompt: str | None,
) -> tuple[dict[str, Generated], dict[str, np.ndarray]]:
    """Replies of the baseline and every policy, and per-prompt KL(policy || baseline).

    One model in memory at a time (a policy is as large as anything the stage loads): each
    policy samples and log-probs its own replies, then is released; the baseline samples
    last and log-probs every policy's replies. Returns ``(replies by model name, baseline
    first; KL by policy)``.
    """
    base_vocab = models.load_tokenizer(model_dirs[baseline]).get_vocab()
    for name in policies:
        if models.load_tokenizer(model_dirs[name]).get_vocab() != base_vocab:
            raise DataError(
                f"{model_dirs[name]} and {model_dirs[baseline]} have different tokenizers: "
                f"KL({name} || {baseline}) needs both to share one (fine-tune from the baseline)"
            )
    t = kl_temperature(cfg.temperature)

    def logprobs(model: Any, tok: Any, gen: Generated) -> np.ndarray:
        """Summed log-probs of ``gen``'s replies under ``model`` (at the KL temperature)."""
        return sequence_logprobs(
            model,
            gen.prompt_ids,
            gen.reply_ids,
            temperature=t,
            pad_id=tok.pad_token_id,
            batch_size=cfg.batch_size,
        )

    generated: dict[str, Generated] = {}
    logp_own: dict[str, np.ndarray] = {}
    for name in policies:
        model, tok = load_policy(model_dirs[name])
        gen = generate_replies(model, tok, rows, cfg, system_prompt, f"generate {name}")
        logp_own[name] = logprobs(model, tok, gen)
        generated[name] = gen
        del model
        gc.collect()  # before the next model loads
    model, tok = load_policy(model_dirs[baseline])
    out = {baseline: generate_replies(model, tok, rows, cfg, system_prompt, f"generate {baseline}")}
    kl = {}
    for name in policies:
        kl[name] = logp_own[name] - logprobs(model, tok, generated[name])
        out[name] = generated[name]
    del model
    gc.collect()  # scoring needs none of the policies
    return out, kl
