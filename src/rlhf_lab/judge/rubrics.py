"""Every judge prompt rendered in one place, and the sha256 that identifies them.

The templates are here; each task's rubric (labels, dimensions, rules) is its own
(:attr:`rlhf_lab.tasks.base.Task.rubric`, from :func:`rlhf_lab.tasks.registry.get_task`).
Each task has two rubric dimensions, each rated on a 1..5 scale by one judge prompt:

=========== ================================= =================================================
task        dimensions                        context shown to the judge
=========== ================================= =================================================
chat        helpfulness, harmlessness         the conversation (prompt messages)
crs         empathy, recommendation           the conversation
docstring   accuracy, completeness            the function source (``meta["code"]``)
=========== ================================= =================================================

``overall`` is the mean of a reply's dimensions. The judge is asked for one digit; the local
backend reads the expected rating Σ k·p(k) off one forward pass (G-Eval, Liu et al. 2023,
§2.3: weighting the rating tokens by their probabilities gives finer, less tied scores than
the argmax digit), the openai backend does the same with the server's top logprobs.

crs rule: a reply that mentions no known movie (:func:`rlhf_lab.tasks.crs.recommends_any`)
gets ``recommendation`` = :data:`NO_RECOMMENDATION_SCORE` = 1.0, the bottom of the scale —
"0 when nothing is recommended" mapped onto 1..5 — without asking the judge, since
a small judge happily rates chit-chat as a fine recommendation.

:func:`rubric_sha` hashes everything that decides a score besides the model (templates, scale,
dimension questions, the crs rule), so any edit here changes the sha, which goes into every
scored row, the metrics, and the cache key: edited rubrics are never served stale scores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_lab.io import sha256_text
from rlhf_lab.tasks.registry import ECR_RUBRICS, NO_RECOMMENDATION_SCORE, TASKS, get_task
from rlhf_lab.tasks.rubric import SCALE, Dimension, Rubric

__all__ = [
    "ECR_RUBRICS",
    "NO_RECOMMENDATION_SCORE",
    "SCALE",
    "Dimension",
]  # defined by the tasks, used here

RUBRIC_VERSION = 1
"""Bump when the rendering code (not the text below) changes what the judge sees."""

OVERALL = "overall"
"""Key of the mean over a reply's rubric dimensions (scored rows, evaluate, the critic)."""
PAIRWISE_LABELS: tuple[str, str] = ("A", "B")
"""Answer tokens of the head-to-head prompt (first reply, second reply)."""

SYSTEM = (
    "You are a strict and fair judge of replies written by an AI assistant. "
    "You answer with a single digit from 1 to 5 and nothing else."
)
PAIRWISE_SYSTEM = (
    "You are a strict and fair judge of replies written by an AI assistant. "
    "You answer with a single letter, A or B, and nothing else."
)

# The context comes first and the question last: the local backend truncates the context
# from the left, so the instructions and the reply always survive truncation.
RATING_TEMPLATE = """{context_label}:
{context}

{reply_label}:
{reply}

{question_block}"""

# Everything after the reply: the only part that differs between a reply's dimensions, so the
# local backend runs the shared part once per reply and only this block once per dimension.
QUESTION_TEMPLATE = """{question}
1 = {low}
5 = {high}
Answer with one digit from 1 to 5."""

PAIRWISE_TEMPLATE = """{context_label}:
{context}

{reply_label} A:
{reply_a}

{reply_label} B:
{reply_b}

Which {reply_noun} is better overall, judging {criteria}? Answer with one letter, A or B."""


def _task(task: str) -> Rubric:
    try:
        return get_task(task).rubric
    except ValueError:
        raise ValueError(f"no rubric for task {task!r}; known: {', '.join(TASKS)}") from None


def dimensions(task: str) -> tuple[str, ...]:
    """The rubric dimension names of ``task`` (``overall`` is their mean)."""
    return tuple(d.name for d in _task(task).dimensions)


def dimension(task: str, name: str) -> Dimension:
    """The :class:`Dimension` called ``name`` in ``task``'s rubric."""
    for d in _task(task).dimensions:
        if d.name == name:
            return d
    raise ValueError(f"task {task!r} has no rubric dimension {name!r}; known: {dimensions(task)}")


def rubric_text(task: str) -> str:
    """Canonical JSON of everything that decides a score for ``task`` besides the model."""
    rubric = _task(task)
    doc = {
        "version": RUBRIC_VERSION,
        "task": task,
        "scale": list(SCALE),
        "system": SYSTEM,
        "template": RATING_TEMPLATE,
        "question_template": QUESTION_TEMPLATE,
        "pairwise_system": PAIRWISE_SYSTEM,
        "pairwise_template": PAIRWISE_TEMPLATE,
        "pairwise_labels": list(PAIRWISE_LABELS),
        "labels": rubric.labels(),
        "dimensions": [vars(d) for d in rubric.dimensions],
        "rules": dict(rubric.rules),
    }
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def rubric_sha(task: str) -> str:
    """sha256 of :func:`rubric_text`: written into every scored row and the metrics."""
    return sha256_text(rubric_text(task))


def render_transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    """A conversation as plain text, one ``Role: content`` paragraph per message."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(
        f"{names.get(str(m.get('role')), str(m.get('role')).title())}: {m.get('content', '')}"
        for m in messages
    )


def context_for(task: str, row: Mapping[str, Any]) -> str:
    """What the judge reads before the reply: the function source, or the conversation."""
    own = get_task(task).judge_context(row)  # type: ignore[arg-type]
    return own if own is not None else render_transcript(row.get("prompt") or [])


def question_block(task: str, dim: str) -> str:
    """The end of a rating prompt: the question on ``dim`` and the scale (no reply text)."""
    d = dimension(task, dim)
    return QUESTION_TEMPLATE.format(question=d.question, low=d.low, high=d.high)


def rating_messages(task: str, dim: str, context: str, reply: str) -> list[dict[str, str]]:
    """Chat messages asking for a 1..5 rating of ``reply`` on ``dim``."""
    rubric = _task(task)
    user = RATING_TEMPLATE.format(
        context_label=rubric.context_label,
        context=context,
        reply_label=rubric.reply_label,
        reply=reply,
        question_block=question_block(task, dim),
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(task: str, context: str, reply_a: str, reply_b: str) -> list[dict[str, str]]:
    """Chat messages asking which of two replies is better (answer ``A`` or ``B``)."""
    rubric = _task(task)
    criteria = " and ".join(d.name for d in rubric.dimensions)
    user = PAIRWISE_TEMPLATE.format(
        context_label=rubric.context_label,
        context=context,
        reply_label=rubric.reply_label,
        reply_noun=rubric.reply_noun,
        reply_a=reply_a,
        reply_b=reply_b,
        criteria=criteria,
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def forced_scores(
    task: str, reply: str, row: Mapping[str, Any], context: Any = None
) -> dict[str, float]:
    """Dimensions whose score is fixed by a rule, not asked of the judge (module docstring);
    ``context`` is the task's (:meth:`rlhf_lab.tasks.base.Task.load_context`; crs: the
    ``data.catalogue`` movies known beyond the row's own)."""
    return get_task(task).forced_scores(reply, row, context)  # type: ignore[arg-type]
