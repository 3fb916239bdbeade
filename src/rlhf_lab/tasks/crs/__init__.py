"""Empathetic conversational movie recommendation (ReDial): movie mentions and the hit reward.

A ReDial dialogue mentions movies as ``@<id>``; the prompt rows carry them in
``row["meta"]["movies"]`` (id -> name, the dialogue's ``movieMentions``) and the movies the
recommender should suggest in ``row["meta"]["gold_movies"]`` (ids or names). A generated reply
names movies in plain text, so scoring it means finding catalogue titles in free text:

- :func:`normalize_title` maps a name to a match key: lowercase, accents folded, apostrophes
  inside words dropped (``Fool's`` -> ``fools``), ``&`` read as ``and``, other punctuation as a
  space, a trailing ``(1999)`` year dropped, spaces collapsed, a leading ``the`` dropped;
- :class:`MovieCatalogue` indexes keys by their first token, so scanning a reply costs one dict
  lookup per token whatever the catalogue size (ReDial's ``movies_with_mentions.csv`` has ~7k);
- :meth:`MovieCatalogue.find_mentions` matches whole tokens only (``Up`` never matches inside
  ``upset``), longest title first, and uses a ``(year)`` written after a title to pick between
  remakes that share a name.

Which titles need extra evidence (the rule, because a reward must not pay for ordinary words):

- keys shorter than 2 characters (``M``, ``9``, ``O``) are never matched;
- *ambiguous* keys — every token a very common English or movie-chat word (:data:`COMMON_WORDS`:
  ``Up``, ``It``, ``Big``, ``Taken``, ``The Help``, ``Last Night``) or a number (``21``,
  ``300``) — match only when the reply presents them as a title: followed by a ``(year)``,
  wrapped in quotes or ``*``/``_``, or (for words) capitalised and not the first word of a
  sentence. So "I saw Up last week" is a mention, "I grew up on Pixar" and "Big fan!" are not.
  Without this a policy would collect partial credit for saying "up" or "fun".

Reward (:func:`recommendation_score`, the ``crs/recommendation`` component): 1.0 when the reply
mentions a gold movie, :data:`PARTIAL_CREDIT` when it mentions some other known movie (it did
recommend, just not the gold one), 0.0 when it mentions none. "Known" means the row's
``meta["movies"]``, the gold names, and ``data.catalogue`` when set (:func:`load_catalogue`;
:mod:`rlhf_lab.reward_components` passes it to every caller explicitly).
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.data.rows import Row
from rlhf_lab.errors import DataError
from rlhf_lab.io import decode_utf8

PARTIAL_CREDIT = 0.3
"""Score for recommending a known movie that is not in the dialogue's gold set."""

MIN_KEY_CHARS = 2
"""Normalised titles shorter than this (``M``, ``9``) are never matched."""

# Very common English words plus words that movie chat uses all the time. A title made only of
# these (after dropping a leading "the") is ambiguous and needs title evidence in the reply.
COMMON_WORDS: frozenset[str] = frozenset(
    """
    a about above across act action actually after again against ago ah air all almost alone
    along already also always am amazing among an and animated animation another any anything
    are area around as ask at away awesome baby back bad be beautiful because become bed been
    before begin being believe below best better between big bit black blue body book both boy
    break bring brother but by call came can car care case cause change character child children
    city classic close cold come comedy coming could country couple course crazy cute dad dark
    day days dead deal dear death did die different do does dog done door down drama dream drive
    during each early earth easy else end enjoy enough even evening ever every everyone
    everything eye eyes face fact fall family fan fans far father favorite fear feel feeling few
    fight film films find fine fire first five follow food for forever found four free friend
    friends from front full fun funny game gave get gets getting girl girls give go god goes
    going gone good got great green group grow guess guy guys had half hand happen happy hard
    has have he head hear heard heart hello help her here hey hi high him his history hit hold
    home hope horror hot hour hours house how however i idea if important in inside instead
    interesting into is it its job just keep kid kids kill kind king know known last late later
    laugh lead learn least leave left less let life light like line little live long look looking
    lost lot lots love loved lovely made make man many may maybe me mean men might mind miss
    mom money month more morning most mother move movie movies much music must my name need
    never new next nice night no none not nothing now of off often oh ok okay old on once one
    only open or order other others our out over own part people perfect person picture place
    plan play please plot point power pretty probably problem put quite rather read ready real
    really red remember rest right road room run sad said same saw say scary school sea second
    see seeing seem seen send sense set seven several she should show side since sister six
    small so some someone something sometimes son soon sorry sound start stay still stop story
    strange street such suggest summer sun super sure take taken talk tell ten than thank thanks
    that the their them then there these they thing things think this those though thought
    three through time times to today together told too top took toward town tree tried true
    try turn twist two under until up upon us use very wait walk want war was watch watched
    watching water way we week weekend well went were what when where which while white who
    whole why wild will win wish with woman women wonder wonderful word words work world would
    wow write year years yes yet you young your yours
    """.split()  # noqa: SIM905 - a word list reads better as text
)

