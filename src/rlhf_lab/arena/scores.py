"""The arena's rubric scores: ECR's human evaluation of each reply, one JSON line per comparison.

    {"id": "<comparison id>", "prompt": [...], "model_left": "sft", "model_right": "ppo",
     "reply_left": ..., "reply_right": ..., "rater": "ann" | null,
     "scores": {"left": {"emotional_intensity": 4, ...}, "right": {...}},
     "timestamp": "2026-12-07T13:40:00Z"}

Each reply gets a 1-5 score on every rubric of :data:`rlhf_lab.judge.rubrics.ECR_RUBRICS`
(crs prompts only), beside the A/B vote. The file sits next to the vote file
(``data/human/ratings.jsonl``) and is appended the same way (lock, one write, fsync).
``arena --report`` averages each policy's scores per rubric with a bootstrap 95% CI.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_lab.arena.ratings import MIN_SAMPLES
from rlhf_lab.arena.votes import read_rows
from rlhf_lab.evaluation.stats import mean_ci
from rlhf_lab.io import append_jsonl_line
from rlhf_lab.judge.rubrics import ECR_RUBRICS, SCALE

SCORES_PATH = Path("data/human/ratings.jsonl")
RUBRICS: tuple[str, ...] = tuple(d.name for d in ECR_RUBRICS)
SIDES = ("left", "right")


def check_scores(scores: Any) -> dict[str, dict[str, int]]:
    """``scores`` as ``{side: {rubric: 1..5}}`` with every side and rubric, or ValueError."""
    if not isinstance(scores, dict) or set(scores) != set(SIDES):
        raise ValueError(f"scores must be an object with keys {' and '.join(SIDES)}")
    out: dict[str, dict[str, int]] = {}
    for side in SIDES:
        given = scores[side]
        if not isinstance(given, dict) or set(given) != set(RUBRICS):
            raise ValueError(f"scores.{side} must score exactly: {', '.join(RUBRICS)}")
        for rubric, value in given.items():
            # bool is an int in Python; a JSON true is not a score.
            if isinstance(value, bool) or not isinstance(value, int) or value not in SCALE:
                raise ValueError(
                    f"scores.{side}.{rubric} must be an integer {SCALE[0]}-{SCALE[-1]}, "
                    f"got {value!r}"
                )
        out[side] = {r: given[r] for r in RUBRICS}
    return out


def score_row(
    *,
    comparison_id: str,
    prompt: Sequence[Mapping[str, str]],
    models: tuple[str, str],
    replies: tuple[str, str],
    scores: Any,
    rater: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The score-file row of one rated comparison (``models``/``replies`` in left, right order)."""
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    return {
        "id": comparison_id,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "model_left": models[0],
        "model_right": models[1],
        "reply_left": replies[0],
        "reply_right": replies[1],
        "rater": rater,
        "scores": check_scores(scores),
        "timestamp": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def append_scores(path: str | Path, row: dict[str, Any]) -> None:
    """Append one score row durably (as votes are appended)."""
    append_jsonl_line(path, row)


def _valid(row: dict[str, Any]) -> bool:
    try:
        check_scores(row.get("scores"))
    except ValueError:
        return False
    return True


def read_scores(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, line numbers that are not a valid score row); none if the file is absent."""
    return read_rows(path, _valid)


def summary(
    rows: Sequence[Mapping[str, Any]], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Flat ``arena/<model>/human/...`` metrics: per policy and rubric the mean score, and its
    95% bootstrap CI (``_lo``/``_hi``) once the policy has :data:`MIN_SAMPLES` rated replies."""
    by_model: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for side in SIDES:
            for rubric, value in row["scores"][side].items():
                by_model[row[f"model_{side}"]][rubric].append(value)
    m: dict[str, Any] = {"arena/rated_comparisons": len(rows)}
    for model in sorted(by_model):
        n = len(by_model[model][RUBRICS[0]])
        m[f"arena/{model}/human/replies"] = n
        for rubric in RUBRICS:
            mean, lo, hi = mean_ci(by_model[model][rubric], n_boot=n_boot, seed=seed)
            key = f"arena/{model}/human/{rubric}"
            m[key] = mean
            if n >= MIN_SAMPLES:
                m[f"{key}_lo"], m[f"{key}_hi"] = lo, hi
    return m
