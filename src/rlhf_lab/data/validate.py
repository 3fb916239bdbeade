"""Row validation: why a source row is dropped, and the checks that decide it.

Every dropped row becomes a :class:`Rejected` record (reason, field, detail, source file and
line) that the stage writes to ``data/invalid/<split>.jsonl``; counts per reason go to the
metrics. The reasons, one per kind of problem a user can fix in their data:

======================== ======================================================================
``bad_json``             the line is not valid JSON, or nests arrays/objects deeper than
                         ``rlhf_lab.io.MAX_JSON_DEPTH`` (100) levels
``duplicate_key``        an object in the row has the same key twice (JSON keeps the last one
                         silently: which value was meant is unknown)
``bad_encoding``         the line's bytes are not valid UTF-8, or a text anywhere in the row
                         (turns, ids, movie names, urls) holds a lone surrogate (JSON
                         ``"\\ud800"``) that no UTF-8 file or tokenizer can take
``missing_field``        a required field is absent (or null)
``wrong_type``           a field has the wrong type (e.g. ``chosen`` is a list, a line is not
                         a JSON object)
``empty_text``           a prompt turn, reference, chosen or rejected text is blank
``too_long``             a single turn or reply is longer than ``data.max_chars`` characters
``chosen_equals_rejected`` the two replies of a pair are the same text
``bad_transcript``       an HH-RLHF transcript that does not parse into Human/Assistant turns,
                         or whose chosen and rejected differ before the final reply
``duplicate``            the same example (or id) was already read
``code_too_nested``      docstring task: the function nests deeper than Python's parser takes
                         (``ast.parse`` raises RecursionError / MemoryError or "too many
                         nested parentheses"), so no reward could analyse it
``bad_code``             humaneval: the prompt + canonical solution do not parse, the
                         ``entry_point`` is not a top-level function in it, or it has no
                         docstring to use as the reference
``unknown_id``           crs_turns: a ``rec`` / ``entity`` id that neither the id maps beside
                         the file (``entity2id.json``, ``item_ids.json``) nor ``data.catalogue``
                         name, or a ``rec`` id that ``item_ids.json`` does not list as an item
``no_preference``        not an error: a human-judged row whose label prefers neither reply
                         (an arena ``tie`` or ``both_bad`` vote); kept in ``data/invalid`` for
                         the record, counted apart (``data/no_preference``), never towards
                         ``data.max_invalid_fraction``
``unfinished_sample``    a reply sampled for a pair hit ``data.sample_max_new_tokens`` and was
                         not usable under ``data.unfinished_samples`` (no sentence end to trim
                         back to, or the policy is ``drop``)
======================== ======================================================================
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BAD_JSON = "bad_json"
DUPLICATE_KEY = "duplicate_key"
BAD_ENCODING = "bad_encoding"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
TOO_LONG = "too_long"
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
BAD_TRANSCRIPT = "bad_transcript"
DUPLICATE = "duplicate"
CODE_TOO_NESTED = "code_too_nested"
UNKNOWN_ID = "unknown_id"
BAD_CODE = "bad_code"
UNFINISHED_SAMPLE = "unfinished_sample"
NO_PREFERENCE = "no_preference"

REASONS: tuple[str, ...] = (
    BAD_JSON,
    DUPLICATE_KEY,
    BAD_ENCODING,
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_TEXT,
    TOO_LONG,
    CHOSEN_EQUALS_REJECTED,
    BAD_TRANSCRIPT,
    DUPLICATE,
    CODE_TOO_NESTED,
    UNKNOWN_ID,
    BAD_CODE,
)
"""Every reason a source row is rejected; the metrics list each one (0 included) so keys stay
stable. ``unfinished_sample`` is not among them: it drops a pair (``pairs/dropped_*``), never
a source row. Nor is ``no_preference``: it skips a row that holds no pair, no error."""

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


class RowError(Exception):
    """A source row is unusable: raised by parsers and checks, turned into a Rejected record."""

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(f"{reason}: {field + ': ' if field else ''}{detail}")
        self.reason = reason
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class Origin:
    """Where a row came from: the source (file name, hub id or 'chitchat') and its line."""

    source: str
    """Source label: a local file's path as given, ``<hub id>[<split>]`` or ``chitchat``."""
    line: int
    """1-based line of a JSONL file, row of a parquet/hub dataset, or conversation number."""
    split: str
    """Name of the source split (local file name without extensions, hub split, 'train')."""

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class Rejected:
    """A dropped row: what was wrong, where, and the row itself for inspection."""

    reason: str
    field: str | None
    detail: str
    origin: Origin
    id: str | None = None
    raw: Any = None
    """The raw line text (rows that failed before parsing) or the normalised example."""

    @classmethod
    def from_error(
        cls, err: RowError, origin: Origin, *, id: str | None = None, raw: Any = None
    ) -> Rejected:
        return cls(err.reason, err.field, err.detail, origin, id, raw)

    def to_json(self) -> dict[str, Any]:
        # Every part through _printable: a rejected row is recorded whatever it holds.
        return _printable(
            {
                "reason": self.reason,
                "field": self.field,
                "detail": self.detail,
                "source": self.origin.source,
                "line": self.origin.line,
                "id": self.id,
                "raw": self.raw,
            }
        )

    def describe(self) -> str:
        """One line: ``file:line: reason: field: detail``."""
        where = f"{self.field}: " if self.field else ""
        return _printable(f"{self.origin}: {self.reason}: {where}{self.detail}")


