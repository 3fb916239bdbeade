"""Replies grounded in the recommender's candidates: the prompt that carries them, the rewards.

ECR's retrieval-augmented prompt gives the language model the recommender's top movies and
asks it to turn them into a reply. :func:`with_candidates` does that to a crs prompt row: the
last seeker turn gets a note naming the top ``k`` candidates (name with its year, as the
catalogue writes it) and what the seeker said about the movies mentioned so far (liked,
disliked, seen; where known), and ``meta["candidates"]`` keeps their ids for the rewards.

Rewards (both in [0, 1], built by :mod:`rlhf_lab.reward_components`):

- ``crs/grounded`` (:func:`grounded_score`): 1.0 when the reply names a gold movie,
  :data:`CANDIDATE_CREDIT` when it names a candidate that is not gold, the old
  :data:`~rlhf_lab.tasks.crs.PARTIAL_CREDIT` for another known movie, 0.0 for none;
- ``crs/no_hallucination`` (:func:`hallucinated_titles`): 0.0 when the reply presents as a
  title (a ``Name (year)``, or a capitalised name in quotes) something that is neither a
  candidate, a movie of the dialogue, nor in ``data.catalogue``; else 1.0. Its weight is the
  hallucination penalty (a reply that invents a title loses it);
- ``crs/empathy`` (:func:`empathy_score`): the reply's emotional intensity, the magnitude of
  VADER's compound score (Hutto & Gilbert 2014, ``vaderSentiment``): offline, no model.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlhf_lab.data.rows import Row
from rlhf_lab.tasks.crs import (
    PARTIAL_CREDIT,
    MovieCatalogue,
    _mentions,
    per_reply,
    row_catalogue,
)

CANDIDATE_CREDIT = 0.6
"""Score for naming a recommender candidate that is not the gold movie."""

NOTE_HEADER = "[Recommender candidates]"
"""First line of the note :func:`with_candidates` adds to the last seeker turn."""

# Lower-case words titles keep inside ("Manchester by the Sea", "Freddy vs. Jason").
_SMALL = r"(?:of|the|a|an|and|or|in|on|to|for|at|by|with|from|as|till?|vs\.?|into|&|-|–|—|:)"
_WORD = r"[A-Z0-9][\w'’.:!?,/*%-]*"
# A run of capitalised words (small words allowed inside) right before a "(year)".
_TITLE_WITH_YEAR = re.compile(rf"({_WORD}(?:\s+(?:{_SMALL}\s+)*{_WORD})*)\s*\(\s*(\d{{4}})\s*\)")
_QUOTED = re.compile(r"[\"“]([A-Z0-9][^\"“”\n]{1,80})[\"”]")

_FEELING = {"liked": "liked", "disliked": "disliked", "seen": "has seen"}


def _feelings(meta: Mapping[str, Any], name: Callable[[str], str | None]) -> list[str]:
    out = []
    for m in meta.get("context_movies") or ():
        label = name(str(m.get("id")))
        if label is None:
            continue
        said = []
        if m.get("liked") == 1:
            said.append(_FEELING["liked"])
        elif m.get("liked") == 0:
            said.append(_FEELING["disliked"])
        if m.get("seen") == 1:
            said.append(_FEELING["seen"])
        if said:
            out.append(f"{' and '.join(said)} {label}")
    return out


def candidate_note(
    candidates: Sequence[str], meta: Mapping[str, Any], name: Callable[[str], str | None]
) -> str:
    """The note for one prompt: the candidates by name, then the seeker's stated feelings."""
    names = [n for n in (name(c) for c in candidates) if n]
    lines = [NOTE_HEADER, "Movies to consider: " + "; ".join(names) + "."]
    feelings = _feelings(meta, name)
    if feelings:
        lines.append("The user " + "; ".join(feelings) + ".")
    return "\n".join(lines)


