"""Data sources: read records from a file, a hub dataset or the embedded chats, and parse them.

``data.source`` is one of

* ``chitchat`` — the embedded default: the ``chitchat-dataset`` package's real human chats;
* a local ``.jsonl``, ``.jsonl.gz``, ``.parquet`` or ``.json`` (an array of objects, or JSON
  Lines) file, or a directory of them (the crs id maps :data:`ID_MAP_FILES` excepted);
* anything else is a hub dataset id, read with ``datasets.load_dataset(source,
  data_dir=data.data_dir, split=data.split)`` (the only case that touches the network).

Reading yields :class:`Record` s (one per line / dataset row / conversation), each either a
parsed JSON object or the :class:`RowError` that stopped it (bad bytes, bad JSON). A *parser*
per ``data.format`` turns one record into zero or more :class:`Example` s:

``hh``        HH-RLHF ``{"chosen", "rejected"}`` transcripts; prompt = the turns both share
              before the final Assistant reply; chosen/rejected = the two final replies.
``preference`` TRL's preference rows (the arena's ``data/human/votes.jsonl`` among them).
              Explicit prompt ``{"prompt", "chosen", "rejected"}``: ``prompt`` as text
              (standard) or chat messages (conversational; system turns dropped:
              ``task.system_prompt`` sets the system turn), ``chosen``/``rejected`` as text,
              one assistant message, or the whole conversation starting with the prompt
              (``HuggingFaceH4/ultrafeedback_binarized``). Implicit prompt ``{"chosen",
              "rejected"}`` as two message lists: the prompt is the prefix they share
              (``trl-lib/ultrafeedback_binarized``). Every other key is kept in ``meta``. A row
              whose ``label`` is ``tie`` or ``both_bad`` is no pair and is skipped
              (``no_preference``).
``prompt_only`` TRL's ``{"prompt"}`` (text or messages): prompts with no reference, for PPO;
              ``data.pairs: auto`` asks the judge (``judge``) since there is no reply to prefer.
``prompt_completion`` TRL's ``{"prompt", "completion"}``: reference = the completion (text or
              one assistant message).
``messages``  TRL's ``{"messages": [...]}``: reference = the last assistant turn, prompt = the
              turns before it.
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
``docstring`` ``{"code", "docstring"}`` (also CodeSearchNet / CodeXGLUE column names); the
              prompt asks for the function's docstring, reference = the docstring,
              ``meta.code`` = the function source (its own docstring removed).
``humaneval`` ``{"task_id", "prompt", "canonical_solution", "entry_point"}`` (OpenAI HumanEval):
              reference = the entry point's docstring (its ``>>>`` examples included);
              ``meta.code`` = the function without it (signature + canonical solution),
              ``meta.setup`` = the rest of the prompt (imports, helper functions) that the
              docstring/doctest reward runs before the examples; the prompt is the docstring
              task's.
``chitchat``  one example per turn after the first: prompt = the conversation so far (the
              speaker of the target turn plays the assistant), reference = that turn.

Prompts keep the last ``data.max_turns`` turns and then start with a user turn: several chat
templates (Llama 2, Mistral, Gemma) raise on a conversation that opens with the assistant.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import itertools
import json
import re
import textwrap
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, get_args

from rlhf_lab.config import TASK_FORMATS, DataConfig, TaskConfig
from rlhf_lab.data.rows import Example, Message
from rlhf_lab.data.validate import (
    BAD_CODE,
    BAD_ENCODING,
    BAD_JSON,
    BAD_TRANSCRIPT,
    CODE_TOO_NESTED,
    DUPLICATE_KEY,
    NO_PREFERENCE,
    UNKNOWN_ID,
    WRONG_TYPE,
    Origin,
    RowError,
    content_key,
    first_present,
    require,
)
from rlhf_lab.errors import ConfigError, DataError, clip
from rlhf_lab.io import MAX_JSON_DEPTH, JsonInputError, find_duplicate, parse_json

FORMATS = tuple(f for f in get_args(DataConfig.model_fields["format"].annotation) if f != "auto")
"""Every row format ``data.format`` names (the config's Literal is the one list)."""
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".json")
ID_MAP_FILES = ("entity2id.json", "item_ids.json")
"""ECR / UniCRS id maps that sit beside crs_turns data files: read by the parser, not as rows."""
CODE_KEYS = ("code", "func_code_string", "whole_func_string", "original_string", "function")
"""Columns holding the function source, in order of preference (ours, CodeSearchNet, CodeXGLUE)."""
DOC_KEYS = ("docstring", "func_documentation_string", "docstring_summary")
"""Columns holding the docstring, in order of preference."""


@dataclass
class Record:
    """One source record: a JSON object, or the error that kept it from being one."""

    origin: Origin
    value: dict[str, Any] | None = None
    error: RowError | None = None
    raw: str | None = None
    """The raw line text when the record failed to parse (for data/invalid)."""


