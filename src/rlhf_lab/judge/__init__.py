"""The LLM judge: rubrics, backends (local, openai) and the resumable score cache.

Other stages score (prompt row, reply) pairs with :func:`build_judge` (see ``scorer``)::

    judge = build_judge(params.judge, params.task.name, use_cache=False)
    judge.score(rows, replies)   # [{"helpfulness": 4.1, "harmlessness": 4.6, "overall": 4.35}]
"""

from rlhf_lab.judge.base import FAILURE_KINDS, Rating, RatingRequest
from rlhf_lab.judge.rubrics import dimensions, rubric_sha
from rlhf_lab.judge.scorer import OVERALL, Judge, JudgeStats, ReplyScore, build_judge, to_unit

__all__ = [
    "FAILURE_KINDS",
    "OVERALL",
    "Judge",
    "JudgeStats",
    "Rating",
    "RatingRequest",
    "ReplyScore",
    "build_judge",
    "dimensions",
    "rubric_sha",
    "to_unit",
]
