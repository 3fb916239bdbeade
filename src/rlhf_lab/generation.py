"""Batched sampling from a chat model, shared by prepare_preference, PPO rollouts and evaluate.

``generate`` renders each prompt with the tokenizer's chat template, left-pads a batch
(:mod:`rlhf_lab.tokens`: a decoder-only model continues from the last position), cuts
over-long prompts from the left (the latest turns matter most), and samples until EOS.

Sampling is *pure temperature sampling* (:func:`rlhf_lab.tokens.sampling_kwargs`): top-k,
top-p, min-p, typical-p and repetition penalty are switched off explicitly, whatever the model's
``generation_config.json`` says (transformers otherwise applies top_k=50 by default, and
Qwen2.5-Instruct ships top_k=20, top_p=0.8 and repetition_penalty=1.05).

Prompts are batched by token length (results come back in input order), so little compute goes
to padding. Each batch draws from its own generator state, seeded from (seed, batch index),
inside a forked RNG: the result depends only on the prompts, the seed and the batch size, not
on what ran before, and the caller's global RNG state is left untouched.

Speed levers measured and *not* adopted (``bench/throughput.py``; 135M policy, fp32, batch 8,
32 new tokens, 1 thread on a 2-core AMD EPYC at load average ~7, so rough): a static KV cache
(``cache_implementation="static"``) was slower (6.9 vs 7.7 tokens/s); static cache +
``torch.compile`` of the decode forward was within noise (8.2 tokens/s) after a 574 s compile,
recompiled when batch shapes change; both gave the same greedy tokens. A static cache also
fails under bf16 autocast (it is allocated in the weights' float32 and rejects bf16 keys).
transformers' ``generate`` already runs the LM head on the last position only
(``logits_to_keep=1``); the head is still 21 % of a generated token's FLOPs (49k x 576 of 135M
weights) and every logit is needed to sample from the full distribution.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf_lab import precision, ui
from rlhf_lab.errors import ModelSourceError
from rlhf_lab.tokens import eos_token_ids, pad, sampling_kwargs


@dataclass
class Sample:
    text: str
    """The reply, decoded without special tokens and stripped."""
    n_tokens: int
    """Tokens generated, the EOS token included (what a PPO update scores)."""
    eos: bool
    """Whether the reply ended with EOS (False: cut at max_new_tokens)."""
    token_ids: list[int] = field(default_factory=list)
    """The sampled tokens, the EOS included: what evaluate's KL scores (no re-tokenising);
    empty when the text no longer is what was sampled (a trimmed SPIN sample)."""


def chat_prompt_text(
    tok: Any, messages: list[dict[str, str]], system_prompt: str | None = None
) -> str:
    """The chat template applied to ``messages`` (plus ``system_prompt``), ready for a reply."""
    if getattr(tok, "chat_template", None) is None:
        raise ModelSourceError(
            f"tokenizer {getattr(tok, 'name_or_path', '?')!r} has no chat template; "
            "use an instruction-tuned (chat) model"
        )
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of one batch: a hash, so neighbouring (seed, batch) pairs are unrelated streams."""
    digest = hashlib.sha256(f"generate:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def trim_at_eos(ids: list[int], eos_ids: list[int]) -> tuple[int, bool]:
    """(tokens up to and including the first EOS, whether there was one) of generated ids."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return i + 1, True
    return len(ids), False


def next_token_hidden(lm: Any, inputs: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """The backbone's final hidden states [B, n, H] at the ``n`` positions before the last of a
    left-padded batch: the ones that predict its last ``n`` tokens (position t predicts token
    t + 1). The backbone runs as it is (bf16 under ``models.mixed_precision``)."""
    return lm.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, -(n + 1) : -1]


def head_logits(lm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits [..., V] of the LM head on ``hidden``, even under autocast: log-prob
    differences (PPO's ratio, KL) of bf16 logits — 3 significant digits on values of ~10-30 —
    carry noise of the order of PPO's clip range."""
    from rlhf_lab.precision import full_precision

    with full_precision(hidden.device):
        return lm.get_output_embeddings()(hidden.float()).float()


def next_token_logits(lm: Any, inputs: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """Float32 logits [B, n, V] of the ``n`` positions that predict a left-padded batch's last
    ``n`` tokens: :func:`next_token_hidden`, then :func:`head_logits` on those positions only
    (the head is a large share of a small model's FLOPs). PPO's shared trunk
    (:meth:`rlhf_lab.ppo.model.PolicyCritic.logprobs_and_values`) calls the two halves itself,
    so the value head reads the same hidden states."""
    return head_logits(lm, next_token_hidden(lm, inputs, n))


@torch.inference_mode()
def generate(
    model: Any,
    tok: Any,
    prompts: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    system_prompt: str | None = None,
    max_prompt_tokens: int = 1024,
    desc: str = "generate",
) -> list[Sample]:
    """One reply per prompt (chat messages ending with a user turn), in order.

    ``temperature`` 0 is greedy decoding. Prompts longer than ``max_prompt_tokens`` (after the
    chat template; at most the model's positions minus ``max_new_tokens``) lose their oldest
    tokens. See the module docstring for the sampling details.
    """
    from transformers import GenerationConfig

    if not prompts:
        return []
    eos_ids = eos_token_ids(tok, model)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
    config = GenerationConfig(**sampling_kwargs(max_new_tokens, temperature, eos_ids, pad_id))
    # Prompt + reply must fit the model's positions, or generation degrades (or raises).
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if positions and positions > max_new_tokens:
        max_prompt_tokens = min(max_prompt_tokens, positions - max_new_tokens)
    # The template already holds BOS/special tokens as text; don't add them twice.
    encoded = [
        tok(chat_prompt_text(tok, p, system_prompt), add_special_tokens=False)["input_ids"][
            -max_prompt_tokens:
        ]
        for p in prompts
    ]
    # Batches of similar length: a batch is padded to its longest prompt and the padding is
    # computed like real tokens, so unsorted chat prompts would cost ~2x the prefill.
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    device = next(model.parameters()).device
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    samples: list[Sample | None] = [None] * len(prompts)
    starts = range(0, len(prompts), batch_size)
    try:
        for b, start in enumerate(ui.track(starts, desc, total=len(starts))):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = pad([encoded[i] for i in batch], pad_id)
            with torch.random.fork_rng(devices=fork_devices), precision.inference():
                torch.manual_seed(batch_seed(seed, b))
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
            for i, row in zip(batch, out[:, input_ids.shape[1] :].tolist(), strict=True):
                n, eos = trim_at_eos(row, eos_ids)
                text = tok.decode(row[:n], skip_special_tokens=True).strip()
                samples[i] = Sample(text=text, n_tokens=n, eos=eos, token_ids=row[:n])
    finally:
        model.train(was_training)
    return [s for s in samples if s is not None]
