"""The judge as every stage uses it: built from ``params.judge``, scoring (prompt row, reply).

    from rlhf_lab.judge import build_judge

    judge = build_judge(params.judge, params.task.name)          # cached (score_with_llm)
    judge = build_judge(params.judge, params.task.name, use_cache=False)   # PPO rollouts
    scores = judge.score(prompt_rows, replies)   # [{"helpfulness": 4.2, ..., "overall": 3.9}]

A row is a :class:`~rlhf_lab.data.rows.PromptRow` (or a preference row: the judge reads
``id``, ``prompt`` and ``meta``); crs rows need
``meta.movies``/``meta.gold_movies`` (the no-movie rule), docstring rows ``meta.code``.
Ratings are on the 1..5 scale; a failed item is ``None`` (and ``overall`` is then ``None``).
A deterministic failure (no rating in the answer, impossible values: ``base.FAILURE_CLASS``)
gets the neutral score instead when the judge is built with ``neutral_fallback=True``
(score_with_llm): a re-run would get the same answer, so failing the item would only stop
the stage for good. Such ratings carry ``fallback`` (the kind); they are counted in
``JudgeStats.fallbacks``, not cached (a later run asks again), and left out of agreement.
:func:`to_unit` maps a rating to [0, 1] for reward components.

:class:`Judge` adds what backends don't do: identical questions are asked once, cached
answers are reused, the rest go to the backend sorted by length (less padding) in chunks, and
the cache is flushed after each chunk, so a killed run resumes where it stopped. A rating a
backend returns off the scale (or not finite) is turned into an ``invalid`` failure here, so
that no backend can write ``Infinity`` into the cache or the scores.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import JudgeConfig
from rlhf_lab.errors import ConfigError, scrub
from rlhf_lab.judge import rubrics
from rlhf_lab.judge.base import (
    DETERMINISTIC_KINDS,
    PAIRWISE,
    Backend,
    Rating,
    RatingRequest,
    mean_or_none,
    neutral,
    pairwise_both_orders,
    valid_value,
)
from rlhf_lab.judge.cache import ScoreCache
from rlhf_lab.judge.rubrics import OVERALL

MASS_SLACK = 1e-3
"""Rounding allowed above probability 1 in a backend's answer mass (clipped to 1)."""


def to_unit(rating: float | None) -> float | None:
    """A 1..5 rating mapped linearly onto [0, 1] (None stays None)."""
    lo, hi = rubrics.SCALE[0], rubrics.SCALE[-1]
    return None if rating is None else (rating - lo) / (hi - lo)


@dataclass
class JudgeStats:
    """What a :class:`Judge` did so far (distinct questions, not repeats)."""

    items: int = 0
    """Distinct questions answered or attempted."""
    cached: int = 0
    """Answered from the cache."""
    scored: int = 0
    """Answered by the backend in this run."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed items by kind (rlhf_lab.judge.base.FAILURE_KINDS)."""
    fallbacks: Counter[str] = field(default_factory=Counter)
    """Items given the neutral score, by deterministic failure kind."""
    reasked: int = 0
    """Items the judge rated only when asked again for a bare answer."""
    seconds: float = 0.0
    """Time spent in backend calls."""
    mass_sum: float = 0.0
    mass_count: int = 0

    @property
    def items_per_s(self) -> float | None:
        """Backend throughput over the items it was asked (None when it was asked nothing)."""
        asked = self.scored + sum(self.failures.values()) + sum(self.fallbacks.values())
        return asked / self.seconds if asked and self.seconds > 0 else None

    @property
    def rating_mass(self) -> float | None:
        """Mean probability the judge put on valid answer tokens (1.0 = always on-format)."""
        return self.mass_sum / self.mass_count if self.mass_count else None


@dataclass(frozen=True)
class ReplyScore:
    """A reply's ratings per dimension plus ``overall``; failures and rule-forced dims."""

    scores: dict[str, float | None]
    failures: dict[str, Rating]
    forced: tuple[str, ...] = ()
    fallbacks: dict[str, Rating] = field(default_factory=dict)
    """Dimensions whose score is the neutral fallback (kept out of agreement and labels)."""


