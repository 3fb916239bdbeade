"""The three row contracts, as types, and the normalised example every source is turned into.

Every stage after ``prepare_preference`` reads and writes JSON Lines of three kinds of row, the
project's data contracts. They are :class:`~typing.TypedDict` s: plain dicts on disk and in
memory, with their fields named and documented here, once.

* :class:`PromptRow` — ``data/prompts/<split>.jsonl``: a prompt, its human reference reply
  (or null) and the task's data; what PPO samples from, evaluate scores and every reward
  component reads.
* :class:`PreferenceRow` — ``data/preference/<split>.jsonl``: a prompt with a chosen and a
  rejected reply and who labelled them; under ``data.pairs: judge`` a *candidate row* instead
  (``candidates``, chosen/rejected null) that ``score_with_llm`` labels.
* :class:`ScoredRow` — ``data/scored/<split>.jsonl``: a preference row plus the judge's
  ``scores`` per reply and rubric dimension and the ``judge`` that gave them.

Sources in TRL's standard formats (prompt/chosen/rejected as strings or messages, prompt-only,
prompt-completion, messages) and the task formats all normalise to these
(:mod:`rlhf_lab.data.sources`). An :class:`Example` is one prompt (a chat, ending with a user
turn) with either a human reference reply (chitchat, redial, docstring) or a human-labelled
pair (hh); :meth:`Example.to_prompt_row` and :func:`preference_row` write the rows.
"""

# No ``from __future__ import annotations`` here: TypedDict reads NotRequired[...] from the
# evaluated annotations (as strings every key would count as required, Python 3.11).
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from rlhf_lab.data.validate import Origin

Message = dict[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": str}``."""

LabelSource = Literal["human", "reference", "judge"]
"""Who chose between chosen and rejected: ``human`` (hh, arena votes, and reference-vs-sample
pairs, whose chosen reply a person wrote) or ``judge`` (``data.pairs: judge``); ``reference``
is accepted when rows are read back and its agreement is reported apart, though
``prepare_preference`` writes only the other two."""


class _ChatRow(TypedDict):
    id: str
    """Stable id (the source's where it has one, else a content hash); readers accept an
    integer too."""
    prompt: list[Message]
    """The conversation so far, ending with a user turn; no system turn
    (``task.system_prompt`` adds it when the prompt is rendered)."""
    meta: dict[str, Any]
    """Task data and provenance: ``origin`` (file:line), the crs ``movies`` / ``gold_movies``,
    the docstring task's ``code`` / ``setup``, every unused source column."""


class PromptRow(_ChatRow):
    """A prompt row (``data/prompts``)."""

    reference: str | None
    """The human reply to the prompt; null for prompt-only sources."""


class PreferenceRow(_ChatRow):
    """A preference row (``data/preference``)."""

    chosen: str | None
    """The preferred reply; null on a candidate row."""
    rejected: str | None
    """The other reply; null on a candidate row."""
    label_source: LabelSource
    """Who labelled the pair (:data:`LabelSource`)."""
    candidates: NotRequired[list[str]]
    """Candidate rows only (``data.pairs: judge``): two or more distinct sampled replies."""


class JudgeInfo(TypedDict):
    """The judge behind a scored row's scores."""

    model: str
    """The judge's model id."""
    rubric_sha: str
    """Hash of the rubric text it was asked with (a rubric edit re-scores)."""


ReplyScores = dict[str, float | None]
"""One reply's ratings per rubric dimension plus ``overall`` (1..5; null: the item failed)."""


class ScoredRow(PreferenceRow):
    """A scored row (``data/scored``): a labelled preference row with the judge's scores.

    A candidate row comes out as the pair the judge picked (best and worst by ``overall``,
    ``label_source: "judge"``) or is dropped as a near-tie.
    """

    scores: dict[str, ReplyScores] | None
    """``{"chosen": {...}, "rejected": {...}}``; null when ``judge.backend`` is ``none``."""
    judge: JudgeInfo | None
    """Null when ``judge.backend`` is ``none``."""
    candidate_scores: NotRequired[list[ReplyScores]]
    """Judge-labelled rows: every candidate's scores, in ``candidates`` order."""
    fallback: NotRequired[list[str]]
    """Scores that are the neutral fallback (``"chosen/helpfulness"``), left out of agreement."""
    pairwise: NotRequired[dict[str, Any]]
    """``judge.pairwise``: ``{"p_chosen": float | None}`` (plus ``fallback``)."""


Row = dict[str, Any]
"""A row as read from JSONL before it is known to be one of the three (or a mix of fields a
caller needs from any of them: ``prompt``, ``reference``, ``meta``)."""


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

    def to_prompt_row(self) -> PromptRow:
        """The :class:`PromptRow` of this example."""
        return {
            "id": self.id,
            "prompt": self.prompt,
            "reference": self.reference,
            "meta": self.meta,
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for data/invalid (a rejected example is shown as it was normalised)."""
        row: dict[str, Any] = dict(self.to_prompt_row())
        if self.chosen is not None or self.rejected is not None:
            row.update(chosen=self.chosen, rejected=self.rejected)
        return row


def preference_row(
    ex: Example,
    chosen: str | None,
    rejected: str | None,
    label_source: LabelSource,
    meta: dict[str, Any] | None = None,
    candidates: list[str] | None = None,
) -> PreferenceRow:
    """A :class:`PreferenceRow`; candidate rows carry ``candidates`` and null chosen/rejected."""
    row: PreferenceRow = {
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
