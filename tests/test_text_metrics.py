"""Unit tests for rlhf_lab.text_metrics and the text/* reward components."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from rlhf_lab import reward_components
from rlhf_lab.config import Params
from rlhf_lab.reward_components import RewardFn
from rlhf_lab.tasks.text import length_score
from rlhf_lab.text_metrics import (
    bleu,
    bleu_n,
    distinct_n,
    mean_length,
    meteor,
    meteor_scores,
    rouge_l,
    rouge_l_scores,
    sentence_bleu,
)

HYP = "the cat sat on the mat"
REF = "the cat is on the mat"
# Clipped n-gram precisions of HYP against REF, by hand (both 6 tokens, so BP = 1):
#   unigrams: the x2, cat, on, mat match, sat does not          -> 5/6
#   bigrams:  "the cat", "on the", "the mat" of 5               -> 3/5
BLEU1 = 5 / 6
BLEU2 = math.sqrt(5 / 6 * 3 / 5)


def component(name: str) -> RewardFn:
    """The component ``name`` from the one factory, as PPO and evaluate build it (length band
    [5, 60] here, the band the hand-computed cases below use)."""
    return reward_components.build([name], Params(reward={"length_band": [5, 60]}))[name]


# ---------------------------------------------------------------- distinct-n


def test_distinct_n_by_hand() -> None:
    texts = ["the cat sat", "The cat ran", ""]
    # unigrams: the cat sat the cat ran -> 4 unique of 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 unique of 4
    assert distinct_n(texts, 2) == 0.75
    assert distinct_n(texts, 3) == 1.0
    assert distinct_n(texts, 4) == 0.0  # no 4-grams at all


def test_distinct_n_does_not_cross_text_boundaries() -> None:
    # Within texts: (a b), (a b) -> 1/2. Joined it would be (a b)(b a)(a b) -> 2/3.
    assert distinct_n(["a b", "a b"], 2) == 0.5


def test_distinct_n_empty_corpus() -> None:
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


# ---------------------------------------------------------------- BLEU


def test_bleu_identical_is_100() -> None:
    hyps = ["the quick brown fox jumps", "over the lazy dog today"]
    assert bleu(hyps, hyps) == pytest.approx(100.0)
    assert bleu(hyps, hyps) <= 100.0


def test_bleu_matches_sacrebleu() -> None:
    hyps = [HYP, "a recommendation: watch Heat (1995), it is great", "no idea"]
    refs = [REF, "you might like Heat (1995), a great film", "I have no idea, sorry"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    for n in (1, 2, 4):
        expected = sacrebleu.BLEU(max_ngram_order=n).corpus_score(hyps, [refs]).score
        assert bleu_n(hyps, refs, n) == pytest.approx(expected)


def test_bleu_n_by_hand() -> None:
    assert bleu_n([HYP], [REF], 1) == pytest.approx(100 * BLEU1)
    assert bleu_n([HYP], [REF], 2) == pytest.approx(100 * BLEU2)


def test_bleu_rejects_mismatched_or_missing_references() -> None:
    with pytest.raises(ValueError):
        bleu([HYP, HYP], [REF])
    with pytest.raises(TypeError):
        bleu([HYP], [None])  # type: ignore[list-item]


def test_sentence_bleu() -> None:
    assert sentence_bleu(HYP, HYP) == 1.0
    assert sentence_bleu(HYP, REF, n=2) == pytest.approx(BLEU2)
    expected = sacrebleu.sentence_bleu(HYP, [REF]).score / 100
    assert sentence_bleu(HYP, REF) == pytest.approx(expected)
    assert 0.0 < sentence_bleu(HYP, REF) < sentence_bleu(HYP, REF, n=2) < 1.0
    assert sentence_bleu("", REF) == 0.0
    assert sentence_bleu(HYP, "  ") == 0.0
    assert sentence_bleu("completely unrelated words", REF) == 0.0


# ---------------------------------------------------------------- ROUGE-L, length


def test_rouge_l_by_hand() -> None:
    # LCS("the cat sat on the mat", "the cat lay on a mat") = "the cat on mat": 4 of 6 tokens
    # each side, so P = R = F1 = 2/3.
    hyps = ["the cat sat on the mat", "hello there"]
    refs = ["the cat lay on a mat", "Hello there!"]  # rouge_score lowercases, drops punctuation
    assert rouge_l_scores(hyps, refs) == pytest.approx([2 / 3, 1.0])
    assert rouge_l(hyps, refs) == pytest.approx((2 / 3 + 1.0) / 2)
    assert rouge_l([], []) == 0.0
    assert rouge_l_scores([""], ["x"]) == [0.0]


def test_mean_length() -> None:
    assert mean_length(["a b c", "", "d  e"]) == pytest.approx(5 / 3)
    assert mean_length([]) == 0.0


# ---------------------------------------------------------------- text/* components


def test_text_components_are_registered() -> None:
    for name in ("text/bleu", "text/bleu2", "text/distinct", "text/length"):
        assert callable(component(name))


def test_text_bleu_component() -> None:
    fn = component("text/bleu")
    rows = [{"reference": HYP}, {"reference": None}, {"reference": ""}, {}, {"reference": REF}]
    scores = fn([HYP, HYP, HYP, HYP, HYP], rows)
    assert scores[:4] == [1.0, 0.0, 0.0, 0.0]
    assert scores[4] == pytest.approx(sacrebleu.sentence_bleu(HYP, [REF]).score / 100)


def test_text_bleu2_component() -> None:
    fn = component("text/bleu2")
    assert fn([HYP, HYP], [{"reference": REF}, {"reference": None}]) == pytest.approx([BLEU2, 0])


def test_text_distinct_component() -> None:
    fn = component("text/distinct")
    replies = ["a a a", "a b c", "", "A a", "one"]
    # "a a a": distinct-1 = 1/3, distinct-2 = 1/2 -> 5/12
    # "A a":   lowercased, distinct-1 = 1/2, distinct-2 = 1/1 -> 3/4
    # "one":   distinct-1 = 1, no bigrams -> 1/2
    expected = [5 / 12, 1.0, 0.0, 0.75, 0.5]
    assert fn(replies, [{}] * len(replies)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n_tokens", "expected"),
    [(0, 0.0), (2, 0.4), (5, 1.0), (30, 1.0), (60, 1.0), (90, 0.5), (120, 0.0), (500, 0.0)],
)
def test_length_score_band_5_60(n_tokens: int, expected: float) -> None:
    assert length_score(n_tokens, 5, 60) == pytest.approx(expected)


def test_length_score_custom_band() -> None:
    assert length_score(1, lo=2, hi=4) == 0.5
    assert length_score(6, lo=2, hi=4) == 0.5
    assert length_score(0, lo=0, hi=4) == 1.0
    with pytest.raises(ValueError):
        length_score(3, lo=5, hi=4)


def test_text_length_component() -> None:
    fn = component("text/length")
    replies = ["one two three", " ".join(["w"] * 30), "", " ".join(["w"] * 90)]
    assert fn(replies, [{}] * len(replies)) == pytest.approx([0.6, 1.0, 0.0, 0.5])


# ---------------------------------------------------------------- METEOR


def test_meteor_by_hand_exact_and_stem() -> None:
    # "the cats sat on the mat" vs "the cat is on the mat": exact the, on, the, mat; stem
    # cats -> cat; "sat" unmatched. 5 matches of 6 words each side: P = R = 5/6, so
    # Fmean = 5/6. Aligned (hyp, ref) positions (0,0)(1,1) | (3,3)(4,4)(5,5): 2 chunks,
    # fragmentation 2/5, penalty 0.5 * (2/5)^3 = 0.032 -> 5/6 * 0.968.
    got = meteor_scores(["the cats sat on the mat"], ["the cat is on the mat"])
    assert got == [pytest.approx(5 / 6 * (1 - 0.5 * 0.4**3))]


def test_meteor_has_no_synonyms_and_scores_empty_sides_zero() -> None:
    # "big" / "large" are WordNet synonyms; without WordNet only "dog" matches:
    # P = R = 1/2, one chunk of one match -> penalty 0.5 * 1^3 -> 0.25.
    assert meteor_scores(["big dog"], ["large dog"]) == [pytest.approx(0.25)]
    assert meteor_scores(["", "a"], ["a", " "]) == [0.0, 0.0]
    assert meteor(["A b."], ["a b."]) == pytest.approx(1 - 0.5 / 27)  # lowercased, "." a token
    assert meteor([], []) == 0.0
    with pytest.raises(ValueError):
        meteor_scores(["a"], [])
