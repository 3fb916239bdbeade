"""Pure helpers for judge labels: pick a pair from scored candidates, measure agreement.

- :func:`pick_pair`: ``data.pairs: judge`` — the candidate with the highest ``overall`` is
  chosen, the lowest rejected; a gap below ``judge.min_margin`` (or no gap) is a near-tie and
  the prompt is dropped, because a label the judge cannot tell apart is mostly its noise.
- :func:`agreement`: how often the labelled chosen reply scores above the rejected one, a tie
  counting 1/2 (so a constant judge scores exactly 0.5, chance). The same function gives the
  "longer reply wins" baseline when fed lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

TIE = "tie"
UNSCORED = "unscored"


def pick_pair(
    overalls: Sequence[float | None], min_margin: float
) -> tuple[int, int] | Literal["tie", "unscored"]:
    """``(best, worst)`` candidate indices, or ``"tie"`` / ``"unscored"`` (fewer than 2 scores).

    Failed candidates (None) are left out; among equal scores the first index wins.
    """
    scored = [(v, i) for i, v in enumerate(overalls) if v is not None]
    if len(scored) < 2:
        return UNSCORED
    best = max(scored, key=lambda t: (t[0], -t[1]))
    worst = min(scored, key=lambda t: (t[0], -t[1]))
    gap = best[0] - worst[0]
    if gap <= 0.0 or gap < min_margin:
        return TIE
    return best[1], worst[1]


def agreement(
    pairs: Sequence[tuple[float | None, float | None]],
) -> tuple[float | None, int]:
    """(mean of 1[chosen > rejected] with ties as 1/2, pairs counted); None-scored pairs skipped."""
    total, n = 0.0, 0
    for chosen, rejected in pairs:
        if chosen is None or rejected is None:
            continue
        n += 1
        total += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
    return (total / n if n else None), n