def with_candidates(
    row: Mapping[str, Any], candidates: Sequence[str], catalogue: MovieCatalogue | None, k: int
) -> dict[str, Any]:
    """A copy of crs prompt ``row`` grounded in the first ``k`` of ``candidates`` (ids).

    Names come from the row's ``meta["movies"]`` over ``catalogue``; ids neither knows are
    dropped. The note goes at the end of the last user turn (chat templates such as Llama 2's
    reject a system turn after the first message).
    """
    meta = dict(row.get("meta") or {})
    cat = row_catalogue(row, catalogue)
    kept = [c for c in candidates if cat.name(c)][:k]
    prompt = [dict(m) for m in row.get("prompt") or []]
    note = candidate_note(kept, meta, cat.name)
    last_user = max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=None)
    if last_user is None:
        prompt.append({"role": "user", "content": note})
    else:
        prompt[last_user]["content"] = f"{prompt[last_user]['content']}\n\n{note}"
    movies = dict(meta.get("movies") or {})
    movies.update({c: str(cat.name(c)) for c in kept})
    meta |= {"movies": movies, "candidates": kept}
    return {**row, "prompt": prompt, "meta": meta}


def grounded_score(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> float:
    """1.0 gold, :data:`CANDIDATE_CREDIT` a non-gold candidate, ``PARTIAL_CREDIT`` another
    known movie, 0.0 none (module docstring)."""
    mentioned, hit = _mentions(reply, row, catalogue)
    if hit:
        return 1.0
    candidates = {str(c) for c in (row.get("meta") or {}).get("candidates") or ()}
    if candidates & set(mentioned):
        return CANDIDATE_CREDIT
    return PARTIAL_CREDIT if mentioned else 0.0


def _known(cat: MovieCatalogue, title: str, year: int | None) -> bool:
    """Is ``title``, or what follows a capitalised lead-in ("Try", "I"), the start of a known
    title of that year? (Whole-run matching only: "Try Moonlight Expresso (2003)" must not
    pass because "Moonlight" is a film.)"""
    words = title.split()
    return any(cat.knows_title(" ".join(words[i:]), year) for i in range(len(words)))


def hallucinated_titles(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> list[str]:
    """Titles ``reply`` presents (``Name (year)`` or a capitalised quoted name) that no
    catalogue the row knows (its movies, candidates, gold, ``catalogue``) contains: not even as
    the start of a longer title, after a capitalised lead-in word, with the same year."""
    cat = row_catalogue(row, catalogue)
    out = []
    for m in _TITLE_WITH_YEAR.finditer(reply):
        if not _known(cat, m.group(1), int(m.group(2))):
            out.append(m.group(0).strip())
    for m in _QUOTED.finditer(reply):
        if not _known(cat, m.group(1).strip(), None):
            out.append(m.group(1).strip())
    return out


def no_hallucination_score(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> float:
    """0.0 when ``reply`` names a title no catalogue knows (:func:`hallucinated_titles`)."""
    return 0.0 if hallucinated_titles(reply, row, catalogue) else 1.0


def grounded_reward(
    catalogue: MovieCatalogue | None,
) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``crs/grounded`` component: :func:`grounded_score` over ``catalogue``."""
    return per_reply(grounded_score, catalogue)


def no_hallucination_reward(
    catalogue: MovieCatalogue | None,
) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``crs/no_hallucination`` component: :func:`no_hallucination_score`."""
    return per_reply(no_hallucination_score, catalogue)


@functools.cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def empathy_score(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> float:
    """Emotional intensity of ``reply`` in [0, 1]: ``|compound|`` of VADER, the lexicon and
    rules model of Hutto & Gilbert (2014) made for short informal text. ECR's "emotional
    intensity" rubric, offline; it rewards feeling words and exclamation, not their fit to the
    dialogue (the judge's rubrics are for that)."""
    return abs(float(_vader().polarity_scores(reply)["compound"]))


def empathy_reward(
    catalogue: MovieCatalogue | None,
) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``crs/empathy`` component: :func:`empathy_score`."""
    return per_reply(empathy_score, catalogue)
