"""The normalised example every source is turned into, and the row dicts of DESIGN.md.

An :class:`Example` is one prompt (a chat, ending with a user turn) with either a human
reference reply (chitchat, redial, docstring) or a human-labelled pair (hh). The stage writes
it as a *prompt row* (``data/prompts``) and, once pairs are built, a *preference row*
(``data/preference``)::

    prompt row:     {"id", "prompt": [{"role", "content"}, ...], "reference", "meta"}
    preference row: {"id", "prompt", "chosen", "rejected", "label_source", "meta"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.validate import Origin

Message = dict[str, str]
Row = dict[str, Any]
"""A prompt, preference or scored row as read from JSONL (the dicts above)."""


@dataclass
class Example:
    id: str
    """Stable id: from the source where it has one (conversation + turn), else a content hash."""
    group: str
    """Split unit: rows of one conversation (or one prompt) share it, so no split leaks."""
    prompt: list[Message]
    """Chat messages, roles 'user'/'assistant', ending with a user turn (no system message)."""
    reference: str | None
    """The human reply to the prompt (hh: the chosen reply)."""
    origin: Origin
    """Source file and line, for error messages and data/invalid."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task data: gold movies and the movie dict (crs), function source (docstring)..."""
    chosen: str | None = None
    """hh only: the human-preferred final reply."""
    rejected: str | None = None
    """hh only: the other final reply."""

    def to_prompt_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "reference": self.reference,
            "meta": self.meta,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for data/invalid (a rejected example is shown as it was normalised)."""
        row = self.to_prompt_row()
        if self.chosen is not None or self.rejected is not None:
            row.update(chosen=self.chosen, rejected=self.rejected)
        return row


def preference_row(
    ex: Example,
    chosen: str | None,
    rejected: str | None,
    label_source: str,
    meta: dict[str, Any] | None = None,
    candidates: list[str] | None = None,
) -> dict[str, Any]:
    """A DESIGN.md preference row; judge rows carry ``candidates`` and null chosen/rejected."""
    row: dict[str, Any] = {
        "id": ex.id,
        "prompt": ex.prompt,
        "chosen": chosen,
        "rejected": rejected,
        "label_source": label_source,
        "meta": {**ex.meta, **(meta or {})},
    }
    if candidates is not None:
        row["candidates"] = candidates
    return row
