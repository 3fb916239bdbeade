"""CRSLab's ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.tasks.crs import ranking


def test_case_metrics_of_one_rank():
    # gold second (0-based rank 1): in the top 10 and 50, not the top 1
    m = ranking.case_metrics(1)
    assert (m["recall@1"], m["recall@10"], m["recall@50"]) == (0.0, 1.0, 1.0)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3)) == pytest.approx(0.6309298)
    assert m["mrr@10"] == 0.5
    # rank 10 is the 11th place: outside the top 10, inside the top 50
    m = ranking.case_metrics(10)
    assert (m["recall@10"], m["ndcg@10"], m["recall@50"]) == (0.0, 0.0, 1.0)
    assert m["ndcg@50"] == pytest.approx(1 / math.log2(12))
    assert set(ranking.case_metrics(None).values()) == {0.0}
    assert ranking.case_metrics(0)["ndcg@10"] == 1.0


def test_every_gold_movie_is_one_case():
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["p"]]
    golds = [["b"], ["x", "q"], []]  # turn 2 suggests two movies, turn 3 none
    out = ranking.evaluate(rankings, golds)
    assert out["cases"] == 3.0 and out["turns"] == 2.0
    # cases: b at rank 1, x at rank 0, q absent
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@10"] == pytest.approx(2 / 3)
    assert out["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0 + 0.0) / 3)
    assert out["mrr@10"] == pytest.approx((0.5 + 1.0) / 3)
    per = ranking.per_turn(rankings, golds)
    assert per[0]["recall@10"] == 1.0 and per[1]["recall@10"] == 0.5 and per[2] == {}
    # a repeated gold id is one case
    assert ranking.evaluate([["a"]], [["a", "a"]])["cases"] == 1.0


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 rankings for 1 gold sets"):
        ranking.evaluate([["a"], ["b"]], [["a"]])