def _printable(value: Any) -> Any:
    """``value`` as JSON that can be saved as UTF-8, whatever a source put in it.

    Lone surrogates become ``\\udXXX`` text; values JSON has no type for (parquet timestamps,
    bytes, decimals) become their ``str``; NaN/inf become "nan"/"inf" (JSON has no NaN).
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_printable(str(k)): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return _printable(str(value))


def require(row: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
    """``row[key]`` if present (not null) and of type ``kind``; RowError otherwise."""
    name = f"{where}{key}"
    if key not in row or row[key] is None:
        raise RowError(MISSING_FIELD, name, f"required field {name!r} is missing")
    value = row[key]
    # bool is an int subclass; a boolean where an id is expected is a data error, not an id.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = _TYPE_NAMES.get(kind, kind.__name__)
        raise RowError(WRONG_TYPE, name, f"expected {want}, got {type(value).__name__}")
    return value


def first_present(row: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` present (not null) in ``row``, or None."""
    return next((k for k in keys if row.get(k) is not None), None)


def _check_utf8(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON can escape a lone surrogate ("\\ud800"): valid JSON, but not text that any
        # tokenizer (or our UTF-8 output files) can take.
        bad = f"\\u{ord(text[exc.start]):04x}"
        raise RowError(
            BAD_ENCODING, _printable(field), f"unencodable character {bad} at {exc.start}"
        ) from None


def check_encodable(value: Any, field: str) -> None:
    """Every string in ``value`` (keys included, at any depth) can be written as UTF-8.

    For the parts of a row no text check reads (ids, ``meta``: ReDial movie names, urls),
    which would otherwise fail only when the stage writes its outputs, after sampling.
    """
    if isinstance(value, str):
        _check_utf8(value, field)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_utf8(str(k), f"{field} key")
            check_encodable(v, f"{field}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_encodable(v, f"{field}[{i}]")


def check_text(text: str, field: str, max_chars: int) -> None:
    """Reject blank texts, texts over ``max_chars`` characters and unencodable text."""
    _check_utf8(text, field)
    if not text.strip():
        raise RowError(EMPTY_TEXT, field, "text is empty")
    if len(text) > max_chars:
        raise RowError(TOO_LONG, field, f"{len(text)} characters > data.max_chars {max_chars}")


def check_prompt(prompt: list[dict[str, str]], max_chars: int) -> None:
    """A chat prompt: at least one turn, each non-blank and not too long, ending with the user."""
    if not prompt:
        raise RowError(EMPTY_TEXT, "prompt", "the prompt has no turns")
    for i, turn in enumerate(prompt):
        check_text(turn["content"], f"prompt[{i}]", max_chars)
    if prompt[-1]["role"] != "user":
        # Only reachable through a loader bug: loaders build prompts that end with the user.
        raise RowError(WRONG_TYPE, "prompt", "the prompt does not end with a user turn")


def check_pair(chosen: str, rejected: str, max_chars: int) -> None:
    """Both replies non-blank and short enough, and not the same text."""
    check_text(chosen, "chosen", max_chars)
    check_text(rejected, "rejected", max_chars)
    if chosen.strip() == rejected.strip():
        raise RowError(CHOSEN_EQUALS_REJECTED, "rejected", "chosen and rejected are identical")


def content_key(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (ids, split groups)."""
    import json

    # default=str: raw source values (a parquet timestamp in a ReDial message) must hash too.
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    # surrogatepass: a lone surrogate (JSON "\\ud800") must hash, so check_text can reject it.
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def text_key(prompt: list[dict[str, str]], *replies: str | None) -> bytes:
    """Duplicate-detection key of a prompt and its replies (cheaper than JSON on 130k rows)."""
    h = hashlib.sha256()
    for turn in prompt:
        h.update(f"{turn['role']}\x1f{turn['content']}\x1e".encode("utf-8", "surrogatepass"))
    for reply in replies:
        h.update(
            b"\x1d" + (reply.encode("utf-8", "surrogatepass") if reply is not None else b"\x00")
        )
    return h.digest()


@dataclass
class Deduper:
    """Remembers ids and content keys seen so far; the first occurrence of each wins."""

    _ids: set[str] = field(default_factory=set)
    _keys: dict[bytes, str] = field(default_factory=dict)

    def check(self, id: str, key: bytes) -> None:
        """RowError(duplicate) if ``id`` or the content ``key`` was seen; else remember them."""
        if key in self._keys:
            raise RowError(DUPLICATE, None, f"same content as {self._keys[key]}")
        if id in self._ids:
            raise RowError(DUPLICATE, "id", f"id {id!r} was already used by another row")
        self._ids.add(id)
        self._keys[key] = id
