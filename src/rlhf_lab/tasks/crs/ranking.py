"""Ranking metrics of a conversational recommender, by the CRSLab protocol.

CRSLab (Zhou et al. 2021, ``crslab/evaluator/rec.py`` and ``crslab/data/dataset/redial``)
evaluates a recommender turn once per movie it suggests: every ``(turn, gold movie)`` pair is
one case, ranked against the whole catalogue, and

- Recall@k of a case is 1 when the gold movie is in the top k, else 0;
- NDCG@k of a case is ``1 / log2(rank + 2)`` (``rank`` 0-based) when it is in the top k, else
  0: with a single relevant item the ideal DCG is 1;
- MRR@k of a case is ``1 / (rank + 1)`` when it is in the top k, else 0.

Each metric is the mean over cases. Paired tests need one number per turn, so
:func:`per_turn` also gives each turn's mean over its gold movies (a turn with one gold
movie, the usual case, counts exactly as CRSLab's case).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

KS = (1, 10, 50)
"""The cut-offs CRSLab (and ECR, UniCRS) report Recall at."""
NDCG_KS = (10, 50)
"""The cut-offs NDCG and MRR are reported at."""
HEADLINE = ("recall@1", "recall@10", "recall@50", "ndcg@10")
"""The metrics a summary shows (every metric of :func:`case_metrics` is written)."""


def gold_rank(ranking: Sequence[str], gold: str) -> int | None:
    """0-based position of ``gold`` in ``ranking`` (best first), or None when absent."""
    try:
        return list(ranking).index(gold)
    except ValueError:
        return None


def recall_at(rank: int | None, k: int) -> float:
    """1.0 when the gold movie is ranked in the top ``k`` (0-based ``rank``), else 0.0."""
    return 1.0 if rank is not None and rank < k else 0.0


def ndcg_at(rank: int | None, k: int) -> float:
    """``1 / log2(rank + 2)`` in the top ``k`` (one relevant item: ideal DCG = 1), else 0."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


def mrr_at(rank: int | None, k: int) -> float:
    """``1 / (rank + 1)`` in the top ``k``, else 0."""
    return 1.0 / (rank + 1) if rank is not None and rank < k else 0.0


def case_metrics(rank: int | None) -> dict[str, float]:
    """Every metric of one ``(turn, gold movie)`` case: ``recall@k``, ``ndcg@k``, ``mrr@k``."""
    out = {f"recall@{k}": recall_at(rank, k) for k in KS}
    out |= {f"ndcg@{k}": ndcg_at(rank, k) for k in NDCG_KS}
    out |= {f"mrr@{k}": mrr_at(rank, k) for k in NDCG_KS}
    return out


def per_turn(rankings: Sequence[Sequence[str]], golds: Sequence[Iterable[str]]) -> list[dict]:
    """One dict of metrics per turn: the mean of :func:`case_metrics` over its gold movies.

    Turns with no gold movie are no recommendation and are not cases: they get an empty dict.
    """
    if len(rankings) != len(golds):
        raise ValueError(f"{len(rankings)} rankings for {len(golds)} gold sets")
    out: list[dict] = []
    for ranking, gold in zip(rankings, golds, strict=True):
        cases = [case_metrics(gold_rank(ranking, g)) for g in dict.fromkeys(gold)]
        out.append(
            {key: sum(c[key] for c in cases) / len(cases) for key in cases[0]} if cases else {}
        )
    return out


def evaluate(rankings: Sequence[Sequence[str]], golds: Sequence[Iterable[str]]) -> dict[str, float]:
    """CRSLab's numbers: each metric's mean over every ``(turn, gold movie)`` case, plus
    ``cases`` (their count) and ``turns`` (turns with a gold movie)."""
    golds = [list(dict.fromkeys(g)) for g in golds]
    if len(rankings) != len(golds):
        raise ValueError(f"{len(rankings)} rankings for {len(golds)} gold sets")
    cases = [
        case_metrics(gold_rank(ranking, g))
        for ranking, gold in zip(rankings, golds, strict=True)
        for g in gold
    ]
    keys = list(case_metrics(None))
    out = {key: (sum(c[key] for c in cases) / len(cases) if cases else 0.0) for key in keys}
    out["cases"] = float(len(cases))
    out["turns"] = float(sum(1 for g in golds if g))
    return out
