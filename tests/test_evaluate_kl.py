"""Reply log-probs and KL(policy || baseline) on tiny policies, against a naive forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_lab import generation
from rlhf_lab.config import EvalConfig
from rlhf_lab.evaluation import sampling
from rlhf_lab.testing import build_tiny_policy

PROMPTS = [
    [{"role": "user", "content": "hello how are you doing today"}],
    [{"role": "user", "content": "what is your favorite movie"}],
    [{"role": "user", "content": "thank you"}],
]


@pytest.fixture(scope="module")
def policy(tiny_models):
    return sampling.load_policy(tiny_models["policy"])


def _naive_logprob(model, prompt: list[int], reply: list[int], temperature: float) -> float:
    ids = torch.tensor([prompt + reply])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double() / temperature, dim=-1)
    # the logit at position t predicts token t + 1
    return sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(reply))


def test_sequence_logprobs_match_a_naive_loop(policy):
    model, tok = policy
    prompt_ids = [tok(generation.chat_prompt_text(tok, p), add_special_tokens=False)["input_ids"]
                  for p in PROMPTS]  # fmt: skip
    # replies of different lengths, one empty (it contributes 0), across two batches
    reply_ids = [[5, 17, 42, tok.eos_token_id], [], [99, 3]]
    got = sampling.sequence_logprobs(
        model, prompt_ids, reply_ids, temperature=0.7, pad_id=tok.pad_token_id, batch_size=2
    )
    want = [_naive_logprob(model, p, r, 0.7) for p, r in zip(prompt_ids, reply_ids, strict=True)]
    assert got == pytest.approx(want, abs=1e-3)
    assert got[1] == 0.0
    hotter = sampling.sequence_logprobs(
        model, prompt_ids, reply_ids, temperature=1.0, pad_id=tok.pad_token_id, batch_size=3
    )
    assert hotter[0] == pytest.approx(
        _naive_logprob(model, prompt_ids[0], reply_ids[0], 1.0), abs=1e-3
    )


def test_sequence_logprobs_batch_similar_lengths_and_keep_the_input_order(policy, monkeypatch):
    model, tok = policy
    # long, short, long, short: in input order every batch of 2 pads a short row to a long one
    prompt_ids = [[7] * 40, [7] * 5, [8] * 41, [8] * 6]
    reply_ids = [[5, 6], [5, 6], [9], [9]]
    widths = []
    real = sampling.next_token_logits

    def spy(lm, inputs, n):
        widths.append(inputs["input_ids"].shape[1])
        return real(lm, inputs, n)

    monkeypatch.setattr(sampling, "next_token_logits", spy)
    got = sampling.sequence_logprobs(
        model, prompt_ids, reply_ids, temperature=1.0, pad_id=tok.pad_token_id, batch_size=2
    )
    assert widths == [7, 42]  # the two short rows together, then the two long ones
    want = [_naive_logprob(model, p, r, 1.0) for p, r in zip(prompt_ids, reply_ids, strict=True)]
    assert got == pytest.approx(want, abs=1e-3)


def test_generated_token_ids_and_zero_kl_against_itself(policy):
    model, tok = policy
    cfg = EvalConfig(batch_size=2, max_new_tokens=6, temperature=0.7)
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    gen = sampling.generate_replies(model, tok, rows, cfg, system_prompt=None, desc="test")
    assert len(gen.texts) == 3 and all(n <= 6 for n in gen.n_tokens)
    # prompt ids are exactly what generation feeds the model
    first = tok(generation.chat_prompt_text(tok, PROMPTS[0]), add_special_tokens=False)
    assert gen.prompt_ids[0] == first["input_ids"]
    for ids, eos in zip(gen.reply_ids, gen.eos, strict=True):
        assert (bool(ids) and ids[-1] == tok.eos_token_id) == eos


def test_sample_models_kl_against_itself_and_another(tiny_models, tmp_path):
    # "twin" is the baseline's own weights (KL 0); "other" different weights (KL != 0)
    build_tiny_policy(tmp_path / "other", seed=1)
    dirs = {
        "base": tiny_models["policy"],
        "twin": tiny_models["policy"],
        "other": tmp_path / "other",
    }
    cfg = EvalConfig(batch_size=2, max_new_tokens=6, temperature=0.7)
    rows = [{"id": str(i), "prompt": p} for i, p in enumerate(PROMPTS)]
    gen, kl = sampling.sample_models(dirs, "base", ["twin", "other"], rows, cfg, None)
    assert list(gen) == ["base", "twin", "other"] and list(kl) == ["twin", "other"]
    assert np.allclose(kl["twin"], 0.0, atol=1e-5)
    # same weights, seed and settings: the same replies
    assert gen["twin"].reply_ids == gen["base"].reply_ids
    # k1 on "other"'s samples, recomputed with both models side by side
    model_o, tok_o = sampling.load_policy(dirs["other"])
    model_b, _ = sampling.load_policy(dirs["base"])
    kw = {"temperature": 0.7, "pad_id": tok_o.pad_token_id, "batch_size": 3}
    g = gen["other"]
    want = sampling.sequence_logprobs(model_o, g.prompt_ids, g.reply_ids, **kw)
    want -= sampling.sequence_logprobs(model_b, g.prompt_ids, g.reply_ids, **kw)
    assert kl["other"] == pytest.approx(want, abs=1e-4) and np.abs(kl["other"]).sum() > 0


def test_kl_temperature_for_greedy():
    assert sampling.kl_temperature(0.7) == 0.7 and sampling.kl_temperature(0.0) == 1.0
