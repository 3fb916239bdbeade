"""The crs recommender against its baselines, by the CRSLab protocol, on the same turns.

:func:`compare` ranks every recommender turn that suggests a movie with each system, computes
CRSLab's metrics (:mod:`rlhf_lab.tasks.crs.ranking`) under ``<system>/<metric>`` keys, and
tests the first system against each other one on per-turn hit@10 (the turn's share of gold
movies in the top 10) with the project's paired tests (:func:`stats.paired_test`'s Wilcoxon
signed-rank and :func:`stats.paired_bootstrap_pvalue`) and a 95% bootstrap CI of the gain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlhf_lab.evaluation import stats
from rlhf_lab.tasks.crs import ranking
from rlhf_lab.tasks.crs.recommender import Ranker, RecTurn, recommendation_turns, top_k

PAIRED_METRIC = "recall@10"
"""The per-turn metric the paired tests compare."""


def rankings(ranker: Ranker, turns: Sequence[RecTurn]) -> list[list[str]]:
    """Each turn's top :data:`ranking.KS`-max movies by ``ranker``."""
    k = max(ranking.KS)
    return [top_k(ranker, t, k) for t in turns]


def compare(
    systems: Mapping[str, Ranker], turns: Sequence[RecTurn], seed: int = 0
) -> tuple[dict[str, float], dict[str, list[list[str]]]]:
    """Metrics of every system on ``turns``' recommendation turns, and the first system's paired
    tests against each other one: ``(flat metrics, {system: rankings})``.

    Keys: ``<system>/recall@1`` ... ``<system>/cases``; ``<first>_vs_<other>/diff``,
    ``.../ci_low``, ``.../ci_high``, ``.../wilcoxon_p``, ``.../bootstrap_p`` (per-turn hit@10).
    """
    rec_turns = recommendation_turns(turns)
    golds = [t.gold for t in rec_turns]
    out: dict[str, float] = {}
    ranked: dict[str, list[list[str]]] = {}
    hits: dict[str, list[float]] = {}
    for name, ranker in systems.items():
        ranked[name] = rankings(ranker, rec_turns)
        for key, value in ranking.evaluate(ranked[name], golds).items():
            out[f"{name}/{key}"] = value
        hits[name] = [m[PAIRED_METRIC] for m in ranking.per_turn(ranked[name], golds)]
    first, *others = list(systems)
    for other in others:
        prefix = f"{first}_vs_{other}"
        if len(rec_turns) < 2:
            continue
        diff = [a - b for a, b in zip(hits[first], hits[other], strict=True)]
        mean, lo, hi = stats.mean_ci(diff, seed=seed)
        out[f"{prefix}/diff"] = mean
        out[f"{prefix}/ci_low"] = lo
        out[f"{prefix}/ci_high"] = hi
        out[f"{prefix}/wilcoxon_p"] = stats.paired_test(hits[first], hits[other])["wilcoxon_p"]
        out[f"{prefix}/bootstrap_p"] = stats.paired_bootstrap_pvalue(
            hits[first], hits[other], seed=seed
        )
    return out, ranked