class Judge:
    """A backend plus the task's rubric, the optional cache and dedup (module docstring)."""

    def __init__(
        self,
        backend: Backend,
        task: str,
        cache: ScoreCache | None = None,
        *,
        progress: bool = False,
        context: Any = None,
        neutral_fallback: bool = False,
    ) -> None:
        self.backend = backend
        self.neutral_fallback = neutral_fallback
        self.task = task
        self.context = context
        """The task's context (``Task.load_context``; crs: ``data.catalogue``), for the rules
        that fix a dimension's score (:func:`rubrics.forced_scores`)."""
        self.dims = rubrics.dimensions(task)
        self.rubric_sha = rubrics.rubric_sha(task)
        self.cache = cache
        self.progress = progress
        self.stats = JudgeStats()

    @property
    def model_name(self) -> str:
        return self.backend.model_name

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        """Answer every request (cache first), one :class:`Rating` each, in order."""
        keys = [r.key(self.backend.judge_id, self.rubric_sha) for r in requests]
        answers: dict[str, Rating] = {}
        todo: dict[str, RatingRequest] = {}
        for key, req in zip(keys, requests, strict=True):
            if key in answers or key in todo:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                answers[key] = Rating(hit[0], mass=hit[1])
                self.stats.cached += 1
            else:
                todo[key] = req
        self.stats.items += len(answers) + len(todo)
        # Longest first: similar lengths share a batch (less padding), and a prompt too long
        # for memory fails in the first batch rather than after an hour.
        pending = sorted(todo.items(), key=lambda kv: -kv[1].size())
        size = max(1, self.backend.chunk_size)
        chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
        if self.progress and chunks:
            chunks = ui.track(chunks, f"judge ({self.task})")  # type: ignore[assignment]
        for chunk in chunks:
            start = time.perf_counter()
            ratings = self.backend.rate([req for _, req in chunk])
            self.stats.seconds += time.perf_counter() - start
            ratings = [self._checked(req, r) for (_, req), r in zip(chunk, ratings, strict=True)]
            for (key, _), rating in zip(chunk, ratings, strict=True):
                answers[key] = rating
                if rating.fallback:
                    self.stats.fallbacks[rating.fallback] += 1
                elif rating.ok:
                    self.stats.scored += 1
                    self.stats.reasked += rating.reasked
                else:
                    self.stats.failures[rating.error or "unknown"] += 1
            if self.cache is not None:
                self.cache.add(
                    (key, r.value, r.mass)
                    for (key, _), r in zip(chunk, ratings, strict=True)
                    if r.value is not None and not r.fallback
                )
        for rating in answers.values():
            if rating.mass is not None:
                self.stats.mass_sum += rating.mass
                self.stats.mass_count += 1
        return [answers[k] for k in keys]

    def _checked(self, request: RatingRequest, rating: Rating) -> Rating:
        """``rating``, an ``invalid`` failure if off the scale, or the neutral fallback; its
        detail scrubbed of secrets (a server's words: every writer downstream gets it clean)."""
        if rating.detail:
            rating = replace(rating, detail=scrub(rating.detail))
        if rating.value is not None and not valid_value(request, rating.value):
            rating = Rating(None, "invalid", f"judge rating {rating.value!r} is off the scale")
        if rating.mass is not None:
            if not 0.0 <= rating.mass <= 1.0 + MASS_SLACK:
                detail = f"judge answer mass {rating.mass!r} is not in [0, 1]"
                rating = Rating(None, "invalid", detail)
            elif rating.mass > 1.0:  # float error in the server's logprobs; the cache wants <= 1
                rating = replace(rating, mass=1.0)
        if self.neutral_fallback and rating.error in DETERMINISTIC_KINDS:
            return neutral(request, rating)
        return rating

    def score_detailed(
        self, rows: Sequence[Mapping[str, Any]], replies: Sequence[str]
    ) -> list[ReplyScore]:
        """Rate every reply on every rubric dimension (:class:`ReplyScore` per reply)."""
        if len(rows) != len(replies):
            raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
        requests: list[RatingRequest] = []
        plan: list[tuple[dict[str, float], dict[str, int]]] = []
        contexts: dict[int, str] = {}
        for row, reply in zip(rows, replies, strict=True):
            forced = rubrics.forced_scores(self.task, reply, row, self.context)
            context = contexts.setdefault(id(row), rubrics.context_for(self.task, row))
            slots: dict[str, int] = {}
            for dim in self.dims:
                if dim not in forced:
                    slots[dim] = len(requests)
                    requests.append(RatingRequest(self.task, dim, context, reply))
            plan.append((forced, slots))
        ratings = self.rate(requests)
        out: list[ReplyScore] = []
        for forced, slots in plan:
            scores: dict[str, float | None] = {}
            failures: dict[str, Rating] = {}
            fallbacks: dict[str, Rating] = {}
            for dim in self.dims:
                if dim in forced:
                    scores[dim] = forced[dim]
                    continue
                rating = ratings[slots[dim]]
                scores[dim] = rating.value
                if not rating.ok:
                    failures[dim] = rating
                elif rating.fallback:
                    fallbacks[dim] = rating
            scores[OVERALL] = mean_or_none([scores[d] for d in self.dims])
            out.append(ReplyScore(scores, failures, tuple(forced), fallbacks))
        return out

    def score(
        self, rows: Sequence[Mapping[str, Any]], replies: Sequence[str]
    ) -> list[dict[str, float | None]]:
        """Ratings per dimension and ``overall`` (1..5, None where the judge failed)."""
        return [s.scores for s in self.score_detailed(rows, replies)]

    def compare(
        self,
        rows: Sequence[Mapping[str, Any]],
        replies_a: Sequence[str],
        replies_b: Sequence[str],
    ) -> list[Rating]:
        """P(a beats b) per row, asked in both orders to cancel position bias."""
        if not len(rows) == len(replies_a) == len(replies_b):
            raise ValueError("compare needs as many rows, replies_a and replies_b")
        requests = []
        for row, a, b in zip(rows, replies_a, replies_b, strict=True):
            context = rubrics.context_for(self.task, row)
            requests.append(RatingRequest(self.task, PAIRWISE, context, a, b))
            requests.append(RatingRequest(self.task, PAIRWISE, context, b, a))
        ratings = self.rate(requests)
        out = []
        for ab, ba in zip(ratings[::2], ratings[1::2], strict=True):
            if ab.value is None or ba.value is None:
                out.append(ab if ab.value is None else ba)
            else:
                mass = None if ab.mass is None or ba.mass is None else (ab.mass + ba.mass) / 2
                value = pairwise_both_orders(ab.value, ba.value)
                out.append(Rating(value, mass=mass, fallback=ab.fallback or ba.fallback))
        return out