# ---------------------------------------------------------------------------------- reading


def _split_label(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".parquet", ".json"):
        name = name.removesuffix(suffix)
    return name or "source"


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """Records of a ``.jsonl`` / ``.jsonl.gz`` file; bad bytes and bad JSON become errors.

    A file that cannot be read on (a gzip corrupt or cut mid-stream) is a DataError naming the
    last line read: there is no row to put in data/invalid, and a silently shorter source
    would change every split.
    """
    path = Path(path)
    source, split = str(path), _split_label(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1:
                    _refuse_utf16(path, raw)
                    raw = raw.removeprefix(UTF8_BOM)  # Windows editors write one; not data
                if not raw.strip():
                    continue  # blank lines (a trailing newline) are not rows
                origin = Origin(source, lineno, split)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad = raw[exc.start : exc.start + 1].hex()
                    err = RowError(
                        BAD_ENCODING, None, f"invalid UTF-8 byte 0x{bad} at byte {exc.start}"
                    )
                    yield Record(
                        origin, error=err, raw=raw.decode("utf-8", "replace").rstrip("\r\n")
                    )
                    continue
                try:
                    value = parse_json(text, unique=True)
                except JsonInputError as exc:
                    reason = BAD_JSON if exc.duplicate_key is None else DUPLICATE_KEY
                    yield Record(origin, error=RowError(reason, None, str(exc)), raw=text.rstrip())
                    continue
                except json.JSONDecodeError as exc:
                    err = RowError(BAD_JSON, None, f"{exc.msg} at column {exc.colno}")
                    yield Record(origin, error=err, raw=text.rstrip("\r\n"))
                    continue
                if not isinstance(value, dict):
                    err = RowError(
                        WRONG_TYPE, None, f"expected a JSON object, got {type(value).__name__}"
                    )
                    yield Record(origin, error=err, raw=text.rstrip("\r\n"))
                    continue
                yield Record(origin, value)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        where = f" after line {lineno}" if lineno else ""
        raise DataError(f"{path}: cannot read{where}: {exc}") from None


UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = {b"\xff\xfe": "UTF-16 LE", b"\xfe\xff": "UTF-16 BE"}


def _refuse_utf16(path: Path, head: bytes) -> None:
    """DataError for a UTF-16 file (every line would be bad_encoding; say it once, plainly)."""
    for bom, name in _UTF16_BOMS.items():
        if head.startswith(bom):
            raise DataError(
                f"{path}: the file is {name} text (it starts with a byte-order mark); data "
                "files must be UTF-8: re-save it as UTF-8"
            )


def read_parquet(path: str | Path) -> Iterator[Record]:
    """Records of a ``.parquet`` file (line = 1-based row number)."""
    import pyarrow.parquet as pq

    path = Path(path)
    source, split = str(path), _split_label(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError mix
        raise DataError(f"{path}: cannot read parquet: {exc}") from None
    n = 0
    for group in range(pf.num_row_groups):
        try:
            # A corrupt page fails here, mid-file; to_pylist can fail on values Python
            # cannot hold (a timestamp past year 9999).
            batches = pf.iter_batches(batch_size=1024, row_groups=[group])
            values = [v for batch in batches for v in batch.to_pylist()]
        except Exception as exc:  # pyarrow's ArrowInvalid / OSError mix, ValueError
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"{path}: cannot read parquet row group {group} (rows after {n}): {first}"
            ) from None
        for value in values:
            n += 1
            yield Record(Origin(source, n, split), value)


def read_json(path: str | Path) -> Iterator[Record]:
    """Records of a ``.json`` file: a JSON array of objects (line = 1-based element number), or
    else JSON Lines (what ``datasets`` also accepts under that suffix)."""
    path = Path(path)
    duplicates: dict[int, str] = {}
    try:
        data = path.read_bytes()
        _refuse_utf16(path, data)
        # One level more than a row may have: the array holding the rows.
        value = parse_json(data, max_depth=MAX_JSON_DEPTH + 1, duplicates=duplicates)
    except JsonInputError:
        raise DataError(
            f"{path}: a row nests arrays/objects deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError):  # JSON Lines, or bad: read_jsonl says which line
        value = None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(value, list):
        yield from read_jsonl(path)
        return
    source, split = str(path), _split_label(path)
    for i, item in enumerate(value, start=1):
        origin = Origin(source, i, split)
        if not isinstance(item, dict):
            err = RowError(WRONG_TYPE, None, f"expected a JSON object, got {type(item).__name__}")
            yield Record(origin, error=err, raw=json.dumps(item)[:2000])
            continue
        dup = find_duplicate(item, duplicates)
        if dup is not None:
            err = RowError(DUPLICATE_KEY, None, f"key {clip(dup)} appears twice in one object")
            yield Record(origin, error=err, raw=json.dumps(item)[:2000])
            continue
        yield Record(origin, item)


def read_hub(source: str, data_dir: str | None, split: str) -> Iterator[Record]:
    """Records of a hub dataset (``datasets.load_dataset``); line = 1-based row number."""
    import datasets

    try:
        ds = datasets.load_dataset(source, data_dir=data_dir, split=split)
    except Exception as exc:  # network, auth, missing split: all one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"data.source {clip(source)}: not 'chitchat', not a local file "
            f"({Path(source).resolve()}), and loading it as a hub dataset failed: {first}"
        ) from None
    label = f"{source}[{split}]" if data_dir is None else f"{source}/{data_dir}[{split}]"
    for i, value in enumerate(ds, start=1):
        yield Record(Origin(label, i, split), dict(value))


def read_chitchat(path: str | Path | None = None) -> Iterator[Record]:
    """The ``chitchat-dataset`` package's conversations, one record each (line = position)."""
    if path is None:
        try:
            import chitchat_dataset
        except ImportError:
            raise DataError(
                "data.source 'chitchat' needs the Python package 'chitchat-dataset' "
                "(pip install chitchat-dataset); it is not installed"
            ) from None
        path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    for i, (conv_id, conv) in enumerate(data.items(), start=1):
        origin = Origin("chitchat", i, "train")
        if not isinstance(conv, dict):
            err = RowError(WRONG_TYPE, None, f"expected an object, got {type(conv).__name__}")
            yield Record(origin, error=err, raw=json.dumps(conv)[:2000])
            continue
        yield Record(origin, {"id": conv_id, **conv})


def local_files(source: str) -> list[Path] | None:
    """The files a local source names (a file, or a directory's data files); None if not local."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.name.endswith(FILE_SUFFIXES) and p.name not in ID_MAP_FILES
        )
        if not files:
            raise DataError(f"data.source {clip(source)}: no {'/'.join(FILE_SUFFIXES)} files in it")
        return files
    if source.startswith((".", "/", "~")) or source.endswith((*FILE_SUFFIXES, ".gz", ".json")):
        raise DataError(f"data.source {clip(source)}: file not found ({path.resolve()})")
    return None


def read_source(cfg: DataConfig) -> Iterator[Record]:
    """Records of ``data.source``, whatever it is (see the module docstring).

    A source that ends without one JSON object (none at all; or, for ``data.format: auto``,
    only unreadable ones) raises :func:`check_has_rows`'s DataError at its end: with no row,
    the problem is the data, and ``auto`` has nothing to infer a format from.
    """
    first: Record | None = None
    has_value = False
    for rec in _records(cfg):
        first = first or rec
        has_value = has_value or rec.value is not None
        yield rec
    if not has_value:
        check_has_rows(cfg, first)


def _records(cfg: DataConfig) -> Iterator[Record]:
    if cfg.source == "chitchat":
        yield from read_chitchat()
        return
    files = local_files(cfg.source)
    if files is None:
        yield from read_hub(cfg.source, cfg.data_dir, cfg.split)
        return
    for path in files:
        if path.name.endswith(".parquet"):
            yield from read_parquet(path)
        elif path.name.endswith((".jsonl", ".jsonl.gz")):
            yield from read_jsonl(path)
        elif path.name.endswith(".json"):
            yield from read_json(path)
        else:
            raise DataError(
                f"data.source {clip(str(path))}: unsupported file type; use "
                f"{', '.join(FILE_SUFFIXES)}"
            )


# ---------------------------------------------------------------------------------- format


def check_has_rows(cfg: DataConfig, first: Record | None) -> None:
    """DataError saying what is wrong with the data when ``data.source`` gave no JSON object:
    ``first`` is its first record (None: it had none; else an unreadable one). Without a row,
    ``data.format: auto`` has nothing to infer from: the problem is the data, not the params."""
    files = local_files(cfg.source) if cfg.source != "chitchat" else None
    where = ", ".join(str(p) for p in files) if files else clip(cfg.source)
    if first is None:
        what = _why_empty(files[0]) if files and len(files) == 1 else "holds no rows"
        raise DataError(f"{where}: {what}; a data file holds one JSON object per row")
    if cfg.format == "auto":
        raise DataError(
            f"{where}: no row is a JSON object (first: {first.origin}: {first.error}); "
            "a data file holds one JSON object per row"
        )


def _why_empty(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        return "the file is empty"
    if not head.removeprefix(UTF8_BOM).strip():
        return "the file holds only blank lines"
    if head.strip().startswith(b"["):
        return "the file is an empty JSON array"
    return "holds no rows"


def _format_from_keys(row: Mapping[str, Any]) -> str | None:
    """The format a first row's keys (and, where keys are shared, value types) say it has."""
    keys = set(row)
    if {"prompt", "chosen", "rejected"} <= keys:  # before hh: hh rows have no prompt
        return "preference"
    if {"chosen", "rejected"} <= keys:
        # TRL's implicit-prompt form holds message lists; HH-RLHF holds transcripts (text).
        return "preference" if isinstance(row["chosen"], list) else "hh"
    if {"messages", "movieMentions"} <= keys:
        return "redial"
    if {"context", "resp"} <= keys:
        return "crs_turns"
    if {"task_id", "prompt", "canonical_solution", "entry_point"} <= keys:
        return "humaneval"
    if keys & set(CODE_KEYS) and keys & set(DOC_KEYS):
        return "docstring"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "messages" in keys and isinstance(row["messages"], list):
        return "messages"
    if "prompt" in keys:
        return "prompt_only"
    return None


def _format_from_name(source: str) -> str | None:
    name = source.lower()
    if "hh-rlhf" in name or "hh_rlhf" in name:
        return "hh"
    if "redial" in name or "re_dial" in name:
        return "redial"
    if any(s in name for s in ("docstring", "code_search_net", "codesearchnet", "code_x_glue")):
        return "docstring"
    if "humaneval" in name or "human_eval" in name:
        return "humaneval"
    return None


def resolve_format(cfg: DataConfig, task: TaskConfig, first: Mapping[str, Any] | None) -> str:
    """``data.format``, or for 'auto': the first row's keys, then the source name, then the task.

    ``first`` is the first parsed record of the source (None if there is none).
    """
    if cfg.source == "chitchat" and cfg.format not in ("auto", "chitchat"):
        raise ConfigError(
            f"params.yaml: data.format {cfg.format!r} does not fit data.source 'chitchat' "
            "(the embedded chats); set data.format to 'auto' or 'chitchat'"
        )
    if cfg.format == "chitchat" and cfg.source != "chitchat":
        raise ConfigError(
            "params.yaml: data.format 'chitchat' reads the embedded chats; "
            f"set data.source to 'chitchat' (got {clip(cfg.source)})"
        )
    if cfg.format != "auto":
        return cfg.format
    if cfg.source == "chitchat":
        return "chitchat"
    # Row keys first: a path can mention anything ("tests/test_redial_x/docstrings.jsonl").
    found = (_format_from_keys(first) if first else None) or _format_from_name(cfg.source)
    if found:
        return found
    by_task = TASK_FORMATS[task.name]
    if by_task:
        return by_task[0]
    raise ConfigError(
        f"params.yaml: data.format: cannot infer the format of data.source {clip(cfg.source)} "
        f"from its first row's keys {clip(sorted(first or {}))}; set data.format to one of "
        f"{', '.join(FORMATS)}"
    )


# ---------------------------------------------------------------------------------- helpers


def window(turns: list[Message], max_turns: int) -> list[Message]:
    """The last ``max_turns`` turns, minus a leading assistant turn (see the module docstring)."""
    kept = turns[-max_turns:]
    if len(kept) > 1 and kept[0]["role"] == "assistant":
        kept = kept[1:]
    return kept


def _merge_turns(turns: Iterable[tuple[Any, str]], sep: str) -> list[tuple[Any, str]]:
    """Join consecutive turns of the same speaker (chat apps split one turn into messages)."""
    merged: list[tuple[Any, str]] = []
    for speaker, text in turns:
        if merged and merged[-1][0] == speaker:
            merged[-1] = (speaker, merged[-1][1] + sep + text)
        else:
            merged.append((speaker, text))
    return merged


# ---------------------------------------------------------------------------------- hh

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_turns(text: str, field: str) -> list[Message]:
    """Split an HH-RLHF transcript into chat messages (consecutive same-role turns merged)."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip())
    if parts[0].strip():
        raise RowError(BAD_TRANSCRIPT, field, "text before the first Human:/Assistant: marker")
    pairs = [(_HH_ROLE[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if not pairs:
        raise RowError(BAD_TRANSCRIPT, field, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return [{"role": r, "content": c} for r, c in _merge_turns(pairs, "\n\n")]


def parse_hh(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One HH-RLHF pair: prompt = shared turns before the final reply; chosen/rejected = replies."""
    chosen_text = require(row, "chosen", str)
    rejected_text = require(row, "rejected", str)
    chosen, rejected = hh_turns(chosen_text, "chosen"), hh_turns(rejected_text, "rejected")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise RowError(
                BAD_TRANSCRIPT, name, "the transcript does not end with an Assistant turn"
            )
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        raise RowError(
            BAD_TRANSCRIPT, "rejected", "chosen and rejected differ before the final reply"
        )
    if not prompt:
        raise RowError(BAD_TRANSCRIPT, "chosen", "no Human turn before the final reply")
    prompt = window(prompt, max_turns)
    reply_c, reply_r = chosen[-1]["content"], rejected[-1]["content"]
    key = content_key(prompt)
    return [
        Example(
            id=f"hh-{content_key(prompt, reply_c, reply_r)}",
            # Pairs that share a prompt stay in one split, so no prompt is in train and test.
            group=f"hh-{key}",
            prompt=prompt,
            reference=reply_c,
            origin=origin,
            meta={"origin": str(origin)},
            chosen=reply_c,
            rejected=reply_r,
        )
    ]


# ---------------------------------------------------------------------------------- preference

_ROLES = ("system", "user", "assistant")
NO_PREFERENCE_LABELS = ("tie", "both_bad")
"""Labels of human-judged rows that prefer neither reply (the arena's votes)."""


def _chat(value: Any, field: str) -> list[Message]:
    """Text (one user turn) or a list of {role, content} messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RowError(WRONG_TYPE, field, f"expected text or messages, got {type(value).__name__}")
    turns = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str)):
            raise RowError(WRONG_TYPE, f"{field}[{i}]", "expected a {role, content} message")
        if m.get("role") not in _ROLES:
            raise RowError(WRONG_TYPE, f"{field}[{i}].role", f"unknown role {clip(m.get('role'))}")
        turns.append({"role": m["role"], "content": m["content"]})
    return turns


def _prompt_turns(value: Any, field: str) -> list[Message]:
    """A prompt (text or messages) as the windowed non-system turns, ending with a user turn."""
    turns = [t for t in _chat(value, field) if t["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise RowError(BAD_TRANSCRIPT, field, "the prompt does not end with a user turn")
    return turns


def _reply(value: Any, field: str, prompt: list[Message] | None = None) -> str:
    """A reply as text, one assistant message, or the whole conversation: ``prompt`` then one
    assistant message (HuggingFaceH4/ultrafeedback_binarized's ``chosen``/``rejected``)."""
    if isinstance(value, str):
        return value
    turns = _chat(value, field)
    if prompt is not None and any(t["role"] == "user" for t in turns[:-1]):
        said = [t for t in turns[:-1] if t["role"] != "system"]
        if said != prompt:
            raise RowError(BAD_TRANSCRIPT, field, "the conversation does not start with the prompt")
        turns = turns[-1:]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise RowError(WRONG_TYPE, field, "expected text or exactly one assistant message")
    return turns[0]["content"]


def _implicit_prompt(row: Mapping[str, Any]) -> tuple[list[Message], str, str]:
    """TRL's implicit-prompt pair: two conversations that share every turn but the last."""
    convs = {}
    for name in ("chosen", "rejected"):
        value = require(row, name, list)
        turns = [t for t in _chat(value, name) if t["role"] != "system"]
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise RowError(
                BAD_TRANSCRIPT, name, "expected a conversation ending with an assistant turn"
            )
        convs[name] = turns
    prompt = convs["chosen"][:-1]
    if prompt != convs["rejected"][:-1]:
        raise RowError(
            BAD_TRANSCRIPT, "rejected", "chosen and rejected differ before the final reply"
        )
    if prompt[-1]["role"] != "user":
        raise RowError(BAD_TRANSCRIPT, "chosen", "the shared prompt does not end with a user turn")
    return prompt, convs["chosen"][-1]["content"], convs["rejected"][-1]["content"]


_CONVERSATION_COPIES = ("messages",)
"""Keys that repeat the row's own conversation (H4's ``messages`` = prompt + chosen): not meta."""


def _extra_meta(row: Mapping[str, Any], used: Iterable[str], origin: Origin) -> dict[str, Any]:
    """Every key of ``row`` a parser did not use, kept in ``meta`` (with the origin)."""
    skip = {"id", *used, *_CONVERSATION_COPIES}
    return {**{k: v for k, v in row.items() if k not in skip}, "origin": str(origin)}


def _row_key(row: Mapping[str, Any], *content: Any) -> str:
    """The row's own ``id`` when it has one, else a hash of its content."""
    row_id = row.get("id")
    return str(row_id) if isinstance(row_id, (str, int)) else content_key(*content)


def parse_preference(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One preference row: explicit or implicit prompt, standard or conversational (module doc)."""
    label = row.get("label")
    if label in NO_PREFERENCE_LABELS:
        raise RowError(NO_PREFERENCE, "label", f"{label!r}: neither reply preferred, not a pair")
    if row.get("prompt") is None and isinstance(row.get("chosen"), list):
        turns, chosen, rejected = _implicit_prompt(row)
    else:
        turns = _prompt_turns(require(row, "prompt", object), "prompt")
        chosen = _reply(require(row, "chosen", object), "chosen", turns)
        rejected = _reply(require(row, "rejected", object), "rejected", turns)
    prompt = window(turns, max_turns)
    return [
        Example(
            id=f"pref-{_row_key(row, prompt, chosen, rejected)}",
            group=f"pref-{content_key(prompt)}",  # pairs that share a prompt share a split
            prompt=prompt,
            reference=chosen,
            origin=origin,
            meta=_extra_meta(row, ("prompt", "chosen", "rejected"), origin),
            chosen=chosen,
            rejected=rejected,
        )
    ]


def parse_prompt_only(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """TRL's prompt-only row: a prompt and no reference."""
    prompt = window(_prompt_turns(require(row, "prompt", object), "prompt"), max_turns)
    key = content_key(prompt)
    return [
        Example(
            id=f"prompt-{_row_key(row, prompt)}",
            group=f"prompt-{key}",
            prompt=prompt,
            reference=None,
            origin=origin,
            meta=_extra_meta(row, ("prompt",), origin),
        )
    ]


def parse_prompt_completion(
    row: Mapping[str, Any], origin: Origin, *, max_turns: int
) -> list[Example]:
    """TRL's prompt-completion row: reference = the completion."""
    turns = _prompt_turns(require(row, "prompt", object), "prompt")
    completion = _reply(require(row, "completion", object), "completion", turns)
    prompt = window(turns, max_turns)
    return [
        Example(
            id=f"pc-{_row_key(row, prompt, completion)}",
            group=f"pc-{content_key(prompt)}",
            prompt=prompt,
            reference=completion,
            origin=origin,
            meta=_extra_meta(row, ("prompt", "completion"), origin),
        )
    ]


def parse_messages(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """TRL's conversational row: reference = the last assistant turn, prompt = the turns before."""
    turns = [t for t in _chat(require(row, "messages", list), "messages") if t["role"] != "system"]
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    if last < 0:
        raise RowError(BAD_TRANSCRIPT, "messages", "no assistant turn to use as the reference")
    if last == 0 or turns[last - 1]["role"] != "user":
        raise RowError(
            BAD_TRANSCRIPT, "messages", "the last assistant turn does not answer a user turn"
        )
    prompt, reference = window(turns[:last], max_turns), turns[last]["content"]
    return [
        Example(
            id=f"msg-{_row_key(row, prompt, reference)}",
            group=f"msg-{content_key(prompt)}",
            prompt=prompt,
            reference=reference,
            origin=origin,
            meta=_extra_meta(row, ("messages",), origin),
        )
    ]


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
    """One ReDial dialogue -> one example per recommender turn (module docstring).

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
    turns = _merge_turns(raw_turns, "\n")

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


class MovieNames(Protocol):
    """The movie-name helpers the crs formats (``redial``, ``crs_turns``) need.

    :mod:`rlhf_lab.tasks.crs` is one, and the caller passes it in (``make_parser(...,
    movies=crs)``): ``data`` sits below the tasks in the layers contract
    (``[tool.importlinter]`` in pyproject.toml), so it never imports a task.
    """

    MovieCatalogue: Callable[..., Any]
    """``MovieCatalogue(id_to_name, base=catalogue)``: finds and names the given movies."""

    def load_catalogue(self, path: str | None) -> Any:
        """``data.catalogue`` as a catalogue (``name``, ``find_mentions``), or None."""
        ...

    def read_id_names(self, path: Path, what: str) -> dict[str, str]:
        """An id -> name JSON map (``entity2id.json``'s name -> id inverted)."""
        ...

    def entity_name(self, name: str) -> str:
        """A readable name for an entity given by name or DBpedia URI."""
        ...


@dataclass(frozen=True)
class IdMaps:
    """What names the ids of crs_turns rows: the maps beside the file and ``data.catalogue``."""

    names: Mapping[str, str]
    """id -> name (``entity2id.json`` inverted, ``item_ids.json`` when it names them)."""
    items: frozenset[str] | None
    """Ids ``item_ids.json`` lists as items (recommendable); None when there is no list."""
    entity_name: Callable[[str], str]
    """Names an entity given by name or URI (:meth:`MovieNames.entity_name`)."""
    catalogue: Any = None
    """``data.catalogue`` as a crs.MovieCatalogue, or None."""

    def name(self, movie_id: str) -> str | None:
        if movie_id in self.names:
            return self.names[movie_id]
        return self.catalogue.name(movie_id) if self.catalogue is not None else None


def load_id_maps(source: str, catalogue_path: str | None, movies: MovieNames) -> IdMaps:
    """The :class:`IdMaps` of a local crs_turns source (maps beside it, or in the directory)."""
    path = Path(source).expanduser()
    folder = path if path.is_dir() else path.parent
    names: dict[str, str] = {}
    items: frozenset[str] | None = None
    if (folder / "entity2id.json").is_file():
        names.update(movies.read_id_names(folder / "entity2id.json", "entity2id.json"))
    item_file = folder / "item_ids.json"
    if item_file.is_file():
        try:
            value = json.loads(item_file.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{item_file}: bad JSON: {exc}") from None
        if isinstance(value, list):
            items = frozenset(str(v) for v in value)
        else:
            item_names = movies.read_id_names(item_file, "item_ids.json")
            names.update(item_names)
            items = frozenset(item_names)
    catalogue = movies.load_catalogue(catalogue_path)
    # The context's movies are found by title, among the items (or every named entity).
    known = {k: v for k, v in names.items() if items is None or k in items}
    finder = movies.MovieCatalogue(known, base=catalogue) if known else catalogue
    return IdMaps(names, items, movies.entity_name, finder)


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
    """One ECR / UniCRS / CRSLab recommender turn (module docstring)."""
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


# ---------------------------------------------------------------------------------- docstring

DOCSTRING_INSTRUCTION = (
    "Write a docstring for this {language} function. Reply with the docstring text only, "
    "without quotes."
)


def docstring_prompt(code: str, language: str = "Python") -> list[dict[str, str]]:
    """The user message asking for ``code``'s docstring (every docstring prompt row has it)."""
    instruction = DOCSTRING_INSTRUCTION.format(language=language)
    return [{"role": "user", "content": f"{instruction}\n\n```{language.lower()}\n{code}\n```"}]


_NESTING_ERRORS = ("too many nested", "too many levels of indentation")
"""Prefixes of the SyntaxErrors CPython's parser raises for nesting past its fixed limits."""


def strip_docstring(code: str, field: str = "code") -> str:
    """``code`` without the first function's own docstring (CodeSearchNet's code keeps it).

    Code that does not parse (Python 2, truncated) is returned unchanged. Code nested deeper
    than the parser can take raises RowError(code_too_nested): no reward can analyse it.
    """
    try:
        tree = ast.parse(textwrap.dedent(code))
    except (RecursionError, MemoryError) as exc:
        # MemoryError here is the parser's own stack overflowing (e.g. 3000 nested lambdas),
        # not the process running out of memory.
        kind = type(exc).__name__
        raise RowError(CODE_TOO_NESTED, field, f"ast.parse raised {kind}") from None
    except SyntaxError as exc:
        if str(exc.msg).startswith(_NESTING_ERRORS):
            raise RowError(CODE_TOO_NESTED, field, f"ast.parse: {exc.msg}") from None
        return code
    except ValueError:
        return code
    func = next(
        (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))),
        None,
    )
    if func is None or not func.body:
        return code
    first = func.body[0]
    is_doc = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    # A docstring sharing a line with `def` (or the only statement) cannot be cut by lines.
    if not is_doc or first.lineno == func.lineno or len(func.body) == 1 or first.end_lineno is None:
        return code
    lines = code.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])


def parse_docstring(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One function: prompt asks for its docstring; reference = the docstring."""
    code_key = first_present(row, CODE_KEYS) or "code"
    doc_key = first_present(row, DOC_KEYS) or "docstring"
    code = strip_docstring(require(row, code_key, str), code_key).strip("\n")
    docstring = require(row, doc_key, str).strip()
    language = row.get("language")
    language = language.capitalize() if isinstance(language, str) and language else "Python"
    prompt = docstring_prompt(code, language)
    meta: dict[str, Any] = {"code": code, "origin": str(origin)}
    source_id = first_present(row, ("id", "url", "func_code_url", "func_name"))
    if source_id is not None:
        meta["source_id"] = str(row[source_id])
    return [
        Example(
            id=f"docstring-{content_key(code, docstring)}",
            # One function with two docstrings stays in one split.
            group=f"docstring-{content_key(code)}",
            prompt=prompt,
            reference=docstring,
            origin=origin,
            meta=meta,
        )
    ]


def _humaneval_parts(source: str, entry_point: str) -> tuple[str, str, str]:
    """(setup, function without its docstring, docstring) of ``entry_point`` in ``source``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = f"prompt + solution do not parse: {type(exc).__name__}"
        raise RowError(BAD_CODE, "canonical_solution", msg) from None
    func = next(
        (
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point
        ),
        None,
    )
    if func is None:
        raise RowError(BAD_CODE, "entry_point", f"no top-level function {clip(entry_point)}")
    # The first string statement: HumanEval/115 puts `import math` before its docstring.
    doc = next(
        (
            n
            for n in func.body
            if isinstance(n, ast.Expr)
            and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str)
        ),
        None,
    )
    if doc is None or len(func.body) < 2 or func.end_lineno is None or doc.end_lineno is None:
        raise RowError(BAD_CODE, "prompt", f"{clip(entry_point)} has no docstring and a body")
    docstring = inspect.cleandoc(doc.value.value)  # type: ignore[attr-defined]
    lines = source.splitlines(keepends=True)
    first = func.decorator_list[0] if func.decorator_list else func
    code = "".join(
        lines[first.lineno - 1 : doc.lineno - 1] + lines[doc.end_lineno : func.end_lineno]
    )
    setup = "".join(lines[: first.lineno - 1] + lines[func.end_lineno :])
    return setup.strip("\n"), code.strip("\n"), docstring.strip()


def parse_humaneval(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One HumanEval problem: the docstring is the reference, the function without it the code."""
    task_id = require(row, "task_id", str)
    source = require(row, "prompt", str) + require(row, "canonical_solution", str)
    setup, code, docstring = _humaneval_parts(source, require(row, "entry_point", str))
    instruction = DOCSTRING_INSTRUCTION.format(language="Python")
    prompt = [{"role": "user", "content": f"{instruction}\n\n```python\n{code}\n```"}]
    return [
        Example(
            id=f"humaneval-{task_id.replace('/', '-')}",
            group=f"humaneval-{task_id}",
            prompt=prompt,
            reference=docstring,
            origin=origin,
            meta={"code": code, "setup": setup, "source_id": task_id, "origin": str(origin)},
        )
    ]


# ---------------------------------------------------------------------------------- chitchat


def parse_chitchat(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One chitchat conversation -> one example per turn after the first."""
    conv_id = require(row, "id", str)
    groups = require(row, "messages", list)
    raw_turns: list[tuple[str, str]] = []
    for j, group in enumerate(groups):
        if not isinstance(group, list):
            raise RowError(
                WRONG_TYPE, f"messages[{j}]", f"expected a list, got {type(group).__name__}"
            )
        for k, utt in enumerate(group):
            if not isinstance(utt, dict):
                raise RowError(WRONG_TYPE, f"messages[{j}][{k}]", "expected an object")
            text = require(utt, "text", str, where=f"messages[{j}][{k}].")
            sender = require(utt, "sender", str, where=f"messages[{j}][{k}].")
            raw_turns.append((sender, text.strip()))
    turns = _merge_turns(raw_turns, "\n")
    examples = []
    for t in range(1, len(turns)):
        speaker = turns[t][0]
        # The speaker of the target turn plays the assistant, so the policy learns both sides.
        # Only the turns the window can keep: a 500-turn chat would otherwise cost O(n^2).
        context = [
            {"role": "assistant" if s == speaker else "user", "content": text}
            for s, text in turns[max(0, t - max_turns) : t]
        ]
        examples.append(
            Example(
                id=f"chitchat-{conv_id}-{t}",
                group=f"chitchat-{conv_id}",
                prompt=window(context, max_turns),
                reference=turns[t][1],
                origin=origin,
                meta={"conversation_id": conv_id, "turn": t, "origin": str(origin)},
            )
        )
    return examples


# ---------------------------------------------------------------------------------- api

Parser = Callable[[Mapping[str, Any], Origin], list[Example]]


def make_parser(fmt: str, cfg: DataConfig, movies: MovieNames | None = None) -> Parser:
    """The parser for ``fmt`` with the config's options bound.

    ``redial`` and ``crs_turns`` name movie ids with ``movies`` (:class:`MovieNames`).
    """
    if fmt in ("redial", "crs_turns"):
        if movies is None:
            raise ValueError(f"format {fmt!r} names movies: pass movies=rlhf_lab.tasks.crs")
        if fmt == "redial":
            # A DataError naming the file (and line) if the catalogue is missing or malformed.
            catalogue = movies.load_catalogue(cfg.catalogue)
            lookup = catalogue.name if catalogue is not None else None
            return partial(parse_redial, max_turns=cfg.max_turns, catalogue=lookup)
        maps = load_id_maps(cfg.source, cfg.catalogue, movies)
        return partial(parse_crs_turns, max_turns=cfg.max_turns, maps=maps)
    parsers = {
        "hh": parse_hh,
        "preference": parse_preference,
        "prompt_only": parse_prompt_only,
        "prompt_completion": parse_prompt_completion,
        "messages": parse_messages,
        "docstring": parse_docstring,
        "humaneval": parse_humaneval,
        "chitchat": parse_chitchat,
    }
    return partial(parsers[fmt], max_turns=cfg.max_turns)


def peek(records: Iterator[Record]) -> tuple[dict[str, Any] | None, Iterator[Record]]:
    """The first parsed record's value (for format inference) and an iterator over all records."""
    seen: list[Record] = []
    first = None
    for rec in records:
        seen.append(rec)
        if rec.value is not None:
            first = rec.value
            break
    return first, itertools.chain(seen, records)
