"""The crs task's row formats: ReDial dialogues and ECR / UniCRS / CRSLab's processed turns.

A *parser* turns one source record into zero or more :class:`~rlhf_lab.data.rows.Example` s
(:data:`rlhf_lab.data.sources.Parser`); :data:`PARSERS` gives each format's factory, which binds
``data``'s options and loads what names the movie ids (``data.catalogue``, the id maps). The
crs :class:`~rlhf_lab.tasks.base.Task` declares them, and ``prepare_preference`` hands every
task's factories to :func:`rlhf_lab.data.sources.make_parser` (``data`` never imports a task:
the layers contract).

``redial``    a ReDial dialogue (raw schema or ``community-datasets/re_dial``); one example per
              recommender turn that follows a seeker turn: prompt = the dialogue so far (seeker
              = user, recommender = assistant), reference = the recommender's reply, ``@id``
              mentions replaced by movie names; ``meta.movies`` = id -> name,
              ``meta.gold_movies`` = ids the recommender suggested in that reply,
              ``meta.context_movies`` = the movies mentioned before it with the seeker's
              ``liked`` / ``seen`` answers and the seeker's words around them.
``crs_turns`` ECR / UniCRS / CRSLab's processed ReDial: one object per recommender turn,
              ``context`` (utterances, oldest first; the last is the seeker's), ``resp`` (the
              reply), ``rec`` (recommended ids), ``entity`` / ``entity_name``, ``dialog_id``,
              ``turn_id``. Ids are named by ``entity2id.json`` (name -> id) and
              ``item_ids.json`` (a list of the ids that are items, or id -> name) beside the
              file, and ``data.catalogue`` (ReDial CSV or id -> name JSON).
              ``meta.gold_movies`` = the ``rec`` names, ``meta.movies`` = id -> name of the
              turn's entities, its recs and the catalogue movies the context mentions;
              ``meta.gold_ids`` = the ``rec`` ids, ``meta.context_movies`` = the other movies
              (no questionnaire: the words around them only).

Prompts are windowed like every format's (:func:`rlhf_lab.data.sources.window`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rlhf_lab.config import DataConfig
from rlhf_lab.data.rows import Example, Message
from rlhf_lab.data.sources import Parser, ParserFactory, merge_turns, window
from rlhf_lab.data.validate import (
    BAD_TRANSCRIPT,
    UNKNOWN_ID,
    WRONG_TYPE,
    Origin,
    RowError,
    content_key,
    require,
)
from rlhf_lab.errors import DataError
from rlhf_lab.tasks.crs import MovieCatalogue, entity_name, load_catalogue, read_id_names

# ---------------------------------------------------------------------------------- redial

_MENTION = re.compile(r"@(\d+)")


def _clean_name(name: str) -> str:
    return " ".join(name.split())  # ReDial names have double spaces: "Whip It  (2009)"


def _by_movie_id(value: Any, field: str) -> dict[str, Any]:
    """ReDial's id-keyed objects, raw (``{id: x}``) or hub (``[{"movieId": id, ...}]``) form."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for i, item in enumerate(value):
            if not isinstance(item, dict) or item.get("movieId") is None:
                raise RowError(WRONG_TYPE, f"{field}[{i}]", "expected an object with a movieId")
            out[str(item["movieId"])] = item.get("movieName", item)
        return out
    raise RowError(WRONG_TYPE, field, f"expected an object or a list, got {type(value).__name__}")


