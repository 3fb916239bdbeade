"""Pure judge parts: rubrics and their sha, rating math, labels, agreement, the cache, Judge."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from rlhf_lab.judge import Judge, rubric_sha, to_unit
from rlhf_lab.judge import rubrics as R
from rlhf_lab.judge.base import (
    Rating,
    RatingRequest,
    expected_rating,
    first_choice_prob,
    mean_or_none,
    pairwise_both_orders,
)
from rlhf_lab.judge.cache import ScoreCache, parse_record
from rlhf_lab.judge.label import agreement, pick_pair


class FakeBackend:
    """Rates a reply by its length in words (clipped to 1..5); 'FAIL' in a reply fails."""

    judge_id = "fake:1"
    model_name = "fake"
    chunk_size = 2

    def __init__(self) -> None:
        self.asked: list[RatingRequest] = []

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        self.asked.extend(requests)
        return [
            Rating(None, "timeout", "slow")
            if "FAIL" in r.reply
            else Rating(float(min(5, max(1, len(r.reply.split())))), mass=0.5)
            for r in requests
        ]


def test_dimensions_and_sha_per_task(monkeypatch):
    assert R.dimensions("chat") == ("helpfulness", "harmlessness")
    assert R.dimensions("crs") == ("empathy", "recommendation")
    assert R.dimensions("docstring") == ("accuracy", "completeness")
    shas = {t: rubric_sha(t) for t in R.TASKS}
    assert len(set(shas.values())) == 3 and all(len(s) == 64 for s in shas.values())
    assert rubric_sha("chat") == shas["chat"]  # deterministic
    monkeypatch.setattr(R, "SYSTEM", R.SYSTEM + " Be brief.")
    assert rubric_sha("chat") != shas["chat"]  # any prompt edit changes the sha
    with pytest.raises(ValueError, match="no rubric for task 'poetry'"):
        R.dimensions("poetry")


def test_rendering_context_and_messages():
    row = {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert R.context_for("chat", row) == "User: hi\n\nAssistant: yo"
    code_row = {
        "prompt": [{"role": "user", "content": "doc this"}],
        "meta": {"code": "def f(x): ..."},
    }
    assert R.context_for("docstring", code_row) == "def f(x): ..."
    msgs = R.rating_messages("docstring", "completeness", "def f(x): ...", "Does f.")
    assert msgs[0]["role"] == "system" and "single digit" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert (
        user.startswith("Python function:\ndef f(x): ...")
        and "Docstring written for it:\nDoes f." in user
    )
    assert user.endswith("Answer with one digit from 1 to 5.")
    pair = R.pairwise_messages("chat", "ctx", "first", "second")[1]["content"]
    assert (
        "reply A:\nfirst" in pair
        and "reply B:\nsecond" in pair
        and "helpfulness and harmlessness" in pair
    )


def test_crs_no_movie_forces_recommendation_minimum():
    row = {"prompt": [], "meta": {"movies": {"111": "The Matrix (1999)"}, "gold_movies": ["111"]}}
    assert R.forced_scores("crs", "you should watch The Matrix!", row) == {}
    assert R.forced_scores("crs", "how was your day?", row) == {"recommendation": 1.0}
    assert R.NO_RECOMMENDATION_SCORE == R.SCALE[0] == 1
    assert R.forced_scores("chat", "how was your day?", row) == {}


def test_expected_rating_and_pairwise_math():
    value, mass = expected_rating({"1": 0.1, "5": 0.1, "3": 0.2, "x": 0.6})
    assert value == pytest.approx((1 * 0.1 + 5 * 0.1 + 3 * 0.2) / 0.4) and mass == pytest.approx(
        0.4
    )
    assert expected_rating({"4": 1e-9})[0] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        expected_rating({"7": 1.0})
    assert first_choice_prob({"A": 0.3, "B": 0.1}) == pytest.approx((0.75, 0.4))
    # a judge that always answers "A" is cancelled by asking both orders
    assert pairwise_both_orders(0.9, 0.9) == pytest.approx(0.5)
    assert pairwise_both_orders(0.8, 0.2) == pytest.approx(0.8)
    assert mean_or_none([2.0, 4.0]) == 3.0 and mean_or_none([2.0, None]) is None
    assert to_unit(1.0) == 0.0 and to_unit(5.0) == 1.0 and to_unit(None) is None


def test_pick_pair_ties_and_failures():
    assert pick_pair([2.0, 4.5, 3.0], 0.25) == (1, 0)
    assert pick_pair([3.0, 3.2], 0.25) == "tie"
    assert pick_pair([3.0, 3.0], 0.0) == "tie"  # no gap never labels, whatever the margin
    assert pick_pair([3.0, 3.1], 0.0) == (1, 0)
    assert pick_pair([None, 4.0, 1.0], 0.25) == (1, 2)
    assert pick_pair([None, 4.0], 0.25) == "unscored"


def test_agreement_counts_ties_half_and_skips_failures():
    assert agreement([(3.0, 2.0), (1.0, 2.0), (2.0, 2.0), (None, 1.0)]) == (pytest.approx(0.5), 3)
    assert agreement([(5, 1)] * 3) == (1.0, 3)
    assert agreement([]) == (None, 0)


def test_cache_round_trip_resume_and_torn_line(tmp_path):
    cache = ScoreCache(tmp_path, "judge-a", "sha1")
    assert cache.add([("k1", 4.5, 0.9), ("k2", 2.0, None), ("k1", 1.0, None)]) == 2
    # a kill mid-write leaves half a line without its newline
    with open(cache.path, "a") as fh:
        fh.write('{"key": "k3", "val')
    again = ScoreCache(tmp_path, "judge-a", "sha1")
    assert again.get("k1") == (4.5, 0.9) and again.get("k2") == (2.0, None)
    assert "k3" not in again and again.skipped_lines == 1
    again.add([("k4", 3.0, 0.5)])
    third = ScoreCache(tmp_path, "judge-a", "sha1")
    assert len(third) == 3 and third.get("k4") == (3.0, 0.5)  # not glued to the torn line
    assert len(ScoreCache(tmp_path, "judge-b", "sha1")) == 0  # another judge never hits
    assert len(ScoreCache(tmp_path, "judge-a", "sha2")) == 0  # nor another rubric
    lines = cache.path.read_text().splitlines()
    assert json.loads(lines[0]) == {"key": "k1", "value": 4.5, "mass": 0.9}


@pytest.mark.parametrize(
    "line",
    [
        '{"key": "k", "value": "4.5"}',
        '{"key": 7, "value": 4.5}',
        '["k", 4.5]',
        '{"key": "k", "value": true}',
        '{"key": "k", "value": 6}',
        '{"key": "k", "value": Infinity}',
        '{"key": "k", "value": 4.5, "mass": 1.5}',
        '{"key": "k", "value": 4.5, "mass": "high"}',
        '{"key": "k", "val',
    ],
)
def test_cache_record_with_wrong_types_or_values_is_not_read(line):
    assert parse_record(line) is None
    assert parse_record('{"key": "k", "value": 4.5, "mass": 0.9}') == ("k", 4.5, 0.9)
    assert parse_record('{"key": "k", "value": 0.25, "mass": null}') == ("k", 0.25, None)


def test_judge_turns_off_scale_ratings_into_invalid_failures(tmp_path):
    class Wild(FakeBackend):
        chunk_size = 4

        def rate(self, requests):
            return [
                Rating(float("inf")),
                Rating(4.0, mass=7.0),
                Rating(None, "no_rating", "hm"),
                Rating(4.0, mass=1.0004),  # float error in the server's logprobs
            ]

    reqs = [RatingRequest("chat", "helpfulness", "c", r) for r in ("a", "b", "c", "d")]
    cache = ScoreCache(tmp_path, "fake:1", "sha")
    ratings = Judge(Wild(), "chat", cache).rate(reqs)
    assert [(r.value, r.error, r.mass) for r in ratings] == [
        (None, "invalid", None),
        (None, "invalid", None),
        (None, "no_rating", None),
        (4.0, None, 1.0),
    ]
    # nothing off the scale is written; the clipped mass reads back
    again = ScoreCache(tmp_path, "fake:1", "sha")
    assert len(again) == 1 and again.get(reqs[3].key("fake:1", rubric_sha("chat"))) == (4.0, 1.0)
    neutral = Judge(Wild(), "chat", neutral_fallback=True).rate(reqs)
    assert [(r.value, r.fallback) for r in neutral] == [
        (3.0, "invalid"),
        (3.0, "invalid"),
        (3.0, "no_rating"),
        (4.0, None),
    ]


def test_request_key_covers_judge_rubric_and_texts():
    req = RatingRequest("chat", "helpfulness", "ctx", "reply")
    base = req.key("j", "s")
    assert len({base, req.key("j2", "s"), req.key("j", "s2")}) == 3
    assert RatingRequest("chat", "harmlessness", "ctx", "reply").key("j", "s") != base
    assert RatingRequest("chat", "helpfulness", "ctx2", "reply").key("j", "s") != base
    assert RatingRequest("chat", "helpfulness", "ctx", "reply").key("j", "s") == base


def test_judge_dedups_caches_forces_and_keeps_failures(tmp_path):
    backend = FakeBackend()
    cache = ScoreCache(tmp_path, backend.judge_id, rubric_sha("crs"))
    judge = Judge(backend, "crs", cache)
    row = {
        "id": 1,
        "prompt": [{"role": "user", "content": "a movie?"}],
        "meta": {"movies": {"9": "Alien"}},
    }
    replies = ["try Alien it is scary", "try Alien it is scary", "hello", "Alien FAIL"]
    out = judge.score_detailed([row] * 4, replies)
    # identical (context, reply) asked once; "hello" asks only empathy (recommendation forced)
    assert len(backend.asked) == 2 + 1 + 2
    assert out[0].scores == {"empathy": 5.0, "recommendation": 5.0, "overall": 5.0}
    assert out[2].scores == {"empathy": 1.0, "recommendation": 1.0, "overall": 1.0}
    assert out[2].forced == ("recommendation",)
    assert out[3].scores["overall"] is None and set(out[3].failures) == {
        "empathy",
        "recommendation",
    }
    assert judge.stats.failures["timeout"] == 2 and judge.stats.scored == 3
    assert judge.stats.rating_mass == pytest.approx(0.5)
    # a second judge on the same cache only asks for the failed items
    backend2 = FakeBackend()
    judge2 = Judge(backend2, "crs", ScoreCache(tmp_path, backend.judge_id, rubric_sha("crs")))
    judge2.score([row] * 4, replies)
    assert [r.reply for r in backend2.asked] == ["Alien FAIL", "Alien FAIL"]
    assert judge2.stats.cached == 3
