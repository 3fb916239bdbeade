"""What every judge backend takes and returns, and the math shared by the backends.

A :class:`RatingRequest` is one question to the judge: rate ``reply`` on ``dim`` (1..5), or,
when ``reply_b`` is set, say whether ``reply`` (A) beats ``reply_b`` (B). A backend answers each
with a :class:`Rating`: a value, or ``value=None`` plus a failure ``error`` kind from
:data:`FAILURE_KINDS` — a failed item is always returned, never dropped.

Failure kinds fall in three classes (:data:`FAILURE_CLASS`), because what helps differs:
``transient`` ones (timeout, 5xx, connection, a body that is not a chat completion) may pass on
a re-run; ``request`` ones (4xx, a redirect) need params fixed; ``rate_limit`` (429) needs
fewer requests at once or more patience; ``deterministic`` ones (a
well-formed answer with no rating, or with impossible values) come back the same at
temperature 0, so a re-run cannot help: they get the neutral score (:func:`neutral`), flagged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from rlhf_lab.io import sha256_text
from rlhf_lab.judge.rubrics import PAIRWISE_LABELS, SCALE

FAILURE_KINDS: tuple[str, ...] = (
    "timeout",
    "http_5xx",
    "http_4xx",
    "rate_limited",
    "malformed",
    "no_rating",
    "connection",
    "invalid",
    "redirect",
)
"""Why an item failed: no answer in time, server error, request rejected, too many requests
(HTTP 429, after honouring its ``Retry-After``), body not the
chat-completions schema, a well-formed answer with no rating in it, server unreachable, an
answer with impossible types or values (content not text, a logprob above 0), a 3xx answer
(never followed: the API key goes to ``judge.base_url`` only)."""

FAILURE_CLASS: dict[str, str] = {
    "timeout": "transient",
    "http_5xx": "transient",
    "connection": "transient",
    "malformed": "transient",
    "http_4xx": "request",
    "rate_limited": "rate_limit",
    "redirect": "request",
    "no_rating": "deterministic",
    "invalid": "deterministic",
}
"""Each kind's class (module docstring): whether a re-run, a params fix or nothing helps."""

DETERMINISTIC_KINDS: tuple[str, ...] = tuple(
    k for k in FAILURE_KINDS if FAILURE_CLASS[k] == "deterministic"
)
"""Kinds that get the neutral score (see :func:`neutral`) instead of failing the item."""

PAIRWISE = "pairwise"
"""``RatingRequest.dim`` of a head-to-head comparison."""


@dataclass(frozen=True)
class RatingRequest:
    """One judge question (see module docstring)."""

    task: str
    dim: str
    context: str
    reply: str
    reply_b: str | None = None

    @property
    def pairwise(self) -> bool:
        return self.reply_b is not None

    def key(self, judge_id: str, rubric_sha: str) -> str:
        """Cache key: sha256 over (judge, rubric sha, the texts the judge reads)."""
        parts = [judge_id, rubric_sha, self.task, self.dim, self.context, self.reply, self.reply_b]
        return sha256_text(json.dumps(parts, ensure_ascii=False))

    def size(self) -> int:
        """Characters the judge reads; requests are sorted by it to batch similar lengths."""
        return len(self.context) + len(self.reply) + len(self.reply_b or "")


@dataclass(frozen=True)
class Rating:
    """A judge answer: a 1..5 rating, or P(A beats B) for a pairwise request; or a failure."""

    value: float | None
    error: str | None = None
    """A :data:`FAILURE_KINDS` entry when ``value`` is None."""
    detail: str | None = None
    """One line on what went wrong (never holds the API key)."""
    mass: float | None = None
    """Probability the judge put on the answer tokens (low: it wanted to say something else)."""
    fallback: str | None = None
    """The deterministic failure kind when ``value`` is the neutral score, not the judge's."""
    reasked: bool = False
    """The judge rated only when asked again for a bare answer (openai backend)."""

    @property
    def ok(self) -> bool:
        return self.value is not None


class Backend(Protocol):
    """A judge backend: answers requests in order, one :class:`Rating` each."""

    judge_id: str
    """Identity of the judge for the cache: the model (and its weights' sha when local)."""
    model_name: str
    """The judge model as the user named it (metrics, scored rows)."""
    chunk_size: int
    """Requests per call to :meth:`rate`; the cache is flushed after each call."""

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]: ...


def expected_rating(probs: Mapping[str, float]) -> tuple[float, float]:
    """(Σ k·p(k) with p renormalised over the rating digits, their total mass).

    ``probs`` maps answer strings (``"1"``..``"5"``) to probabilities (not necessarily
    normalised; missing digits count as 0). Raises ValueError when no digit has mass.
    """
    weights = {k: max(0.0, probs.get(str(k), 0.0)) for k in SCALE}
    mass = sum(weights.values())
    if not mass > 0.0:
        raise ValueError("no probability on any rating digit")
    return sum(k * w for k, w in weights.items()) / mass, mass


def first_choice_prob(probs: Mapping[str, float]) -> tuple[float, float]:
    """(P(A) renormalised over {A, B}, their total mass) for a pairwise answer."""
    a, b = (max(0.0, probs.get(label, 0.0)) for label in PAIRWISE_LABELS)
    if not a + b > 0.0:
        raise ValueError("no probability on A or B")
    return a / (a + b), a + b


def answer_probs(request: RatingRequest, probs: Mapping[str, float]) -> Rating:
    """A :class:`Rating` from answer-string probabilities (digits, or A/B when pairwise)."""
    try:
        if request.pairwise:
            value, mass = first_choice_prob(probs)
        else:
            value, mass = expected_rating(probs)
    except ValueError as exc:
        return Rating(None, "no_rating", str(exc))
    return Rating(value, mass=mass)


def neutral(request: RatingRequest, failed: Rating) -> Rating:
    """The neutral score standing in for a deterministic failure: mid-scale, or 1/2 pairwise.

    Flagged with the failure kind, so that agreement leaves it out and metrics count it.
    """
    value = 0.5 if request.pairwise else (SCALE[0] + SCALE[-1]) / 2
    return Rating(value, detail=failed.detail, fallback=failed.error)


def valid_value(request: RatingRequest, value: float) -> bool:
    """Whether ``value`` is a possible answer: finite and on the scale (0..1 pairwise)."""
    lo, hi = (0.0, 1.0) if request.pairwise else (SCALE[0], SCALE[-1])
    return math.isfinite(value) and lo <= value <= hi


def pairwise_both_orders(p_first_ab: float, p_first_ba: float) -> float:
    """P(X beats Y) from P(A wins | X shown first) and P(A wins | Y shown first).

    Averaging the two orders cancels a judge's position bias (Zheng et al. 2023, "Judging
    LLM-as-a-judge", §3.3 swap positions): a judge that always says "A" gets exactly 0.5.
    """
    return 0.5 * (p_first_ab + (1.0 - p_first_ba))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of ``values``, or None when any is None (a failed dimension fails ``overall``)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]
