"""The task registry: ``task.name`` -> its :class:`~rlhf_lab.tasks.base.Task`.

    task = get_task(params.task.name)
    context = task.load_context(params)          # crs: the data.catalogue movies; else None
    flags = task.reply_flags(replies, rows, context) if task.reply_flags else {}

This is the one place that knows which tasks exist; everything else calls the task object
(``tests/test_tasks_registry.py`` fails on a ``task ==`` branch anywhere else in ``src/``).
:data:`rlhf_lab.config.TASKS` lists the same names for the config layer, which sits below the
tasks; a test checks that the two agree.

crs is assembled here from the public functions of :mod:`rlhf_lab.tasks.crs` (its rewards,
catalogue and bad replies), so the entry does not depend on how that module is laid out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlhf_lab.data.rows import Row
from rlhf_lab.tasks import chat, crs, docstring
from rlhf_lab.tasks.base import RewardCheck, Task
from rlhf_lab.tasks.crs import formats as crs_formats
from rlhf_lab.tasks.crs import grounding
from rlhf_lab.tasks.rubric import CONVERSATION_LABELS, SCALE, Dimension, Rubric

if TYPE_CHECKING:
    from rlhf_lab.config import Params
    from rlhf_lab.data.sources import ParserFactory

# ---------------------------------------------------------------------------------------- crs

NO_RECOMMENDATION_SCORE = float(SCALE[0])
"""crs: ``recommendation`` of a reply that mentions no known movie (the scale's minimum)."""

CRS_RUBRIC = Rubric(
    **CONVERSATION_LABELS,
    dimensions=(
        Dimension(
            "empathy",
            "How empathetic is the reply: does it acknowledge what the user said, their "
            "feelings and their tastes?",
            "cold, or ignores the user",
            "warm and attentive to the user's feelings and tastes",
        ),
        Dimension(
            "recommendation",
            "How good is the reply's movie recommendation for this user: does it suggest "
            "specific movies that fit the tastes the user described?",
            "no movie suggested, or a poor fit",
            "specific movies that fit the user's tastes very well",
        ),
    ),
    rules={"recommendation": f"{NO_RECOMMENDATION_SCORE} when crs.recommends_any is false"},
)
"""crs's rubric: ECR's empathy and recommendation, with the no-movie rule
(:mod:`rlhf_lab.judge.rubrics`' docstring says why)."""


ECR_RUBRICS: tuple[Dimension, ...] = (
    Dimension(
        "emotional_intensity",
        "How strongly does the reply express emotion?",
        "flat, no emotion",
        "strong, vivid emotion",
    ),
    Dimension(
        "emotional_persuasiveness",
        "How much do the reply's feelings make you want to watch the movie?",
        "not at all",
        "very much",
    ),
    Dimension(
        "logical_persuasiveness",
        "How convincing are the reply's reasons for the recommendation?",
        "no reasons, or unconvincing ones",
        "clear, convincing reasons",
    ),
    Dimension(
        "informativeness",
        "How much useful information about the movie does the reply give?",
        "none",
        "rich, specific information",
    ),
    Dimension(
        "lifelikeness",
        "How natural and human-like does the reply sound?",
        "robotic or unnatural",
        "like a person talking",
    ),
)
"""ECR's human-evaluation rubrics for crs replies, each scored 1-5 (Zhang et al. 2024,
"Towards Empathetic Conversational Recommender Systems", RecSys, §5.3): the arena's rating form
and ``arena --report`` use these names."""


def _crs_catalogue(params: Params) -> Any:
    return crs.load_catalogue(params.data.catalogue)


def _crs_forced_scores(reply: str, row: Row, catalogue: Any) -> dict[str, float]:
    if not crs.recommends_any(reply, dict(row), catalogue):
        return {"recommendation": NO_RECOMMENDATION_SCORE}
    return {}


def _crs_reply_flags(
    replies: Sequence[str], rows: Sequence[Row], catalogue: Any
) -> dict[str, list[float]]:
    pairs = list(zip(replies, rows, strict=True))
    return {
        "rec_hit": [float(crs.recommendation_hit(t, r, catalogue)) for t, r in pairs],
        "rec": [float(crs.recommends_any(t, r, catalogue)) for t, r in pairs],
        "hallucinated": [
            float(bool(grounding.hallucinated_titles(t, r, catalogue))) for t, r in pairs
        ],
    }


CRS = Task(
    name="crs",
    rubric=CRS_RUBRIC,
    reward_rules={
        "crs/recommendation": crs.recommendation_reward,
        "crs/grounded": grounding.grounded_reward,
        "crs/no_hallucination": grounding.no_hallucination_reward,
        "crs/empathy": grounding.empathy_reward,
    },
    # crs/grounded and crs/no_hallucination score replies to candidate-grounded prompts
    # (meta.candidates); plain ReDial turns carry none, so they are reported, not weighted.
    default_weights={"crs/recommendation": 1.0},
    load_context=_crs_catalogue,
    forced_scores=_crs_forced_scores,
    reply_flags=_crs_reply_flags,
    report_rows=(
        ("rec_hit_rate", "recommendation hit rate (gold movie named)", False),
        ("rec_rate", "recommendation rate (any known movie named)", False),
    ),
    reward_check=RewardCheck(
        usable=lambda row: bool((row.get("meta") or {}).get("gold_movies")),
        bad_variants=lambda rows: [crs.bad_reply_variants(row) for row in rows],
    ),
    human_rubrics=ECR_RUBRICS,
    has_recommender=True,
    preset="crs",
    parsers=crs_formats.PARSERS,
)
"""The conversational-recommendation task (ReDial, the ECR system)."""

CHAT = Task(name="chat", rubric=chat.RUBRIC)
"""Preference-tuned chat: the judge's rubric; the generic ``text/*`` rewards apply to it."""

# ------------------------------------------------------------------------------------ registry

TASKS: dict[str, Task] = {t.name: t for t in (CHAT, CRS, docstring.TASK)}
"""Every task by name, in :data:`rlhf_lab.config.TASKS`' order."""


FORMAT_PARSERS: dict[str, ParserFactory] = {
    fmt: factory for task in TASKS.values() for fmt, factory in task.parsers.items()
}
"""Every task's own row formats, ``data.format`` -> parser factory: what the callers of
:func:`rlhf_lab.data.prepare.load_examples` pass, since ``data`` never imports a task."""


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError naming the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
