"""score_with_llm: the judge scores every candidate reply on the task's rubric.

    rlhf-lab score_with_llm --params params.yaml

Reads ``task``, ``judge``, ``data.pairs`` (and ``data.catalogue`` for crs); reads
``data/preference/{train,valid,test}.jsonl`` and ``data/grounded/*.jsonl`` (train_recommender:
the prompts the policy is given, with their task meta); every pair is scored on the prompt of
its id there (:func:`rlhf_lab.data.policy_prompts.on_policy_prompts`: for crs, grounded in the
recommender's candidates, so the reward model and the critic learn from the prompts PPO samples
from; for other tasks the same prompt, unchanged); writes ``data/scored/{split}.jsonl`` (scored
rows; judge-labelled pairs when ``data.pairs: judge``), ``data/scored/failures.jsonl`` (one line
per failed judge item, and per item given the neutral fallback) and
``metrics/score_with_llm.json``. Answers are cached under ``judge.cache_dir``: a re-run, or a
run resumed after a kill, asks the judge only for what is missing. When more than
``judge.max_failure_fraction`` of the items fail, or more than ``judge.max_fallback_fraction``
get the neutral score (the judge gave no usable rating even when re-asked: a re-run would get
the same answer), the outputs are still written and the stage exits with code 2; the message
says which kinds failed and what helps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params
from rlhf_lab.data.policy_prompts import on_policy_prompts
from rlhf_lab.errors import ConfigError, RlhfLabError
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, failed_output, stage_outputs, write_jsonl
from rlhf_lab.judge import build_judge
from rlhf_lab.judge.base import FAILURE_CLASS
from rlhf_lab.judge.preference import ScoredPreference, score_preference, unscored
from rlhf_lab.judge.rows import is_candidate_row, load_preference, load_prompt_rows
from rlhf_lab.tasks.registry import get_task

PREFERENCE_DIR = Path("data/preference")
PROMPTS_DIR = Path("data/grounded")
SCORED_DIR = Path("data/scored")
METRICS = Path("metrics/score_with_llm.json")


class JudgeFailures(RlhfLabError):
    """More judge items failed than judge.max_failure_fraction allows."""


def main(params: Params, **_: Any) -> None:
    cfg = params.judge
    prompts = load_prompt_rows(PROMPTS_DIR)
    splits = {
        split: on_policy_prompts(rows, prompts.values())
        for split, rows in load_preference(
            PREFERENCE_DIR, require_candidates=params.data.pairs == "judge"
        ).items()
    }
    if cfg.backend == "none":
        if any(is_candidate_row(r) for rows in splits.values() for r in rows):
            raise ConfigError(
                "params.yaml: judge.backend: 'none' cannot label candidate rows "
                "(data.pairs: judge needs backend local or openai)"
            )
        result = unscored(splits)
    else:
        context = get_task(params.task.name).load_context(params)  # crs: data.catalogue
        judge = build_judge(
            cfg, params.task.name, progress=True, context=context, neutral_fallback=True
        )
        result = score_preference(
            judge,
            splits,
            min_margin=cfg.min_margin,
            pairwise=cfg.pairwise,
            prompt_meta={k: r.get("meta") or {} for k, r in prompts.items()},
        )
        result.metrics["judge/backend"] = cfg.backend
    _summary(result, cfg.backend)
    try:
        _check_failures(result, cfg.max_failure_fraction, cfg.max_fallback_fraction)
    except JudgeFailures:
        # A failed run changes none of its outputs; what it scored, and why items failed, go
        # where the error message points (the judge cache keeps the scores for the re-run).
        _write(
            failed_output("score_with_llm", SCORED_DIR),
            failed_output("score_with_llm", METRICS),
            result,
        )
        raise
    with stage_outputs(SCORED_DIR, full_path(METRICS), METRICS):
        _write(SCORED_DIR, METRICS, result)


def _write(scored_dir: Path, metrics: Path, result: ScoredPreference) -> None:
    with atomic_dir(scored_dir) as tmp:
        for split, rows in result.splits.items():
            write_jsonl(tmp / f"{split}.jsonl", rows)
        write_jsonl(tmp / "failures.jsonl", result.failures)
    write_metrics(metrics, result.metrics)


def _summary(result: ScoredPreference, backend: str) -> None:
    m = result.metrics
    rows: dict[str, Any] = {
        "rows in → out": f"{m['judge/rows']} → {m['judge/rows_out']}",
        "scored": ", ".join(f"{s}: {len(r)}" for s, r in result.splits.items()),
    }
    if backend != "none":
        fails = {k.rsplit("/", 1)[1]: v for k, v in m.items() if k.startswith("judge/failures/")}
        rows.update(
            {
                "judge": f"{backend}: {m['judge/model']}",
                "rubric sha": m["judge/rubric_sha"][:16],
                "items scored / total": f"{m['judge/items_scored']} / {m['judge/items']}",
                "from cache / new": f"{m['judge/items_cached']} / {m['judge/items_new']}",
                "failures": ", ".join(f"{k} {v}" for k, v in fails.items() if v) or "0",
                "neutral fallback / re-asked": f"{m['judge/fallback']} / {m['judge/reasked']}",
                "items/s": m["judge/items_per_s"] if m["judge/items_per_s"] else "—",
                "ties dropped": m["judge/ties_dropped"],
                "agreement (pairs)": (
                    f"{m['judge/agreement']:.3f} ({m['judge/agreement_pairs']})"
                    if m["judge/agreement"] is not None
                    else "—"
                ),
                "longer-reply baseline": m["judge/length_baseline"] or "—",
            }
        )
    rows["outputs"] = f"{SCORED_DIR}/, {METRICS}"
    ui.summary("score_with_llm", rows)


UNCHANGED = f"{SCORED_DIR}/ and {METRICS} are unchanged"
"""A failed run replaces none of the last good run's outputs."""