def build_backend(cfg: JudgeConfig) -> Backend:
    """The backend ``cfg.backend`` names (loads the model for ``local``)."""
    if cfg.backend == "local":
        from rlhf_lab.judge.local import LocalJudge

        return LocalJudge(
            cfg.model, batch_size=cfg.batch_size, max_length=cfg.max_length, dtype=cfg.dtype
        )
    if cfg.backend == "openai":
        from rlhf_lab.judge.openai_backend import OpenAIJudge

        return OpenAIJudge.from_config(cfg)
    raise ConfigError("judge.backend is 'none': there is no judge to score with")


def build_judge(
    cfg: JudgeConfig,
    task: str,
    *,
    use_cache: bool = True,
    progress: bool = False,
    context: Any = None,
    neutral_fallback: bool = False,
) -> Judge:
    """A :class:`Judge` for ``task`` from ``params.judge`` (cache under ``cfg.cache_dir``);
    ``context`` is the task's (:meth:`rlhf_lab.tasks.base.Task.load_context`; crs: the
    ``data.catalogue`` movies)."""
    backend = build_backend(cfg)
    cache = (
        ScoreCache(cfg.cache_dir, backend.judge_id, rubrics.rubric_sha(task)) if use_cache else None
    )
    return Judge(
        backend,
        task,
        cache,
        progress=progress,
        context=context,
        neutral_fallback=neutral_fallback,
    )
