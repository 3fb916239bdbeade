"""The token toolkit (rlhf_lab.tokens): padding, positions, EOS ids and sampling settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf_lab.errors import ModelSourceError
from rlhf_lab.tokens import eos_token_ids, pad, position_ids, sampling_kwargs


def test_pad_left_and_right_by_hand():
    ids, mask = pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], pad_id=9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    empty_ids, empty_mask = pad([], pad_id=0)
    assert empty_ids.shape == empty_mask.shape == (0, 0)


def test_position_ids_skip_left_padding():
    _, mask = pad([[5, 6, 7], [8]], pad_id=0)
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    _, mask = pad([[1, 2], [3, 4, 5, 6]], pad_id=0)
    # a padded row numbers its real tokens 0.. exactly as when it stands alone
    assert position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_eos_ids_merge_tokenizer_and_generation_config():
    tok = SimpleNamespace(eos_token_id=2)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 2]))
    assert eos_token_ids(tok, model) == [2, 7]
    assert eos_token_ids(SimpleNamespace(eos_token_id=3), object()) == [3]
    with pytest.raises(ModelSourceError, match="no EOS"):
        eos_token_ids(SimpleNamespace(eos_token_id=None), object())


def test_sampling_kwargs_switch_every_warper_off():
    kw = sampling_kwargs(16, 0.7, [2], 0)
    assert kw["do_sample"] and kw["temperature"] == 0.7
    neutral = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}
    neutral |= {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "num_beams": 1}
    assert {k: kw[k] for k in neutral} == neutral
    greedy = sampling_kwargs(16, 0.0, [2], 0)
    assert greedy["do_sample"] is False and "temperature" not in greedy
