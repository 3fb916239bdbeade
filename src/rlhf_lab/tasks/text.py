"""Generic per-reply reward components, usable by every task: ``text/*``.

Each is a pure ``(replies, rows) -> list[float]`` in [0, 1]; :mod:`rlhf_lab.reward_components`
names them and binds their params:

- ``text/bleu``: smoothed sentence BLEU-4 against ``row["reference"]``;
- ``text/bleu2``: the same with BLEU-2, kinder to short dialogue replies;
- ``text/distinct``: mean of the reply's own distinct-1 and distinct-2 (penalises repetition);
- ``text/length``: 1 inside the ``reward.length_band`` of whitespace tokens, linear fall-off
  outside (:func:`length_reward` binds the band).

A row whose ``reference`` is missing, None or blank scores 0 on the BLEU components, so rows
without references cannot earn (or lose) reward from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rlhf_lab.data.rows import Row
from rlhf_lab.text_metrics import distinct_n, sentence_bleu


def _reference(row: Row) -> str:
    ref = row.get("reference")
    return ref if isinstance(ref, str) else ""


def _bleu_rewards(replies: Sequence[str], rows: Sequence[Row], n: int) -> list[float]:
    return [
        sentence_bleu(reply, _reference(row), n=n)  # 0.0 for a blank reference
        for reply, row in zip(replies, rows, strict=True)
    ]


def bleu_reward(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
    """Smoothed sentence BLEU-4 of each reply to its row's reference, in [0, 1]."""
    return _bleu_rewards(replies, rows, n=4)


def bleu2_reward(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
    """Smoothed sentence BLEU-2 of each reply to its row's reference, in [0, 1]."""
    return _bleu_rewards(replies, rows, n=2)


def reply_distinct(reply: str) -> float:
    """Mean of distinct-1 and distinct-2 over one reply's own tokens; 0.0 for an empty reply.

    A one-token reply has no bigrams, so its distinct-2 is 0 and it scores 0.5.
    """
    if not reply.split():
        return 0.0
    return (distinct_n([reply], 1) + distinct_n([reply], 2)) / 2.0


def distinct_reward(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
    """Per-reply diversity: mean of the reply's distinct-1 and distinct-2, in [0, 1]."""
    if len(replies) != len(rows):
        raise ValueError(f"got {len(replies)} replies but {len(rows)} rows")
    return [reply_distinct(reply) for reply in replies]


def length_score(n_tokens: int, lo: int, hi: int) -> float:
    """Length sanity term in [0, 1] for a reply of ``n_tokens`` tokens and band ``[lo, hi]``.

    1.0 inside the band (inclusive). Below it the score rises linearly from 0 at 0 tokens to 1
    at ``lo``; above it the score falls linearly from 1 at ``hi`` to 0 at ``2 * hi`` and stays
    0 beyond, so the fall-off is as wide as the band's upper edge.
    """
    if not 0 <= lo <= hi or hi == 0:
        raise ValueError(f"length band must satisfy 0 <= lo <= hi and hi > 0, got ({lo}, {hi})")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if n_tokens < lo:
        return n_tokens / lo
    if n_tokens <= hi:
        return 1.0
    return max(0.0, 1.0 - (n_tokens - hi) / hi)


def length_reward(lo: int, hi: int) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``text/length`` component for the band ``[lo, hi]`` (``reward.length_band``).

    Why a band with an upper edge: under 12 words a chat reply is little more than "ok" /
    "sure", and RL-tuned policies drift towards longer replies when the reward correlates with
    length (Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations in RLHF").
    """
    length_score(0, lo, hi)  # validate the band once, here, not per reply

    def score(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
        if len(replies) != len(rows):
            raise ValueError(f"got {len(replies)} replies but {len(rows)} rows")
        return [length_score(len(reply.split()), lo, hi) for reply in replies]

    return score