_QUOTES = frozenset("\"'“”‘’«»*_`")
_YEAR_AFTER = re.compile(r"\s*\(\s*(\d{4})\s*\)")
_YEAR_SUFFIX = re.compile(r"\s*\(\s*\d{4}\s*\)\s*$")
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_AT_MENTION = re.compile(r"@(\d+)")


def _fold(token: str) -> str:
    """Lowercase, strip accents and inner apostrophes: ``Amélie`` -> ``amelie``."""
    decomposed = unicodedata.normalize("NFKD", token.lower())
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return folded.replace("'", "").replace("’", "")


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """``(normalised token, start, end)`` for every word of ``text``; ``&`` reads as ``and``."""
    out = []
    for m in _TOKEN.finditer(text.replace("&", " and ")):
        out.append((_fold(m.group()), m.start(), m.end()))
    return out


def _year_of(name: str) -> int | None:
    m = re.search(r"\(\s*(\d{4})\s*\)\s*$", name)
    return int(m.group(1)) if m else None


def normalize_title(name: str) -> str:
    """The match key of a movie name: ``"The Fool's Gold  (2008)"`` -> ``"fools gold"``.

    Lowercase, accents folded, inner apostrophes dropped, ``&`` -> ``and``, other punctuation
    read as a space, a trailing ``(year)`` dropped, spaces collapsed, a leading ``the`` dropped.
    """
    words = [tok for tok, _, _ in _tokens(_YEAR_SUFFIX.sub("", name))]
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return " ".join(words)


def _is_ambiguous(key_tokens: tuple[str, ...]) -> bool:
    return all(tok in COMMON_WORDS or tok.isdigit() for tok in key_tokens)


@dataclass(frozen=True)
class _Entry:
    movie_id: str
    year: int | None


