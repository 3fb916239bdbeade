"""The local backend on the tiny random policy: expected rating, batching, truncation, resume."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.judge import Judge
from rlhf_lab.judge.base import RatingRequest
from rlhf_lab.judge.cache import ScoreCache
from rlhf_lab.judge.local import ELLIPSIS, LocalJudge, answer_token_ids, common_prefix_len
from rlhf_lab.judge.rubrics import rating_messages


@pytest.fixture(scope="module")
def local_judge(tiny_models) -> LocalJudge:
    return LocalJudge(tiny_models["policy"], batch_size=3, max_length=512)


def _req(reply: str, context: str = "User: what is your favorite movie", dim: str = "helpfulness"):
    return RatingRequest("chat", dim, context, reply)


def test_answer_tokens_are_single_digits(local_judge):
    ids = local_judge.rating_ids
    assert list(ids) == ["1", "2", "3", "4", "5"]
    for label, toks in ids.items():
        assert [local_judge.tok.decode(t).strip() for t in toks] == [label]
    assert set(answer_token_ids(local_judge.tok, ["A", "B"])) == {"A", "B"}


def test_expected_rating_matches_one_forward_pass(local_judge):
    req = _req("i like star wars")
    [rating] = local_judge.rate([req])
    text = local_judge.tok.apply_chat_template(
        rating_messages("chat", "helpfulness", req.context, req.reply),
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = local_judge.tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert local_judge.encode(req) == ids[0].tolist()  # prefix + question segments = one text
    with torch.no_grad():
        probs = local_judge.model(ids).logits[0, -1].softmax(-1)
    p = torch.stack([probs[local_judge.rating_ids[str(k)]].sum() for k in range(1, 6)])
    expected = float((p / p.sum() * torch.arange(1, 6)).sum())
    assert rating.value == pytest.approx(expected, abs=1e-4)
    assert rating.mass == pytest.approx(float(p.sum()), rel=1e-3)
    assert 1.0 <= rating.value <= 5.0


def test_batched_left_padding_equals_one_at_a_time(local_judge):
    reqs = [
        _req("ok"),
        _req("you should watch the matrix, it is great. " * 3),
        _req("are you sure?", dim="harmlessness"),
    ]
    batched = [r.value for r in local_judge.rate(reqs)]
    alone = [local_judge.rate([r])[0].value for r in reqs]
    assert batched == pytest.approx(alone, abs=1e-4)


def test_shared_forward_matches_full_prompts_with_ragged_tails(local_judge):
    prefixes = [[5, 6, 7, 8, 9, 10], [11, 12]]
    tails = [[[20, 21, 22], [23]], [[30], [31, 32, 33, 34]]]  # two tail sets, ragged rows
    shared = local_judge._forward_shared(prefixes, tails)
    for j, rows in enumerate(tails):
        full = local_judge._forward([p + t for p, t in zip(prefixes, rows, strict=True)])
        assert torch.allclose(shared[j], full, atol=1e-4)


def test_shared_prefix_is_the_common_token_prefix(local_judge):
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[5], [6]]) == 0
    prefix, tails = local_judge.encode_reply("chat", "User: hi", "hello there.")
    for dim, tail in zip(("helpfulness", "harmlessness"), tails, strict=True):
        full = local_judge.encode(_req("hello there.", context="User: hi", dim=dim))
        assert full == prefix + tail and tail
    assert tails[0][0] != tails[1][0]  # the split is where the two prompts first differ


def test_long_context_is_cut_from_the_left(local_judge):
    context = "User: " + " ".join(f"turn{i}" for i in range(400)) + " LAST_WORDS"
    ids = local_judge.encode(_req("the reply", context=context))
    assert len(ids) <= local_judge.max_length
    text = local_judge.tok.decode(ids)
    # instructions, reply and the most recent context survive; the oldest turns go
    assert "Answer with one digit from 1 to 5." in text and "the reply" in text
    assert ELLIPSIS + " " in text or ELLIPSIS in text
    assert "LAST_WORDS" in text and "turn0 " not in text
    assert text.startswith("<|im_start|>system")


def test_pairwise_both_orders_is_a_probability(local_judge):
    judge = Judge(local_judge, "chat")
    row = {"prompt": [{"role": "user", "content": "hello"}]}
    [p] = judge.compare([row], ["hello how are you"], ["no"])
    assert 0.0 <= p.value <= 1.0
    [q] = judge.compare([row], ["no"], ["hello how are you"])
    assert p.value + q.value == pytest.approx(1.0, abs=1e-6)  # both orders: symmetric


def test_killed_run_resumes_without_rescoring(tiny_models, tmp_path, monkeypatch):
    backend = LocalJudge(tiny_models["policy"], batch_size=2, max_length=512)
    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}]} for i in range(6)]
    replies = [f"answer number {i}" for i in range(6)]  # 12 items: 3 chunks of 2 replies
    calls = {"n": 0}
    real = LocalJudge._forward_shared

    def dies_on_third_batch(self, prefixes, questions):
        calls["n"] += 1
        assert len(prefixes) <= 2 and len(questions) == 2  # both dimensions share a prefix
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return real(self, prefixes, questions)

    monkeypatch.setattr(LocalJudge, "_forward_shared", dies_on_third_batch)
    cache = ScoreCache(tmp_path, backend.judge_id, "sha")
    with pytest.raises(KeyboardInterrupt):
        Judge(backend, "chat", cache).score(rows, replies)
    assert len(ScoreCache(tmp_path, backend.judge_id, "sha")) == 8  # two batches were flushed
    calls["n"] = 10
    resumed = Judge(backend, "chat", ScoreCache(tmp_path, backend.judge_id, "sha"))
    scores = resumed.score(rows, replies)
    assert calls["n"] == 11 and resumed.stats.cached == 8 and resumed.stats.scored == 4
    assert all(1.0 <= s["overall"] <= 5.0 for s in scores)
