"""What a task's judge rubric is made of: its dimensions, the 1..5 scale and the labels.

Each task package declares a :class:`Rubric`; :mod:`rlhf_lab.judge.rubrics` renders the
prompts from it and hashes it (``rubric_sha``). The types live here, below the judge, because
the judge reads the tasks' rubrics through :func:`rlhf_lab.tasks.registry.get_task`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SCALE: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Rating values; the judge answers with one of these digits."""


@dataclass(frozen=True)
class Dimension:
    """One rubric dimension: the question and what the ends of the scale mean."""

    name: str
    question: str
    low: str
    high: str


@dataclass(frozen=True)
class Rubric:
    """A task's rubric: what the judge is shown and asked."""

    context_label: str
    """Heading of what the judge reads before the reply (``Conversation so far``)."""
    reply_label: str
    """Heading of the reply (``Assistant's next reply``)."""
    reply_noun: str
    """What a reply is called in the head-to-head question (``reply``, ``docstring``)."""
    dimensions: tuple[Dimension, ...]
    """The rated dimensions; ``overall`` is their mean."""
    rules: Mapping[str, str] = field(default_factory=dict)
    """Dimension -> the rule that fixes its score without asking the judge (hashed with the
    rubric; the task's ``forced_scores`` applies it)."""

    def labels(self) -> dict[str, str]:
        """The three labels by name (what the rubric hash records besides the dimensions)."""
        return {
            "context_label": self.context_label,
            "reply_label": self.reply_label,
            "reply_noun": self.reply_noun,
        }


CONVERSATION_LABELS = {
    "context_label": "Conversation so far",
    "reply_label": "Assistant's next reply",
    "reply_noun": "reply",
}
"""Labels of the tasks whose context is a conversation (chat, crs)."""
