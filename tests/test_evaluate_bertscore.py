"""BERTScore: greedy matching by hand, and agreement with the bert_score package."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lab.errors import ConfigError
from rlhf_lab.evaluation.bertscore import BertScorer, greedy_match


def test_greedy_match_by_hand():
    # cand tokens e1, e2; ref token e1: precision = (1 + 0) / 2, recall = 1, F1 = 2/3.
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[2.0, 0.0]])  # not unit length: cosine similarity normalises
    p, r, f = greedy_match(cand, ref, torch.ones(2), torch.ones(1))
    assert (p, r) == pytest.approx((0.5, 1.0))
    assert f == pytest.approx(2 / 3)


def test_special_tokens_are_matched_against_but_not_scored():
    # cand = [CLS, e2], ref = [CLS, e1]: the CLS tokens (weight 0) are not scored, but the
    # ref's CLS is still a candidate match, as in bert_score's greedy_cos_idf.
    cls, e1, e2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]
    cand, ref = torch.tensor([cls, e2]), torch.tensor([cls, e1])
    w = torch.tensor([0.0, 1.0])
    p, r, _ = greedy_match(cand, ref, w, w)
    assert p == pytest.approx(0.8)  # e2 best matches e1 (0.8) over CLS (0.6)
    assert r == pytest.approx(0.8)


def test_empty_candidate_scores_zero():
    emb = torch.randn(2, 4)
    assert greedy_match(emb, emb, torch.zeros(2), torch.ones(2)) == (0.0, 0.0, 0.0)


def test_against_naive_loop():
    torch.manual_seed(0)
    cand, ref = torch.randn(5, 8), torch.randn(3, 8)
    wc, wr = torch.tensor([0.0, 1, 1, 1, 0]), torch.tensor([0.0, 1, 0])
    cos = [[float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for b in ref] for a in cand]
    p = sum(max(row) * float(w) for row, w in zip(cos, wc, strict=True)) / float(wc.sum())
    cols = [[cos[i][j] for i in range(5)] for j in range(3)]
    r = sum(max(col) * float(w) for col, w in zip(cols, wr, strict=True)) / float(wr.sum())
    got = greedy_match(cand, ref, wc, wr)
    assert got == pytest.approx((p, r, 2 * p * r / (p + r)), abs=1e-6)


@pytest.fixture(scope="module")
def scorer(tiny_models):
    return BertScorer.from_dir(tiny_models["encoder"], num_layers=2, batch_size=2)


def test_identical_texts_score_one(scorer):
    scores = scorer.score(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores.f1[0] == pytest.approx(1.0, abs=1e-5)


def test_matches_bert_score_package(scorer, tiny_models):
    bert_score = pytest.importorskip("bert_score")
    cands = ["hello there friend", "the cat sat", "a b c wow", "you should watch the matrix"]
    refs = ["hello friend", "a cat sat down", "wow indeed", "the matrix is great"]
    for layers in (2, 1):
        ours = BertScorer(scorer.model, scorer.tok, num_layers=layers).score(cands, refs)
        p, r, f = bert_score.score(
            cands,
            refs,
            model_type=str(tiny_models["encoder"]),  # a local dir works offline
            num_layers=layers,
            lang="en",
            rescale_with_baseline=False,
        )
        assert ours.precision == pytest.approx(p.tolist(), abs=1e-4)
        assert ours.recall == pytest.approx(r.tolist(), abs=1e-4)
        assert ours.f1 == pytest.approx(f.tolist(), abs=1e-4)


def test_empty_reply_scores_zero(scorer):
    # bert_score 0.3.13 crashes on "" under transformers 5 (build_inputs_with_special_tokens
    # is gone); ours gives 0, the value bert_score documents for an empty candidate.
    scores = scorer.score(["", "hello"], ["hello", "hello"])
    assert scores.f1[0] == 0.0 and math.isclose(scores.f1[1], 1.0, abs_tol=1e-5)


def test_layer_out_of_range_names_the_param(scorer):
    with pytest.raises(ConfigError, match=r"eval\.bertscore_layers: 6 .* has 2"):
        BertScorer(scorer.model, scorer.tok, num_layers=6)