class MovieCatalogue:
    """Movie ids and names, indexed for finding mentions in free text.

    ``movies`` maps id -> name (a ReDial dialogue's ``movieMentions``); ``csv_path`` adds a
    ReDial ``movies_with_mentions.csv`` (columns ``movieId,movieName,nbMentions``). ``base`` is
    another catalogue consulted as well, so a per-dialogue catalogue can sit on top of the
    global one without copying its index.
    """

    def __init__(
        self,
        movies: Mapping[Any, str] | None = None,
        csv_path: str | Path | None = None,
        *,
        base: MovieCatalogue | None = None,
    ) -> None:
        self._base = base
        self._names: dict[str, str] = {}
        self._by_key: dict[tuple[str, ...], list[_Entry]] = {}
        # first token -> key length -> keys; a scan tries each length once, longest first
        self._index: dict[str, dict[int, set[tuple[str, ...]]]] = {}
        if csv_path is not None:
            self._add_all(_read_catalogue_csv(csv_path))
        if movies:
            self._add_all(movies.items())

    @classmethod
    def from_csv(cls, path: str | Path) -> MovieCatalogue:
        """A catalogue from a ReDial ``movies_with_mentions.csv``."""
        return cls(csv_path=path)

    def with_movies(self, movies: Mapping[Any, str]) -> MovieCatalogue:
        """A catalogue of ``movies`` layered over this one (this one is not changed)."""
        return MovieCatalogue(movies, base=self)

    def _add_all(self, items: Iterable[tuple[Any, str]]) -> None:
        for movie_id, name in items:
            self._add(str(movie_id), str(name))

    def _add(self, movie_id: str, name: str) -> None:
        self._names[movie_id] = name
        key = normalize_title(name)
        if len(key) < MIN_KEY_CHARS:
            return
        key_tokens = tuple(key.split())
        entries = self._by_key.setdefault(key_tokens, [])
        if all(e.movie_id != movie_id for e in entries):
            entries.append(_Entry(movie_id, _year_of(name)))
        by_len = self._index.setdefault(key_tokens[0], {})
        by_len.setdefault(len(key_tokens), set()).add(key_tokens)

    def __len__(self) -> int:
        return len(self._all_names())

    def ids(self) -> list[str]:
        """Every movie id, in the order the catalogue (then the layers above it) added them."""
        return list(self._all_names())

    def __contains__(self, movie_id: object) -> bool:
        return self.name(str(movie_id)) is not None

    def _layers(self) -> list[MovieCatalogue]:
        layers: list[MovieCatalogue] = []
        cat: MovieCatalogue | None = self
        while cat is not None:
            layers.append(cat)
            cat = cat._base
        return layers

    def _all_names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for layer in reversed(self._layers()):
            names.update(layer._names)
        return names

    def name(self, movie_id: Any) -> str | None:
        """The name recorded for ``movie_id`` (top layer wins), or None."""
        for layer in self._layers():
            if str(movie_id) in layer._names:
                return layer._names[str(movie_id)]
        return None

    def key(self, movie_id: Any) -> str | None:
        """The match key (:func:`normalize_title`) of ``movie_id``'s name, or None."""
        name = self.name(movie_id)
        return None if name is None else normalize_title(name)

    def knows_title(self, name: str, year: int | None = None) -> bool:
        """Does a title start with ``name``'s key (``Lord of the Rings`` for ``The Lord of the
        Rings: The Fellowship of the Ring``), with ``year`` when both give one?"""
        tokens = tuple(normalize_title(name).split())
        if not tokens:
            return False
        n = len(tokens)
        return any(
            key[:n] == tokens and (year is None or any(e.year in (None, year) for e in entries))
            for layer in self._layers()
            for key, entries in layer._by_key.items()
        )

    def _candidates(self, words: list[str], i: int) -> list[tuple[str, ...]]:
        """Keys equal to ``words[i:i+n]`` for some n, longest first."""
        layers = [layer._index[words[i]] for layer in self._layers() if words[i] in layer._index]
        lengths = sorted({n for by_len in layers for n in by_len}, reverse=True)
        found = []
        for n in lengths:
            window = tuple(words[i : i + n])
            if len(window) == n and any(window in by_len.get(n, ()) for by_len in layers):
                found.append(window)
        return found

    def _entries(self, key_tokens: tuple[str, ...]) -> list[_Entry]:
        out: list[_Entry] = []
        for layer in self._layers():
            out.extend(e for e in layer._by_key.get(key_tokens, ()) if e not in out)
        return out

    def find_mentions(self, text: str) -> list[str]:
        """Ids of the catalogue movies ``text`` mentions, no repeats: ``@<id>`` ones, then titles.

        Whole-token, longest-title-first matching of :func:`normalize_title` keys; ambiguous
        titles need title evidence (module docstring). A title shared by several movies gives
        all their ids unless a ``(year)`` after it picks one; titles come in text order.
        ``@<id>`` (ReDial's own markup) counts as a mention when the id is in the catalogue.
        """
        found: list[str] = []

        def add(movie_id: str) -> None:
            if movie_id not in found:
                found.append(movie_id)

        for m in _AT_MENTION.finditer(text):
            if m.group(1) in self:
                add(m.group(1))
        text_for_spans = text.replace("&", " and ")
        toks = _tokens(text)
        words = [tok for tok, _, _ in toks]
        i = 0
        while i < len(toks):
            step = 1
            for key_tokens in self._candidates(words, i):
                n = len(key_tokens)
                start, end = toks[i][1], toks[i + n - 1][2]
                year_m = _YEAR_AFTER.match(text_for_spans, end)
                year = int(year_m.group(1)) if year_m else None
                if _is_ambiguous(key_tokens) and not _has_title_evidence(
                    text_for_spans, start, end, year is not None
                ):
                    continue
                entries = self._entries(key_tokens)
                if year is not None and any(e.year == year for e in entries):
                    entries = [e for e in entries if e.year == year]
                for e in entries:
                    add(e.movie_id)
                step = n + (1 if year is not None else 0)
                break
            i += step
        return found


