"""rlhf_lab.generation on the tiny random policy: padding, seeding, truncation, pure sampling."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab import models
from rlhf_lab.errors import ModelSourceError
from rlhf_lab.generation import (
    Sample,
    chat_prompt_text,
    generate,
    trim_at_eos,
)

PROMPTS = [
    [{"role": "user", "content": "hello how are you doing today"}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "what is your favorite movie"},
        {"role": "assistant", "content": "i like alien"},
        {"role": "user", "content": "why"},
    ],
]


@pytest.fixture(scope="module")
def policy(tiny_models):
    return models.load_causal_lm(tiny_models["policy"]), models.load_tokenizer(
        tiny_models["policy"]
    )


def gen(policy, prompts, **kw) -> list[Sample]:
    model, tok = policy
    args = {"max_new_tokens": 6, "temperature": 0.0, "batch_size": 4, "seed": 0}
    return generate(model, tok, prompts, **(args | kw))


def test_chat_prompt_text_adds_system_and_generation_prompt(policy):
    _, tok = policy
    text = chat_prompt_text(tok, PROMPTS[1], system_prompt="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "You are a helpful AI assistant." in chat_prompt_text(tok, PROMPTS[1])


def test_no_chat_template_is_a_clear_error(policy):
    _, tok = policy
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ModelSourceError, match="has no chat template"):
            chat_prompt_text(tok, PROMPTS[1])
    finally:
        tok.chat_template = saved


def test_trim_at_eos():
    assert trim_at_eos([4, 9, 2, 0, 0], [2]) == (3, True)
    assert trim_at_eos([4, 9, 3], [2]) == (3, False)


def test_greedy_batched_with_left_padding_equals_one_at_a_time(policy):
    batched = gen(policy, PROMPTS, batch_size=3)
    single = [gen(policy, [p], batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    for s in batched:
        assert 1 <= s.n_tokens <= 6 and (s.eos or s.n_tokens == 6)


def test_samples_carry_the_sampled_token_ids(policy):
    _, tok = policy
    for s in gen(policy, PROMPTS, temperature=1.0, batch_size=3, seed=1):
        assert len(s.token_ids) == s.n_tokens
        assert (s.token_ids[-1] == tok.eos_token_id) == s.eos
        assert tok.decode(s.token_ids, skip_special_tokens=True).strip() == s.text


def test_sampling_depends_only_on_seed_and_batch_index(policy):
    kw = {"temperature": 1.0, "batch_size": 2, "seed": 3}
    torch.manual_seed(123)
    before = torch.rand(1)
    a = gen(policy, PROMPTS, **kw)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before) and torch.equal(torch.rand(1), after)  # untouched
    assert gen(policy, PROMPTS, **kw) == a
    # batches are formed by prompt length, and replies come back in input order
    assert gen(policy, PROMPTS[::-1], **kw) == a[::-1]
    assert gen(policy, PROMPTS, **(kw | {"seed": 4})) != a


def test_sampling_is_pure_temperature_no_hidden_top_k(policy):
    # The random tiny model is nearly uniform over ~400 tokens: transformers' default top_k=50
    # would cap the distinct first tokens at 50.
    out = gen(policy, PROMPTS[1:2] * 300, temperature=1.0, max_new_tokens=1, batch_size=300)
    assert len({s.text for s in out}) > 80


def test_long_prompts_are_cut_from_the_left(policy):
    model, tok = policy
    seen: list[int] = []
    original = model.generate

    def spy(**kw):
        seen.append(kw["input_ids"].shape[1])
        return original(**kw)

    model.generate = spy
    try:
        long = [{"role": "user", "content": "the quick brown fox " * 50}]
        (s,) = generate(model, tok, [long], max_new_tokens=3, temperature=0.0, batch_size=1,
                        seed=0, max_prompt_tokens=16)  # fmt: skip
    finally:
        del model.generate
    assert seen == [16] and s.n_tokens <= 3