ADVICE = {
    "transient": "a re-run scores only the missing items",
    "request": "the server refused the request: check judge.base_url, judge.model and the key",
    "rate_limit": "the server is rate limiting (HTTP 429): lower judge.concurrency or raise "
    "judge.retry_backoff_s / judge.max_retries; a re-run scores only the missing items",
    "deterministic": "a re-run gets the same answers: use a stronger judge",
}
"""What helps, per failure class (rlhf_lab.judge.base.FAILURE_CLASS)."""


def _kinds(metrics: dict[str, Any], prefix: str) -> tuple[str, list[str]]:
    """("timeout 2, http_4xx 1", [advice...]) for the nonzero ``prefix<kind>`` counts."""
    counts = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix) and v}
    classes = dict.fromkeys(FAILURE_CLASS[k] for k in counts if k in FAILURE_CLASS)
    return ", ".join(f"{k} {v}" for k, v in counts.items()), [ADVICE[c] for c in classes]


def _check_failures(result: ScoredPreference, max_fraction: float, max_fallback: float) -> None:
    m = result.metrics
    total = m.get("judge/items", 0)
    failed, fallback = m.get("judge/failures", 0), m.get("judge/fallback", 0)
    where = failed_output("score_with_llm", SCORED_DIR) / "failures.jsonl"
    if total and failed / total > max_fraction:
        kinds, advice = _kinds(m, "judge/failures/")
        raise JudgeFailures(
            f"score_with_llm: {failed} of {total} judge items failed ({kinds}; see {where}), "
            f"more than judge.max_failure_fraction={max_fraction:g}; {UNCHANGED}; "
            + "; ".join(advice)
        )
    if total and fallback / total > max_fallback:
        kinds, _ = _kinds(m, "judge/fallback/")
        raise JudgeFailures(
            f"score_with_llm: {fallback} of {total} judge items got the neutral score ({kinds}: "
            f"no usable rating even when re-asked; see {where}), more than "
            f"judge.max_fallback_fraction={max_fallback:g}; {UNCHANGED}; "
            f"{ADVICE['deterministic']} (invalid: or judge.logprobs: false) or raise "
            "judge.max_fallback_fraction"
        )