def _has_title_evidence(text: str, start: int, end: int, has_year: bool) -> bool:
    """Is the ambiguous title at ``text[start:end]`` written as a title (module docstring)?"""
    if has_year:
        return True
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before in _QUOTES and after in _QUOTES:
        return True
    first = text[start]
    if not first.isalpha() or not first.isupper():
        return False
    preceding = text[:start].rstrip()
    # "Big fan!" at the start of a sentence is just capitalisation, not a title.
    return bool(preceding) and preceding[-1] not in '.!?:\n"“'


CATALOGUE_COLUMNS = ("movieId", "movieName")
"""Columns a catalogue CSV must have (ReDial's ``movies_with_mentions.csv`` has nbMentions too)."""


def _read_catalogue_csv(path: str | Path) -> list[tuple[str, str]]:
    """(id, name) rows of a catalogue CSV; anything unusable is a DataError naming file:line.

    Every stage that loads a catalogue comes through here, so each fails the same one-line way
    rather than with a traceback, and a short row never becomes a movie named "None".
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"data.catalogue: file not found ({path.resolve()})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the movie catalogue: {exc.strerror}") from None
    text = decode_utf8(data, str(path), DataError)
    # strict: an unclosed quote is an error, not the rest of the file read as one movie name
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    want = ",".join(CATALOGUE_COLUMNS)
    rows: list[tuple[str, str]] = []
    start = 1  # line the next row starts on (a quoted name can span lines)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the movie catalogue is empty (expected a {want} header)")
        missing = [c for c in CATALOGUE_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}:1: catalogue header lacks {', '.join(missing)} (has {header})")
        id_col, name_col = (header.index(c) for c in CATALOGUE_COLUMNS)
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path}:{start}", reader.line_num + 1
            if not row:
                continue  # blank line
            if len(row) <= max(id_col, name_col):
                n = len(row)
                raise DataError(
                    f"{where}: catalogue row has {n} field{'s' * (n != 1)}, expected {want}"
                )
            movie_id, name = row[id_col].strip(), row[name_col]
            for column, value in zip(CATALOGUE_COLUMNS, (movie_id, name), strict=True):
                if not value.strip():
                    raise DataError(f"{where}: catalogue row has an empty {column}")
            rows.append((movie_id, name))
    except csv.Error as exc:
        raise DataError(f"{path}:{start}: bad CSV: {exc}") from None
    return rows


_DBPEDIA = re.compile(r"^<?https?://dbpedia\.org/resource/(.*?)>?$")
_FILM_TAG = re.compile(r"\s*\((?:(\d{4})\s+)?(?:[\w ]+\s)?film\)$")


def entity_name(name: str) -> str:
    """A readable name for an entity key: ECR / UniCRS's DBpedia URIs, with Wikipedia's film
    disambiguator read as the year it holds (``<http://dbpedia.org/resource/Alien_(1979_film)>``
    -> ``Alien (1979)``, ``..._(film)>`` -> no year), as ReDial writes titles."""
    m = _DBPEDIA.match(name.strip())
    if not m:
        return " ".join(name.split())
    title = " ".join(m.group(1).replace("_", " ").split())
    return _FILM_TAG.sub(lambda t: f" ({t.group(1)})" if t.group(1) else "", title)


def read_id_names(path: str | Path, what: str = "data.catalogue") -> dict[str, str]:
    """id -> name from a JSON object, either id -> name or name -> id (ECR / UniCRS's
    ``entity2id.json``: ints as values; DBpedia URIs made readable by :func:`entity_name`).

    Anything unusable is a one-line DataError naming the file.
    """
    path = Path(path)
    try:
        text = decode_utf8(path.read_bytes(), str(path), DataError)
    except FileNotFoundError:
        raise DataError(f"{what}: file not found ({path.resolve()})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: bad JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: {what}: expected a JSON object of ids and names")
    out: dict[str, str] = {}
    for key, val in value.items():
        if isinstance(val, int) and not isinstance(val, bool):  # name -> id
            out[str(val)] = entity_name(key)
        elif isinstance(val, str) and val.strip():  # id -> name
            out[str(key).strip()] = " ".join(val.split())
        else:
            raise DataError(f"{path}: {what}: {key!r} maps to {val!r}, not a name or an id")
    return out


def load_catalogue(path: str | Path | None) -> MovieCatalogue | None:
    """``data.catalogue`` as a :class:`MovieCatalogue` (None when unset): a ReDial CSV, or a
    ``.json`` id -> name (or name -> id) object (:func:`read_id_names`).

    The one loader every stage uses, so a missing or malformed file is the same one-line
    :class:`~rlhf_lab.errors.DataError` wherever it is read.
    """
    if not path:
        return None
    if str(path).endswith(".json"):
        return MovieCatalogue(read_id_names(path))
    # _read_catalogue_csv already turns every problem into a DataError naming file:line.
    return MovieCatalogue.from_csv(path)


def _gold(row: Row) -> tuple[set[str], dict[str, str]]:
    """Gold ids, and gold names keyed ``name:<key>`` -> name, from ``meta["gold_movies"]``.

    An all-digit entry (int or str) is a ReDial id; anything else is a movie name.
    """
    ids: set[str] = set()
    names: dict[str, str] = {}
    for g in (row.get("meta") or {}).get("gold_movies") or ():
        s = str(g).strip().lstrip("@")
        if s.isdigit():
            ids.add(s)
        elif normalize_title(s):
            names[f"name:{normalize_title(s)}"] = s
    return ids, names


def row_catalogue(row: Row, catalogue: MovieCatalogue | None = None) -> MovieCatalogue:
    """The catalogue for one row: its ``meta["movies"]`` and gold names over ``catalogue``."""
    base = catalogue
    movies: dict[str, str] = {}
    _, gold_names = _gold(row)
    movies.update(gold_names)
    movies.update({str(k): v for k, v in ((row.get("meta") or {}).get("movies") or {}).items()})
    return MovieCatalogue(movies, base=base)


def _mentions(reply: str, row: Row, catalogue: MovieCatalogue | None) -> tuple[list[str], bool]:
    """(mentioned ids, whether one of them is gold) for one reply."""
    cat = row_catalogue(row, catalogue)
    mentioned = cat.find_mentions(reply)
    gold_ids, gold_names = _gold(row)
    gold_keys = {k.removeprefix("name:") for k in gold_names}
    hit = any(m in gold_ids or m in gold_names or cat.key(m) in gold_keys for m in mentioned)
    return mentioned, hit


def recommendation_score(
    reply: str,
    row: Row,
    catalogue: MovieCatalogue | None = None,
    partial_credit: float = PARTIAL_CREDIT,
) -> float:
    """1.0 if ``reply`` mentions a gold movie, ``partial_credit`` for another known one, else 0.

    A gold entry given by name also matches any catalogue movie with the same
    :func:`normalize_title` key. ``catalogue`` adds movies beyond the row's own.
    """
    mentioned, hit = _mentions(reply, row, catalogue)
    if hit:
        return 1.0
    return float(partial_credit) if mentioned else 0.0


def recommendation_hit(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> bool:
    """Does ``reply`` mention one of the row's gold movies? (evaluate's hit rate)"""
    return _mentions(reply, row, catalogue)[1]


def recommends_any(reply: str, row: Row, catalogue: MovieCatalogue | None = None) -> bool:
    """Does ``reply`` mention any known movie? (evaluate's recommendation rate)"""
    return bool(_mentions(reply, row, catalogue)[0])


GENERIC_REPLY = "I'm not sure. What kind of movies do you like?"
"""The generic reply of the discrimination check: polite, on topic, recommends nothing."""

NO_MOVIE = "that one"
"""What :func:`bad_reply_variants` writes where the reference named a movie."""


def _name_pattern(name: str) -> re.Pattern[str]:
    """A movie name as a reply writes it: ReDial's spacing ignored, the ``(year)`` optional.

    Without its year a name made of common words ("It", "Up") would match ordinary words,
    so for those the year stays required.
    """
    title = _YEAR_SUFFIX.sub("", name)
    words = r"\s+".join(re.escape(w) for w in title.split())
    year = name[len(title) :].strip()
    if year:
        optional = "?" if not _is_ambiguous(tuple(normalize_title(title).split())) else ""
        words += rf"(?:\s*{re.escape(year)}){optional}"
    return re.compile(r"(?<!\w)" + words + r"(?!\w)", re.IGNORECASE)


def bad_reply_variants(row: Row) -> dict[str, str]:
    """Deliberately bad recommender replies for ``row``, by kind, for the discrimination check.

    ``empty``; ``generic`` (:data:`GENERIC_REPLY`); ``movie_removed`` (the reference with every
    movie it names, and any ``@id``, replaced by :data:`NO_MOVIE`; when it named one);
    ``other_movie`` (the reference with its gold movies swapped for a movie of the dialogue
    that is not gold: a recommendation, but not the one the seeker got; when the dialogue has
    one). The reference itself is the good reply.
    """
    reference = row.get("reference") or ""
    meta = row.get("meta") or {}
    movies = {str(k): str(v) for k, v in (meta.get("movies") or {}).items()}
    gold = {str(g).strip().lstrip("@") for g in meta.get("gold_movies") or ()}
    out = {"empty": "", "generic": GENERIC_REPLY}
    # Longest names first, so "Toy Story 2" is replaced before "Toy Story".
    by_length = sorted(movies.items(), key=lambda kv: -len(kv[1]))
    removed = _AT_MENTION.sub(NO_MOVIE, reference)
    for _, name in by_length:
        removed = _name_pattern(name).sub(lambda _: NO_MOVIE, removed)
    if removed != reference:
        out["movie_removed"] = removed
    # Gold entries are ids (ReDial) or names (crs_turns: the rec ids resolved to names).
    gold_keys = {normalize_title(g) for g in gold if g not in movies}
    others = [
        name
        for movie_id, name in sorted(movies.items())
        if movie_id not in gold
        and normalize_title(name) not in gold_keys
        and not _name_pattern(name).search(reference)
    ]
    gold_names = [(movie_id, movies[movie_id]) for movie_id in sorted(gold) if movie_id in movies]
    gold_names += [("", g) for g in sorted(gold) if g not in movies]
    if others and gold_names:
        swapped = reference
        for movie_id, name in gold_names:
            swapped = _name_pattern(name).sub(lambda _: others[0], swapped)
            if movie_id:
                swapped = swapped.replace(f"@{movie_id}", others[0])
        if swapped != reference:
            out["other_movie"] = swapped
    return out


def per_reply(
    score_one: Callable[[str, Row, MovieCatalogue | None], float],
    catalogue: MovieCatalogue | None,
) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """A reward component ``(replies, rows) -> scores`` from a one-reply score."""

    def score(replies: Sequence[str], rows: Sequence[Row]) -> list[float]:
        if len(replies) != len(rows):
            raise ValueError(f"{len(replies)} replies for {len(rows)} rows")
        return [score_one(r, row, catalogue) for r, row in zip(replies, rows, strict=True)]

    return score


def recommendation_reward(
    catalogue: MovieCatalogue | None,
) -> Callable[[Sequence[str], Sequence[Row]], list[float]]:
    """The ``crs/recommendation`` component: :func:`recommendation_score` over ``catalogue``."""
    return per_reply(recommendation_score, catalogue)
