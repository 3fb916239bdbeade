"""The arena's vote file: one JSON line per vote, in TRL's explicit-prompt preference format.

    {"id": "<comparison id>", "prompt": [{"role": "user", "content": ...}],
     "chosen": [{"role": "assistant", "content": ...}], "rejected": [...],
     "label": "left", "label_source": "human",
     "model_left": "sft", "model_right": "ppo", "reply_left": ..., "reply_right": ...,
     "position": "left", "chosen_model": "sft", "rejected_model": "ppo",
     "note": "", "timestamp": "2026-12-02T11:40:00Z", "generation": {...},
     "rater": "ann" | null, "identical": false}

``label`` is which side the voter preferred (``left``, ``right``) or neither (``tie``,
``both_bad``). Only ``left``/``right`` votes are pairs; the others keep both replies (and
``chosen``/``rejected`` null) so ratings can count them as ties, and ``prepare_preference``
skips them with the reason ``no_preference``. ``position`` is the side the chosen reply was
shown on, for checking position bias.

Writes go through :func:`rlhf_lab.io.append_jsonl_line` (lock, one write, fsync), so
concurrent votes never interleave and a vote acknowledged to the page is on disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_lab.io import append_jsonl_line

VOTES_PATH = Path("data/human/votes.jsonl")
LABELS = ("left", "right", "tie", "both_bad")
"""Every vote: the left or right reply is better, both are as good, both are bad."""
PAIR_LABELS = ("left", "right")
"""Votes that make a preference pair."""


def _assistant(text: str) -> list[dict[str, str]]:
    # TRL's conversational preference rows hold replies as one-message assistant turns.
    return [{"role": "assistant", "content": text}]


def vote_row(
    *,
    comparison_id: str,
    prompt: Sequence[Mapping[str, str]],
    models: tuple[str, str],
    replies: tuple[str, str],
    label: str,
    note: str = "",
    generation: Mapping[str, Any] | None = None,
    timestamp: datetime | None = None,
    rater: str | None = None,
) -> dict[str, Any]:
    """The vote-file row of one vote (``models``/``replies`` in left, right order)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    row: dict[str, Any] = {
        "id": comparison_id,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "chosen": None,
        "rejected": None,
        "label": label,
        "label_source": "human",
        "model_left": models[0],
        "model_right": models[1],
        "reply_left": replies[0],
        "reply_right": replies[1],
        "position": None,
        "chosen_model": None,
        "rejected_model": None,
        "note": note,
        "timestamp": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "generation": dict(generation or {}),
        "rater": rater,
        # Two equal texts are no preference: such a row is never a pair (nor a rated game).
        "identical": replies[0] == replies[1],
    }
    if label in PAIR_LABELS and replies[0] == replies[1]:
        raise ValueError("identical replies: vote tie or both_bad, not a side")
    if label in PAIR_LABELS:
        win = 0 if label == "left" else 1
        row.update(
            chosen=_assistant(replies[win]),
            rejected=_assistant(replies[1 - win]),
            position=label,
            chosen_model=models[win],
            rejected_model=models[1 - win],
        )
    return row


def append_vote(path: str | Path, row: dict[str, Any]) -> None:
    """Append one vote row durably (see the module docstring)."""
    append_jsonl_line(path, row)


def read_rows(
    path: str | Path, is_row: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, line numbers that are not a valid row) of an append-only JSON-lines file of the
    arena (votes, rubric scores); none if it is absent. A row is valid when it is a JSON object
    with both model ids and ``is_row`` accepts it.

    Unreadable lines (a row torn by a crash mid-write, a hand edit gone wrong) are reported,
    not fatal: every other row still counts.
    """
    path = Path(path)
    if not path.is_file():
        return [], []
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                bad.append(n)
                continue
            ok = isinstance(row, dict) and all(
                isinstance(row.get(k), str) for k in ("model_left", "model_right")
            )
            if ok and is_row(row):
                rows.append(row)
            else:
                bad.append(n)
    return rows, bad


def read_votes(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(votes, line numbers that are not a readable vote) of a vote file (see :func:`read_rows`)."""
    return read_rows(path, lambda row: row.get("label") in LABELS)
