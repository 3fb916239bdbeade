"""The reward model's input format: the reply is always kept, the oldest context goes first."""

from __future__ import annotations

import torch

from rlhf_lab import models
from rlhf_lab.reward_scorer import RewardModel, encoder_inputs, render_context, save_reward_stats


def _tok(tiny_models):
    return models.load_tokenizer(tiny_models["encoder"], padding_side="right")


def test_render_context():
    text = render_context(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert text == "User: hi\nAssistant: yo"


def test_long_context_is_cut_from_the_left_and_reply_kept(tiny_models):
    tok = _tok(tiny_models)
    prompt = [
        {"role": "user", "content": "oldest " * 200},
        {"role": "user", "content": "latest question"},
    ]
    batch = encoder_inputs(tok, [prompt], ["the reply"], max_length=32)
    assert batch["input_ids"].shape == (1, 32)
    text = tok.decode(batch["input_ids"][0])
    assert text.rstrip().endswith("[SEP] the reply [SEP]")
    assert "latest question" in text
    assert tok.truncation_side == "right"  # restored


def test_long_reply_is_capped_at_half_the_budget(tiny_models):
    tok = _tok(tiny_models)
    batch = encoder_inputs(tok, [[{"role": "user", "content": "q"}]], ["word " * 100], 40)
    ids = batch["input_ids"][0].tolist()
    sep = tok.sep_token_id
    first_sep = ids.index(sep)
    reply_len = len(ids) - first_sep - 2  # minus both [SEP]s
    assert reply_len == 20


def test_reward_model_normalises_with_saved_stats(tiny_models, tmp_path):
    clf = models.load_sequence_classifier(tiny_models["encoder"])
    tok = _tok(tiny_models)
    models.save_model(clf, tok, tmp_path)
    prompts = [[{"role": "user", "content": "hello"}]] * 3
    replies = ["hi there", "good morning", "no"]
    save_reward_stats(tmp_path, mean=0.0, std=1.0, max_length=32)
    raw = RewardModel(tmp_path).score(prompts, replies, batch_size=2)
    save_reward_stats(tmp_path, mean=float(raw.mean()), std=2.0, max_length=32)
    rm = RewardModel(tmp_path)
    assert torch.allclose(rm.score(prompts, replies), (raw - raw.mean()) / 2.0, atol=1e-5)
    assert torch.allclose(rm.score(prompts, replies, normalize=False), raw, atol=1e-5)