def _answer(answers: Any, key: str) -> int | None:
    """A ReDial questionnaire answer (0 no, 1 yes, 2 did not say), or None when absent."""
    value = answers.get(key) if isinstance(answers, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _context_movies(
    turns: list[tuple[bool, str]], rendered: list[Message], feelings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The movies the dialogue mentioned before a turn, first mention first, for the recommender:
    ``{"id", "liked", "seen", "said"}`` with the seeker's questionnaire answers (None where
    absent) and ``said`` = the seeker's utterances that mention it (rendered), which carry the
    words around the mention (ECR's emotion-aware preference)."""
    out: dict[str, dict[str, Any]] = {}
    for (is_rec, text), message in zip(turns, rendered, strict=True):
        for movie_id in _MENTION.findall(text):
            entry = out.setdefault(
                movie_id,
                {
                    "id": movie_id,
                    "liked": _answer(feelings.get(movie_id), "liked"),
                    "seen": _answer(feelings.get(movie_id), "seen"),
                    "said": "",
                },
            )
            if not is_rec and message["content"] not in entry["said"]:
                entry["said"] = f"{entry['said']}\n{message['content']}".strip()
    return list(out.values())


def parse_redial(
    row: Mapping[str, Any],
    origin: Origin,
    *,
    max_turns: int,
    catalogue: Callable[[str], str | None] | None = None,
) -> list[Example]:
    """One ReDial dialogue -> one example per recommender turn (the module docstring).

    ``catalogue`` names ids that the dialogue's ``movieMentions`` lacks (``data.catalogue``).
    """
    conv_id = row.get("conversationId", content_key(row.get("messages")))
    messages = require(row, "messages", list)
    recommender = require(row, "respondentWorkerId", int)
    movies: dict[str, str] = {}
    for movie_id, name in _by_movie_id(row.get("movieMentions"), "movieMentions").items():
        if isinstance(name, str) and name.strip():
            movies[movie_id] = _clean_name(name)
    # "suggested" = 0 marks a movie the seeker brought up; the recommender naming it again is
    # not a recommendation. The recommender's own answers are preferred over the seeker's.
    questions = _by_movie_id(row.get("respondentQuestions"), "respondentQuestions") or (
        _by_movie_id(row.get("initiatorQuestions"), "initiatorQuestions")
    )

    def name_of(movie_id: str) -> str | None:
        if movie_id not in movies and catalogue is not None and (name := catalogue(movie_id)):
            movies[movie_id] = _clean_name(name)
        return movies.get(movie_id)

    raw_turns: list[tuple[bool, str]] = []
    for j, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise RowError(
                WRONG_TYPE, f"messages[{j}]", f"expected an object, got {type(msg).__name__}"
            )
        text = require(msg, "text", str, where=f"messages[{j}].")
        sender = require(msg, "senderWorkerId", int, where=f"messages[{j}].")
        raw_turns.append((sender == recommender, text))
    turns = merge_turns(raw_turns, "\n")

    def render(text: str) -> str:
        # Unknown ids keep ReDial's own @id markup (crs.find_mentions still reads it).
        return _MENTION.sub(lambda m: name_of(m.group(1)) or m.group(0), text).strip()

    rendered = [
        {"role": "assistant" if is_rec else "user", "content": render(text)}
        for is_rec, text in turns
    ]
    # The seeker's own questionnaire says how they feel about a movie (ECR's preference
    # signal); the recommender's answers about the seeker stand in when it is missing.
    feelings = _by_movie_id(row.get("initiatorQuestions"), "initiatorQuestions") or questions
    examples = []
    for t, (is_rec, text) in enumerate(turns):
        if not is_rec or t == 0:
            continue  # only recommender replies to something the seeker said
        gold: list[str] = []
        for movie_id in _MENTION.findall(text):
            answers = questions.get(movie_id)
            suggested = answers.get("suggested") if isinstance(answers, dict) else None
            if suggested != 0 and movie_id not in gold:
                gold.append(movie_id)
        examples.append(
            Example(
                id=f"redial-{conv_id}-{t}",
                group=f"redial-{conv_id}",
                prompt=window(rendered[max(0, t - max_turns) : t], max_turns),
                reference=rendered[t]["content"],
                origin=origin,
                meta={
                    "movies": dict(movies),
                    "gold_movies": gold,
                    "context_movies": _context_movies(turns[:t], rendered[:t], feelings),
                    "conversation_id": str(conv_id),
                    "turn": t,
                    "origin": str(origin),
                },
            )
        )
    return examples


# ---------------------------------------------------------------------------------- crs_turns


@dataclass(frozen=True)
class IdMaps:
    """What names the ids of crs_turns rows: the maps beside the file and ``data.catalogue``."""

    names: Mapping[str, str]
    """id -> name (``entity2id.json`` inverted, ``item_ids.json`` when it names them)."""
    items: frozenset[str] | None
    """Ids ``item_ids.json`` lists as items (recommendable); None when there is no list."""
    entity_name: Callable[[str], str]
    """Names an entity given by name or URI (:func:`rlhf_lab.tasks.crs.entity_name`)."""
    catalogue: Any = None
    """``data.catalogue`` as a crs.MovieCatalogue, or None."""

    def name(self, movie_id: str) -> str | None:
        if movie_id in self.names:
            return self.names[movie_id]
        return self.catalogue.name(movie_id) if self.catalogue is not None else None


def load_id_maps(source: str, catalogue_path: str | None) -> IdMaps:
    """The :class:`IdMaps` of a local crs_turns source (maps beside it, or in the directory)."""
    path = Path(source).expanduser()
    folder = path if path.is_dir() else path.parent
    names: dict[str, str] = {}
    items: frozenset[str] | None = None
    if (folder / "entity2id.json").is_file():
        names.update(read_id_names(folder / "entity2id.json", "entity2id.json"))
    item_file = folder / "item_ids.json"
    if item_file.is_file():
        try:
            value = json.loads(item_file.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{item_file}: bad JSON: {exc}") from None
        if isinstance(value, list):
            items = frozenset(str(v) for v in value)
        else:
            item_names = read_id_names(item_file, "item_ids.json")
            names.update(item_names)
            items = frozenset(item_names)
    catalogue = load_catalogue(catalogue_path)
    # The context's movies are found by title, among the items (or every named entity).
    known = {k: v for k, v in names.items() if items is None or k in items}
    finder = MovieCatalogue(known, base=catalogue) if known else catalogue
    return IdMaps(names, items, entity_name, finder)


def _ids(row: Mapping[str, Any], field: str) -> list[Any]:
    value = row.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowError(WRONG_TYPE, field, f"expected a list, got {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, (int, str)) or isinstance(v, bool):
            raise RowError(WRONG_TYPE, f"{field}[{i}]", f"expected an id, got {type(v).__name__}")
    return value


_TITLE_YEAR = re.compile(r"\(\d{4}\)\s*$")


def _resolve(movie_id: str, field: str, maps: IdMaps, *, item: bool) -> str:
    """The name of a crs_turns id (a non-numeric "id" is the entity itself: a name or a
    DBpedia URI, made readable)."""
    if not movie_id.isdigit():
        return maps.entity_name(movie_id)
    name = maps.name(movie_id)
    if name is None:
        raise RowError(
            UNKNOWN_ID,
            field,
            f"id {movie_id} is named by neither the entity2id.json / item_ids.json beside the "
            "source nor data.catalogue",
        )
    if item and maps.items is not None and movie_id not in maps.items:
        raise RowError(UNKNOWN_ID, field, f"id {movie_id} is not an item in item_ids.json")
    return name


def _add_entity_movies(row: Mapping[str, Any], maps: IdMaps, movies: dict[str, str]) -> None:
    """Add the movies among a crs_turns row's ``entity`` ids (and ``entity_name`` s) to
    ``movies`` (id -> name), keeping names already there.

    ECR's entities mix movies with genres and people: only items count as movies (a reply
    saying "comedy" must not earn the partial credit of naming a movie).
    """
    entity_ids = _ids(row, "entity")
    entity_names = row.get("entity_name")
    paired = isinstance(entity_names, list) and len(entity_names) == len(entity_ids)
    for i, raw in enumerate(entity_ids):
        movie_id = str(raw).strip()
        name = _resolve(movie_id, f"entity[{i}]", maps, item=False)
        if paired and isinstance(entity_names[i], str) and entity_names[i].strip():
            name = " ".join(entity_names[i].split())  # the name as the text writes it
        if movie_id.isdigit():
            is_movie = maps.items is None or movie_id in maps.items
        else:  # an entity given by name counts when titled like a film, "Jaws (1975)"
            is_movie = _TITLE_YEAR.search(name) is not None
        if is_movie:
            movies.setdefault(movie_id, name)
    if isinstance(entity_names, list) and not paired:
        for name in entity_names:
            if isinstance(name, str) and _TITLE_YEAR.search(name):  # "Police Academy (1984)"
                movies.setdefault(f"name:{content_key(name)}", " ".join(name.split()))


def _said(name: str, context: list[str]) -> str:
    """The context utterances that name ``name`` (its year dropped), for the recommender's
    sentiment toward the mention; crs_turns carry no questionnaire."""
    title = _TITLE_YEAR.sub("", name).strip().lower()
    return "\n".join(c.strip() for c in context if title and title in c.lower())


def parse_crs_turns(
    row: Mapping[str, Any], origin: Origin, *, max_turns: int, maps: IdMaps
) -> list[Example]:
    """One ECR / UniCRS / CRSLab recommender turn (the module docstring)."""
    context = require(row, "context", list)
    for i, utt in enumerate(context):
        if not isinstance(utt, str):
            raise RowError(WRONG_TYPE, f"context[{i}]", f"expected text, got {type(utt).__name__}")
    context = [c for c in context if c.strip()]
    if not context:
        raise RowError(BAD_TRANSCRIPT, "context", "no seeker utterance before the reply")
    resp = require(row, "resp", str)
    movies: dict[str, str] = {}
    gold: list[str] = []
    gold_ids: list[str] = []
    for i, raw in enumerate(_ids(row, "rec")):
        name = _resolve(str(raw).strip(), f"rec[{i}]", maps, item=True)
        movies[str(raw).strip()] = name
        if name not in gold:
            gold.append(name)
        if str(raw).strip() not in gold_ids:
            gold_ids.append(str(raw).strip())
    _add_entity_movies(row, maps, movies)
    if maps.catalogue is not None:
        for movie_id in maps.catalogue.find_mentions("\n".join(context)):
            if (name := maps.catalogue.name(movie_id)) is not None:
                movies.setdefault(movie_id, name)
    # The last utterance is the seeker's; turns alternate before it.
    n = len(context)
    turns = [
        {"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": c.strip()}
        for i, c in enumerate(context)
    ]
    dialog, turn = row.get("dialog_id"), row.get("turn_id")
    conv = str(dialog) if isinstance(dialog, (str, int)) else content_key(context[:1])
    key = f"{conv}-{turn}" if isinstance(turn, (str, int)) else content_key(context, resp)
    meta: dict[str, Any] = {
        "movies": movies,
        "gold_movies": gold,
        "gold_ids": gold_ids,
        "context_movies": [
            {"id": movie_id, "liked": None, "seen": None, "said": _said(name, context)}
            for movie_id, name in movies.items()
            if movie_id not in gold_ids
        ],
        "conversation_id": conv,
        "origin": str(origin),
    }
    if isinstance(turn, (str, int)):
        meta["turn"] = turn
    return [
        Example(
            id=f"crs-{key}",
            group=f"crs-{conv}",
            prompt=window(turns, max_turns),
            reference=resp.strip(),
            origin=origin,
            meta=meta,
        )
    ]


# ---------------------------------------------------------------------------------- factories


def redial_parser(cfg: DataConfig) -> Parser:
    """``parse_redial`` with ``data.max_turns`` and the ``data.catalogue`` names bound."""
    # A DataError naming the file (and line) if the catalogue is missing or malformed.
    catalogue = load_catalogue(cfg.catalogue)
    lookup = catalogue.name if catalogue is not None else None
    return partial(parse_redial, max_turns=cfg.max_turns, catalogue=lookup)


def crs_turns_parser(cfg: DataConfig) -> Parser:
    """``parse_crs_turns`` with ``data.max_turns`` and the source's :class:`IdMaps` bound."""
    maps = load_id_maps(cfg.source, cfg.catalogue)
    return partial(parse_crs_turns, max_turns=cfg.max_turns, maps=maps)


PARSERS: dict[str, ParserFactory] = {"redial": redial_parser, "crs_turns": crs_turns_parser}
"""The crs formats by ``data.format`` (:attr:`rlhf_lab.tasks.base.Task.parsers`)."""
