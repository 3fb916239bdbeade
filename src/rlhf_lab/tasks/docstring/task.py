"""The docstring task behind the :class:`~rlhf_lab.tasks.base.Task` interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rlhf_lab.data.rows import Row
from rlhf_lab.tasks.base import ReplyScorer, RewardCheck, Task
from rlhf_lab.tasks.docstring import analysis, formats, rewards, variants
from rlhf_lab.tasks.docstring.rubric import RUBRIC


def function_source(row: Row) -> str | None:
    """The row's function source (``meta.code``), or None when it has none: what the judge
    reads instead of the conversation."""
    code = (row.get("meta") or {}).get("code")
    return code if isinstance(code, str) and code.strip() else None


def bad_variants(rows: Sequence[Row]) -> list[dict[str, str]]:
    """:func:`~rlhf_lab.tasks.docstring.variants.bad_docstring_variants` of each row; the next
    row's reference is "another function's docstring"."""
    out = []
    for i, row in enumerate(rows):
        other = rows[(i + 1) % len(rows)]["reference"] if len(rows) > 1 else None
        out.append(variants.bad_docstring_variants(row["meta"]["code"], row["reference"], other))
    return out


def parse_ok_fraction(rows: Sequence[Row]) -> dict[str, float]:
    """``analyze/parse_ok_fraction``: the share of the checked functions that parse."""
    parsed = [analysis.analyze_function(r["meta"]["code"]).parse_ok for r in rows]
    return {"analyze/parse_ok_fraction": float(np.mean(parsed))}


def _component_rule(short: str) -> Callable[[object], ReplyScorer]:
    """The builder of ``docstring/<short>`` (the task has no context to read)."""
    return lambda context: rewards.component_reward(short)


TASK = Task(
    name="docstring",
    rubric=RUBRIC,
    reward_rules={f"docstring/{c}": _component_rule(c) for c in rewards.COMPONENTS},
    default_weights={f"docstring/{k}": v for k, v in rewards.DEFAULT_WEIGHTS.items()},
    judge_context=function_source,
    writes_about_code=True,
    reply_metrics=rewards.reply_metrics,
    report_rows=(
        ("doctest/with_example", "replies with an example calling the function", False),
        ("doctest/pass_rate", "doctest pass rate of those examples (sandbox)", False),
        ("doctest/replies", "functions that carry examples (doctest rows)", False),
    ),
    gate_defaults=rewards.PHASE1_GATES,
    reward_check=RewardCheck(
        usable=lambda row: function_source(row) is not None,
        bad_variants=bad_variants,
        metrics=parse_ok_fraction,
    ),
    preset="docstring",
    parsers=formats.PARSERS,
)
"""The docstring task: static-analysis and doctest rewards, the Phase-1 gates."""
