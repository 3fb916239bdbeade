"""The one interface every task implements: :class:`Task`, a frozen record of values and hooks.

The stages, the trainers, the evaluation and the judge never branch on ``task.name``: they ask
:func:`rlhf_lab.tasks.registry.get_task` for the task and call its hooks. Each hook has a
neutral default, so a task states only what it has (chat: a rubric and nothing else). How to
add a task: ``docs/task-interface.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf_lab.config import TASK_FORMATS
from rlhf_lab.data.rows import Row
from rlhf_lab.tasks.rubric import Dimension, Rubric

if TYPE_CHECKING:
    from rlhf_lab.config import Params
    from rlhf_lab.data.sources import ParserFactory

ReplyScorer = Callable[[Sequence[str], Sequence[Row]], Any]
"""A rule reward: ``(replies, rows) -> one score in [0, 1] per reply``
(:data:`rlhf_lab.reward_components.RewardFn`)."""


def no_context(params: Params) -> None:
    """The default :attr:`Task.load_context`: the task reads nothing beyond its rows."""
    return None


def no_judge_context(row: Row) -> str | None:
    """The default :attr:`Task.judge_context`: the judge reads the conversation."""
    return None


def no_forced_scores(reply: str, row: Row, context: Any) -> dict[str, float]:
    """The default :attr:`Task.forced_scores`: every dimension is asked of the judge."""
    return {}


@dataclass(frozen=True)
class RewardCheck:
    """What ``analyze_rewards`` needs to test a task's rule rewards on good and bad replies."""

    usable: Callable[[Row], bool]
    """Does the row have what the check needs (a reference, the code, a gold movie)?"""
    bad_variants: Callable[[Sequence[Row]], list[dict[str, str]]]
    """Bad replies by kind, one dict per row, made from the rows' references on purpose."""
    metrics: Callable[[Sequence[Row]], dict[str, float]] = lambda rows: {}
    """Extra ``analyze/...`` metrics of the checked rows (docstring: the parse-ok fraction)."""


@dataclass(frozen=True)
class Task:
    """One task (``task.name``): its rubric, rewards, metrics, gates and preset."""

    name: str
    """``task.name``; one of :data:`rlhf_lab.config.TASKS`."""
    rubric: Rubric
    """The judge's rubric (:mod:`rlhf_lab.judge.rubrics` renders and hashes it)."""
    reward_rules: Mapping[str, Callable[[Any], ReplyScorer]] = field(default_factory=dict)
    """Rule component (``<task>/<rule>``) -> builder from the task's context
    (:attr:`load_context`); :func:`rlhf_lab.reward_components.build` builds them."""
    default_weights: Mapping[str, float] | None = None
    """Weights of :attr:`reward_rules` when ``reward.weights`` gives none of them a positive
    weight; None: 1.0 each."""
    load_context: Callable[[Params], Any] = no_context
    """What the task's rules read from params beyond the rows, loaded once (crs: the
    ``data.catalogue`` movie catalogue); passed to every hook that takes ``context``."""
    judge_context: Callable[[Row], str | None] = no_judge_context
    """What the judge reads before the reply, or None for the rendered conversation
    (docstring: the function source)."""
    forced_scores: Callable[[str, Row, Any], dict[str, float]] = no_forced_scores
    """``(reply, row, context)`` -> dimensions whose score a rule fixes (:attr:`Rubric.rules`)."""
    reply_flags: Callable[[Sequence[str], Sequence[Row], Any], dict[str, list[float]]] | None = None
    """``(replies, rows, context)`` -> per-reply 0/1 flags that evaluate reports as rates (crs:
    ``rec_hit``, ``rec``)."""
    reply_metrics: Callable[[Sequence[str], Sequence[Row]], dict[str, float]] | None = None
    """Corpus metrics of one model's replies (``<m>/<key>``; docstring: doctest pass rate)."""
    report_rows: tuple[tuple[str, str, bool], ...] = ()
    """Rows the flags and metrics add to evaluate's headline table: (metric key without the
    model prefix, label, has a bootstrap CI)."""
    has_recommender: bool = False
    """Its prompts name items a recommender ranks: ``train_recommender`` fits one and grounds
    the prompts in its candidates (crs); every other task's stage copies the prompts through."""
    writes_about_code: bool = False
    """Its prompt is a function's source and its reply the docstring: ``rlhf-lab generate
    --code`` builds such prompts from files or snippets (docstring)."""
    gate_defaults: Mapping[str, float] = field(default_factory=dict)
    """Default ``eval.gates.protocol`` thresholds; empty: the generic gates decide."""
    reward_check: RewardCheck | None = None
    """``analyze_rewards``' hooks; None: the task has no rule rewards to check."""
    human_rubrics: tuple[Dimension, ...] = ()
    """Rubrics a human rater scores each reply on in the arena, 1-5 (crs: ECR's five)."""
    preset: str | None = None
    """Name of the task's preset in :data:`rlhf_lab.presets.PRESETS`, or None."""
    parsers: Mapping[str, ParserFactory] = field(default_factory=dict)
    """The task's own row formats: ``data.format`` -> parser factory (its ``formats`` module);
    the registry hands them to :func:`rlhf_lab.data.sources.make_parser`. Empty: the task reads
    the generic formats only (chat)."""

    @property
    def formats(self) -> tuple[str, ...]:
        """The ``data.format`` values the task's rows come in (:data:`rlhf_lab.config.TASK_FORMATS`;
        empty: any chat format)."""
        return TASK_FORMATS[self.name]

    def weights(self) -> dict[str, float]:
        """:attr:`default_weights`, or 1.0 for each of :attr:`reward_rules`."""
        if self.default_weights is not None:
            return dict(self.default_weights)
        return dict.fromkeys(self.reward_rules, 1.0)
