"""Judge preference rows: score every reply, label candidate rows, measure agreement.

This is score_with_llm's library half. Every chosen, rejected and candidate reply is rated
on the task's rubric in one :meth:`Judge.score_detailed` call (one batching and dedup pass
over all splits). Rows then become scored rows (DESIGN.md):

- a labelled pair (``label_source`` human or reference) keeps its label and gains
  ``scores: {"chosen": {dim..., "overall"}, "rejected": {...}}`` and ``judge: {model,
  rubric_sha}``; a failed item is ``null`` there and the row is kept;
- a candidate row (``data.pairs: judge``) becomes the pair (best, worst) by ``overall``, with
  ``label_source: "judge"`` and every candidate's scores in ``candidate_scores``; a near-tie
  or a row with fewer than two scored candidates is dropped and counted.

A score that is the judge's neutral fallback (``base.neutral``: no rating even when re-asked)
is written like any other, and the row lists it in ``fallback`` (``["chosen/helpfulness"]``);
such replies are left out of agreement and cannot be picked as a judge label, and each item
is a line of ``failures.jsonl`` with its ``fallback`` value.

Agreement (how far the judge can be trusted): over human- and reference-labelled pairs, how
often ``overall(chosen) > overall(rejected)`` (ties 1/2), per label source and per dimension,
next to the "longer reply wins" baseline on the same pairs.

Metrics (``metrics/score_with_llm.json``; an "item" is one distinct judge question, a reply on
one dimension or one order of a pairwise comparison):

=============================== ==============================================================
``judge/model``, ``/rubric_sha`` the judge and the rubric version that produced the scores
``judge/items``                 distinct items; ``items_scored`` = answered (``items_cached``
                                from the cache + ``items_new`` by the judge in this run)
``judge/failures[/<kind>]``     failed items, in total and per kind (``base.FAILURE_KINDS``)
``judge/fallback[/<kind>]``     items given the neutral score, per deterministic kind
``judge/reasked``               items rated only when asked again for a bare answer
``judge/cache_skipped_lines``   cache lines that could not be read back (their items re-asked)
``judge/items_per_s``           judge throughput over the items it was asked in this run
``judge/rating_mass``           mean probability on valid answer tokens (format-following)
``judge/forced_min``            crs replies whose ``recommendation`` was forced to 1 (no movie)
``judge/ties_dropped``          candidate rows dropped as near-ties (``unscored_dropped``:
                                fewer than two candidates scored; ``pairs_labelled``: kept)
``judge/agreement``             agreement with human + reference labels (``_pairs``: how many);
                                ``/human``, ``/reference`` per source, ``_dim/<d>`` per
                                dimension, ``_pairwise`` for the head-to-head judgement
``judge/length_baseline``       "longer reply wins" on the same pairs
``judge/mean/{chosen,rejected}`` mean ``overall`` of the chosen / rejected replies
=============================== ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.judge.base import DETERMINISTIC_KINDS, FAILURE_KINDS, PAIRWISE, Rating
from rlhf_lab.judge.label import TIE, agreement, pick_pair
from rlhf_lab.judge.rows import is_candidate_row, with_prompt_meta
from rlhf_lab.judge.scorer import OVERALL, Judge, ReplyScore

LABEL_SOURCES_REPORTED = ("human", "reference")
"""Label sources whose agreement is reported (judge labels agree with the judge by design)."""


@dataclass
class ScoredPreference:
    """Scored rows per split, one record per failed item, and the metrics."""

    splits: dict[str, list[dict[str, Any]]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Item:
    split: str
    index: int
    name: str
    text: str


def _failure(split: str, row: Mapping[str, Any], reply: str, dim: str, r: Rating) -> dict:
    out = {
        "split": split,
        "id": row["id"],
        "reply": reply,
        "dim": dim,
        "kind": r.fallback or r.error,
        "detail": r.detail,
    }
    if r.fallback:
        out["fallback"] = r.value
    return out


def unscored(splits: Mapping[str, list[dict[str, Any]]]) -> ScoredPreference:
    """``judge.backend: none``: the rows as they are, with ``scores`` and ``judge`` null."""
    out = {
        s: [{**row, "scores": None, "judge": None} for row in rows] for s, rows in splits.items()
    }
    n = sum(len(r) for r in out.values())
    return ScoredPreference(
        out, metrics={"judge/backend": "none", "judge/rows": n, "judge/rows_out": n}
    )


def score_preference(
    judge: Judge,
    splits: Mapping[str, list[dict[str, Any]]],
    *,
    min_margin: float,
    pairwise: bool = False,
    prompt_meta: Mapping[str, dict[str, Any]] | None = None,
) -> ScoredPreference:
    """Score, label and measure ``splits`` (module docstring)."""
    metas = dict(prompt_meta or {})
    judged = {s: [with_prompt_meta(row, metas) for row in rows] for s, rows in splits.items()}
    items: list[_Item] = []
    for split, rows in splits.items():
        for i, row in enumerate(rows):
            if is_candidate_row(row):
                for j, text in enumerate(row["candidates"]):
                    items.append(_Item(split, i, f"candidates[{j}]", text))
            else:
                items.append(_Item(split, i, "chosen", row["chosen"]))
                items.append(_Item(split, i, "rejected", row["rejected"]))
    results = judge.score_detailed(
        [judged[it.split][it.index] for it in items], [it.text for it in items]
    )
    by_item = {(it.split, it.index, it.name): res for it, res in zip(items, results, strict=True)}

    failures = [
        _failure(it.split, splits[it.split][it.index], it.name, dim, rating)
        for it, res in zip(items, results, strict=True)
        for dim, rating in {**res.failures, **res.fallbacks}.items()
    ]
    info = {"model": judge.model_name, "rubric_sha": judge.rubric_sha}
    counts = {"ties_dropped": 0, "unscored_dropped": 0, "pairs_labelled": 0}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, rows in splits.items():
        kept = out.setdefault(split, [])
        for i, row in enumerate(rows):
            if not is_candidate_row(row):
                res = {n: by_item[(split, i, n)] for n in ("chosen", "rejected")}
                scores = {n: r.scores for n, r in res.items()}
                kept.append({**row, "scores": scores, "judge": info, **_fallback_flag(res)})
                continue
            cand = [by_item[(split, i, f"candidates[{j}]")] for j in range(len(row["candidates"]))]
            # A neutral fallback is not the judge's opinion: it must not decide a label.
            overalls = [None if c.fallbacks else c.scores[OVERALL] for c in cand]
            pick = pick_pair(overalls, min_margin)
            if isinstance(pick, str):
                counts["ties_dropped" if pick == TIE else "unscored_dropped"] += 1
                continue
            best, worst = pick
            counts["pairs_labelled"] += 1
            kept.append(
                {
                    **row,
                    "chosen": row["candidates"][best],
                    "rejected": row["candidates"][worst],
                    "label_source": "judge",
                    "scores": {"chosen": cand[best].scores, "rejected": cand[worst].scores},
                    "candidate_scores": [c.scores for c in cand],
                    "judge": info,
                    **_fallback_flag({f"candidates[{j}]": c for j, c in enumerate(cand)}),
                }
            )

    if pairwise:
        flat = [(s, i, row) for s, rows in out.items() for i, row in enumerate(rows)]
        prefs = judge.compare(
            [with_prompt_meta(row, metas) for _, _, row in flat],
            [row["chosen"] for _, _, row in flat],
            [row["rejected"] for _, _, row in flat],
        )
        for (split, _, row), pref in zip(flat, prefs, strict=True):
            row["pairwise"] = {"p_chosen": pref.value}
            if pref.fallback:
                row["pairwise"]["fallback"] = pref.fallback
            if not pref.ok or pref.fallback:
                failures.append(_failure(split, row, "chosen-vs-rejected", PAIRWISE, pref))

    metrics = _metrics(judge, splits, out, results, counts, pairwise)
    return ScoredPreference(out, failures, metrics)


def _fallback_flag(replies: Mapping[str, ReplyScore]) -> dict[str, list[str]]:
    """``{"fallback": ["chosen/helpfulness", ...]}`` when any score is the neutral fallback."""
    flagged = [f"{name}/{dim}" for name, r in replies.items() for dim in r.fallbacks]
    return {"fallback": flagged} if flagged else {}


def _metrics(
    judge: Judge,
    splits: Mapping[str, list[dict[str, Any]]],
    out: Mapping[str, list[dict[str, Any]]],
    results: list[Any],
    counts: dict[str, int],
    pairwise: bool,
) -> dict[str, Any]:
    st = judge.stats
    m: dict[str, Any] = {
        "judge/model": judge.model_name,
        "judge/rubric_sha": judge.rubric_sha,
        "judge/task": judge.task,
        "judge/items": st.items,
        "judge/items_scored": st.cached + st.scored,
        "judge/items_cached": st.cached,
        "judge/items_new": st.scored,
        "judge/failures": sum(st.failures.values()),
        **{f"judge/failures/{k}": st.failures.get(k, 0) for k in FAILURE_KINDS},
        "judge/fallback": sum(st.fallbacks.values()),
        **{f"judge/fallback/{k}": st.fallbacks.get(k, 0) for k in DETERMINISTIC_KINDS},
        "judge/reasked": st.reasked,
        "judge/cache_skipped_lines": judge.cache.skipped_lines if judge.cache else 0,
        "judge/items_per_s": st.items_per_s,
        "judge/seconds": st.seconds,
        "judge/rating_mass": st.rating_mass,
        "judge/replies": len(results),
        "judge/replies_unscored": sum(r.scores[OVERALL] is None for r in results),
        "judge/forced_min": sum(bool(r.forced) for r in results),
        "judge/rows": sum(len(r) for r in splits.values()),
        "judge/rows_out": sum(len(r) for r in out.values()),
        **{f"judge/{k}": v for k, v in counts.items()},
    }
    labelled = [r for rows in out.values() for r in rows if r["label_source"] != "judge"]
    # Agreement and the length baseline on the same pairs: those the judge scored in full,
    # without a neutral fallback (a made-up score would pull agreement towards 1/2).
    both = [
        r
        for r in labelled
        if r["scores"]["chosen"][OVERALL] is not None
        and r["scores"]["rejected"][OVERALL] is not None
        and not r.get("fallback")
    ]
    m["judge/agreement"], m["judge/agreement_pairs"] = agreement(
        [(r["scores"]["chosen"][OVERALL], r["scores"]["rejected"][OVERALL]) for r in both]
    )
    for source in LABEL_SOURCES_REPORTED:
        sel = [r for r in both if r["label_source"] == source]
        m[f"judge/agreement/{source}"] = agreement(
            [(r["scores"]["chosen"][OVERALL], r["scores"]["rejected"][OVERALL]) for r in sel]
        )[0]
    for dim in judge.dims:
        m[f"judge/agreement_dim/{dim}"] = agreement(
            [(r["scores"]["chosen"][dim], r["scores"]["rejected"][dim]) for r in both]
        )[0]
    m["judge/length_baseline"] = agreement([(len(r["chosen"]), len(r["rejected"])) for r in both])[
        0
    ]
    if pairwise:
        m["judge/agreement_pairwise"] = agreement(
            [(r["pairwise"]["p_chosen"], 0.5) for r in labelled if "fallback" not in r["pairwise"]]
        )[0]
    all_scores = [r["scores"] for rows in out.values() for r in rows]
    for name in ("chosen", "rejected"):
        vals = [s[name][OVERALL] for s in all_scores if s[name][OVERALL] is not None]
        m[f"judge/mean/{name}"] = sum(vals) / len(vals) if vals else None
    return m
