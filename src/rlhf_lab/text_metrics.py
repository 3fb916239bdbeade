"""Text metrics for evaluation and per-reply rewards: BLEU, ROUGE-L, METEOR, distinct-n, length.

BLEU is sacrebleu's (default ``13a`` tokenisation, case-sensitive), so corpus numbers are the
standard, comparable ones; ROUGE-L is Google's ``rouge_score``. METEOR is NLTK's
``meteor_score`` with exact and Porter-stem matching only, no WordNet synonyms
(:func:`meteor_scores` says why). Distinct-n and length count
whitespace tokens, lowercased for distinct-n (Li et al. 2016, "A Diversity-Promoting
Objective Function for Neural Conversation Models").

``hyps[i]`` is scored against the single reference ``refs[i]``; rows without a reference are
the caller's to drop (the per-reply reward components in ``rlhf_lab.tasks.text`` score them 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from nltk.stem.porter import PorterStemmer
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU


def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")
    for i, ref in enumerate(refs):
        if not isinstance(ref, str):
            raise TypeError(f"reference {i} is {type(ref).__name__}, expected str")


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n over a corpus: unique n-grams / total n-grams.

    Tokens are whitespace-split and lowercased; n-grams never cross text boundaries, and the
    unique count is over the whole corpus (Li et al. 2016). Returns 0.0 when there are no
    n-grams at all (empty corpus or every text shorter than ``n`` tokens).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(text.lower().split(), n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


@lru_cache(maxsize=16)
def _corpus_bleu_metric(max_ngram_order: int) -> BLEU:
    return BLEU(max_ngram_order=max_ngram_order)


@lru_cache(maxsize=16)
def _sentence_bleu_metric(max_ngram_order: int) -> BLEU:
    # The settings of sacrebleu.sentence_bleu: exponential smoothing ("method 3" of Chen &
    # Cherry 2014) and effective order, so a short reply is not zeroed by a missing 4-gram.
    return BLEU(max_ngram_order=max_ngram_order, smooth_method="exp", effective_order=True)


def bleu_n(hyps: Sequence[str], refs: Sequence[str], n: int) -> float:
    """Corpus BLEU-``n`` (0–100): sacrebleu's ``BLEU(max_ngram_order=n)``.

    ``n=4`` is standard BLEU; ``n=1``/``n=2`` are the BLEU-1/2 that dialogue papers report.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_pairs(hyps, refs)
    if not hyps:
        return 0.0
    score = _corpus_bleu_metric(n).corpus_score(list(hyps), [list(refs)]).score
    return min(100.0, float(score))  # sacrebleu can return 100.00000000000004


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (0–100), identical to ``sacrebleu.corpus_bleu(hyps, [refs]).score``."""
    return bleu_n(hyps, refs, 4)


def sentence_bleu(hyp: str, ref: str, n: int = 4) -> float:
    """Smoothed sentence BLEU-``n`` of one reply against one reference, in [0, 1].

    Uses sacrebleu's sentence-level settings (exp smoothing, effective order), divided by 100.
    Meant as a per-reply reward; report corpus BLEU (:func:`bleu`) in evaluation, since
    averaged sentence BLEU is not BLEU. An empty hypothesis or reference scores 0.0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not hyp.strip() or not ref.strip():
        return 0.0
    score = _sentence_bleu_metric(n).sentence_score(hyp, [ref]).score / 100.0
    return min(1.0, max(0.0, float(score)))


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_scores(
    hyps: Sequence[str], refs: Sequence[str], use_stemmer: bool = False
) -> list[float]:
    """ROUGE-L F1 of each hypothesis against its reference (``rouge_score``), each in [0, 1].

    ``rouge_score`` lowercases and keeps alphanumeric tokens; an empty side scores 0.0.
    """
    _check_pairs(hyps, refs)
    scorer = _rouge_scorer(use_stemmer)
    # RougeScorer.score(target, prediction): the reference comes first.
    return [
        float(scorer.score(ref, hyp)["rougeL"].fmeasure)
        for hyp, ref in zip(hyps, refs, strict=True)
    ]


def rouge_l(hyps: Sequence[str], refs: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F1 over the pairs, in [0, 1]; 0.0 for no pairs.

    See :func:`rouge_l_scores` for the per-item values (for paired tests and win rates).
    """
    scores = rouge_l_scores(hyps, refs, use_stemmer=use_stemmer)
    return sum(scores) / len(scores) if scores else 0.0


class _NoSynonyms:
    """Stands in for NLTK's WordNet reader in METEOR's third matching stage: no synonyms.

    NLTK's WordNet corpus is a separate download (``nltk.download("wordnet")``) that cannot
    happen offline, and no PyPI package ships it; ``single_meteor_score`` takes any object
    with ``synsets(word)``, so this one keeps NLTK's exact and stem stages and its scoring.
    """

    @staticmethod
    def synsets(word: str) -> list[object]:
        return []


_METEOR_TOKEN = re.compile(r"\w+|[^\w\s]")
_STEMMER = PorterStemmer()


def meteor_tokens(text: str) -> list[str]:
    """Words and single punctuation marks, as NLTK's ``word_tokenize`` splits plain prose."""
    return _METEOR_TOKEN.findall(text)


def meteor_scores(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """METEOR of each hypothesis against its reference, each in [0, 1]: **exact + stem, no
    WordNet synonyms**.

    NLTK's ``single_meteor_score`` (Lavie & Agarwal 2007; alpha 0.9, beta 3, gamma 0.5,
    lowercased) with its synonym stage fed no synonyms (:class:`_NoSynonyms`), so words
    match only exactly or through the Porter stem. The WordNet METEOR that HF ``evaluate``
    reports can only find more matches (its synonym stage runs after these two), so it is
    usually a little higher than this one on the same pairs. An empty side scores 0.0.
    """
    _check_pairs(hyps, refs)
    return [
        float(
            single_meteor_score(
                meteor_tokens(ref), meteor_tokens(hyp), stemmer=_STEMMER, wordnet=_NoSynonyms()
            )
        )
        if hyp.strip() and ref.strip()
        else 0.0
        for hyp, ref in zip(hyps, refs, strict=True)
    ]


def meteor(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean METEOR (exact + stem, :func:`meteor_scores`) over the pairs; 0.0 for no pairs."""
    scores = meteor_scores(hyps, refs)
    return sum(scores) / len(scores) if scores else 0.0


def mean_length(texts: Sequence[str]) -> float:
    """Mean number of whitespace tokens per text; 0.0 for no texts."""
    if not texts:
        return 0.0
    return sum(len(t.split()) for t in texts) / len(texts)
