"""evaluate's scoring: every reply (and the human references) scored per component.

Per reply: the reward model (normalised score), every rule component of the task
(``text/*`` always, ``crs/*`` / ``docstring/*`` by task), built by
:func:`rlhf_lab.reward_components.build` exactly as PPO's are, BERTScore F1 against the
reference, and optionally the judge's rubric dimensions. The references get the same
reward-model and component scores, except components that compare with the reference (a
reference would be compared with itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlhf_lab.data.rows import Row
from rlhf_lab.evaluation.metrics import ModelOutputs
from rlhf_lab.reward_components import REWARD_MODEL, RewardFn, is_reference_based
from rlhf_lab.tasks.registry import get_task


def reference_of(row: Row) -> str | None:
    """The row's reference reply, or None when it has none (null, missing or blank)."""
    ref = row.get("reference")
    return ref if isinstance(ref, str) and ref.strip() else None


JudgeScorer = Callable[[Sequence[Row], Sequence[str]], list[Mapping[str, float | None]]]
"""Scores (prompt row, reply) pairs: one ``{dimension: rating or None, "overall": ...}`` per
reply. ``rlhf_lab.judge.Judge.score`` is one; tests pass a plain function."""


def _aligned(values: Sequence[float], valid: np.ndarray) -> np.ndarray:
    """Scores of the valid rows spread back over all rows (NaN elsewhere)."""
    out = np.full(valid.shape, np.nan)
    out[valid] = np.asarray(values, dtype=np.float64)
    return out


def score_outputs(
    outputs: Mapping[str, ModelOutputs],
    rows: Sequence[Row],
    *,
    components: Mapping[str, RewardFn],
    reward_model: Any,
    bert_scorer: Any | None,
    judge: JudgeScorer | None,
    rm_batch_size: int = 32,
    context: Any = None,
    task: str = "chat",
) -> None:
    """Fill each output's ``scores``, ``bertscore_f1``, ``judge``, ``task_flags`` and
    ``task_metrics`` in place.

    ``components`` are the rule components (:func:`rlhf_lab.reward_components.build`);
    the task's :attr:`~rlhf_lab.tasks.base.Task.reply_flags` (crs: hit / recommendation, over
    ``context``, the ``data.catalogue`` movies) and
    :attr:`~rlhf_lab.tasks.base.Task.reply_metrics` (docstring: doctest pass rate) are
    computed for every output, references included.

    ``reward_model`` is a ``rlhf_lab.reward_scorer.RewardModel`` (or anything with its
    ``score``); ``bert_scorer`` a :class:`~rlhf_lab.evaluation.bertscore.BertScorer`.
    The judge scores the models only (rating the references too would add to its cost).
    """
    spec = get_task(task)
    refs = [reference_of(r) for r in rows]
    has_ref = np.array([r is not None for r in refs])
    for who, out in outputs.items():
        idx = np.flatnonzero(out.valid)
        sub_rows = [rows[i] for i in idx]
        sub_texts = [out.texts[i] for i in idx]
        prompts = [r["prompt"] for r in sub_rows]
        rm = reward_model.score(prompts, sub_texts, batch_size=rm_batch_size)
        out.scores[REWARD_MODEL] = _aligned([float(x) for x in rm], out.valid)
        for name, fn in components.items():
            if who == "ref" and is_reference_based(name):
                continue
            valid = out.valid & has_ref if is_reference_based(name) else out.valid
            sel = np.flatnonzero(valid)
            vals = fn([out.texts[i] for i in sel], [rows[i] for i in sel])
            out.scores[name] = _aligned([float(x) for x in vals], valid)
        if spec.reply_flags is not None:
            for flag, values in spec.reply_flags(sub_texts, sub_rows, context).items():
                out.task_flags[flag] = _aligned(values, out.valid)
        if spec.reply_metrics is not None:
            out.task_metrics.update(spec.reply_metrics(sub_texts, sub_rows))
        if who == "ref":
            continue
        if bert_scorer is not None and has_ref.any():
            sel = np.flatnonzero(has_ref)
            bs = bert_scorer.score([out.texts[i] for i in sel], [refs[i] for i in sel])
            out.bertscore_f1 = _aligned(bs.f1, has_ref)
        if judge is not None:
            out.judge = judge_table(judge(list(rows), list(out.texts)))


def judge_table(ratings: Sequence[Mapping[str, float | None]]) -> dict[str, np.ndarray]:
    """Per-reply judge ratings as ``dimension -> array`` (None becomes NaN)."""
    dims: list[str] = []
    for r in ratings:
        dims.extend(d for d in r if d not in dims)
    return {
        d: np.array(
            [
                float(v) if (v := r.get(d)) is not None and math.isfinite(v) else np.nan
                for r in ratings
            ]
        )
        for d in dims
    }
