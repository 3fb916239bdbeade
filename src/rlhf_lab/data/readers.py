"""Data readers: the records of ``data.source``, from a file, a hub dataset or the embedded chats.

``data.source`` is one of

* ``chitchat`` — the embedded default: the ``chitchat-dataset`` package's real human chats;
* a local ``.jsonl``, ``.jsonl.gz``, ``.parquet`` or ``.json`` (an array of objects, or JSON
  Lines) file, or a directory of them (the crs id maps :data:`ID_MAP_FILES` excepted);
* anything else is a hub dataset id, read with ``datasets.load_dataset(source,
  data_dir=data.data_dir, split=data.split)`` (the only case that touches the network).

Reading yields :class:`Record` s (one per line / dataset row / conversation), each either a
parsed JSON object or the :class:`RowError` that stopped it (bad bytes, bad JSON);
:mod:`rlhf_lab.data.sources` infers the format and parses them. Readers know bytes and JSON, not
formats: the two halves change for different reasons (a new container vs a new row schema).
"""

from __future__ import annotations

import gzip
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.config import DataConfig
from rlhf_lab.data.validate import (
    BAD_ENCODING,
    BAD_JSON,
    DUPLICATE_KEY,
    WRONG_TYPE,
    Origin,
    RowError,
)
from rlhf_lab.errors import DataError, clip
from rlhf_lab.io import MAX_JSON_DEPTH, JsonInputError, find_duplicate, parse_json

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".json")
ID_MAP_FILES = ("entity2id.json", "item_ids.json")
"""ECR / UniCRS id maps that sit beside crs_turns data files: read by the parser, not as rows."""


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
