"""Reading the preference and prompt rows that score_with_llm judges, strictly.

Preference rows are :class:`~rlhf_lab.data.rows.PreferenceRow` s: ``{"id", "prompt":
[{"role", "content"}, ...], "chosen", "rejected", "label_source", "meta"}``; in ``data.pairs:
judge`` mode they carry ``"candidates": [str, ...]`` (at least two) with ``chosen``/``rejected``
null. A row that is neither fails with one line naming the file, the line and the field, e.g.::

    data/preference/train.jsonl:12: field 'chosen': expected a string, got null
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast, get_args

from rlhf_lab.data.rows import LabelSource, PreferenceRow
from rlhf_lab.errors import DataError

LABEL_SOURCES = frozenset(get_args(LabelSource))
SPLITS = ("train", "valid", "test")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_candidate_row(row: Mapping[str, Any]) -> bool:
    """A ``data.pairs: judge`` row: candidates to be labelled, no chosen/rejected yet."""
    return row.get("chosen") is None and "candidates" in row


def validate_preference_row(row: Any, where: str) -> PreferenceRow:
    """Check one preference row; raise DataError naming ``where`` (``file:line``) and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {_kind(row)}")
    if not isinstance(row.get("id"), str | int) or isinstance(row.get("id"), bool):
        raise DataError(f"{where}: field 'id': expected a string, got {_kind(row.get('id'))}")
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: field 'prompt': expected a non-empty list of messages")
    for i, msg in enumerate(prompt):
        ok = isinstance(msg, dict) and all(isinstance(msg.get(k), str) for k in ("role", "content"))
        if not ok:
            raise DataError(
                f"{where}: field 'prompt[{i}]': expected {{'role': str, 'content': str}}"
            )
    if is_candidate_row(row):
        cands = row["candidates"]
        if not isinstance(cands, list) or len(cands) < 2:
            raise DataError(f"{where}: field 'candidates': expected a list of at least 2 replies")
        for i, c in enumerate(cands):
            if not isinstance(c, str):
                raise DataError(
                    f"{where}: field 'candidates[{i}]': expected a string, got {_kind(c)}"
                )
    else:
        for name in ("chosen", "rejected"):
            if not isinstance(row.get(name), str):
                raise DataError(
                    f"{where}: field {name!r}: expected a string, got {_kind(row.get(name))}"
                )
    if row.get("label_source") not in LABEL_SOURCES:
        raise DataError(
            f"{where}: field 'label_source': expected one of {sorted(LABEL_SOURCES)}, "
            f"got {row.get('label_source')!r}"
        )
    meta = row.setdefault("meta", {})
    if meta is None:
        row["meta"] = {}
    elif not isinstance(meta, dict):
        raise DataError(f"{where}: field 'meta': expected an object, got {_kind(meta)}")
    return cast(PreferenceRow, row)


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """``(line number, parsed JSON)`` for every non-blank line; bad JSON names the line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    return out


def load_preference(
    folder: Path, require_candidates: bool = False
) -> dict[str, list[PreferenceRow]]:
    """Validated rows of ``folder/{train,valid,test}.jsonl`` (missing splits are skipped).

    ``require_candidates`` (``data.pairs: judge``): every row must carry candidates.
    """
    if not (folder / "train.jsonl").is_file():
        raise DataError(f"{folder / 'train.jsonl'}: not found (run prepare_preference first)")
    splits: dict[str, list[PreferenceRow]] = {}
    for split in SPLITS:
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            continue
        rows = []
        for lineno, raw in read_rows(path):
            row = validate_preference_row(raw, f"{path}:{lineno}")
            if require_candidates and not is_candidate_row(row):
                raise DataError(
                    f"{path}:{lineno}: field 'candidates': missing, but data.pairs is 'judge'"
                )
            rows.append(row)
        splits[split] = rows
    return splits


def load_prompt_rows(folder: Path) -> dict[str, dict[str, Any]]:
    """``id -> prompt row`` from ``folder/*.jsonl`` ({} when the folder is absent)."""
    rows: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return rows
    for path in sorted(folder.glob("*.jsonl")):
        for lineno, raw in read_rows(path):
            if not isinstance(raw, dict) or "id" not in raw:
                raise DataError(f"{path}:{lineno}: field 'id': missing")
            if not isinstance(raw.get("meta") or {}, dict):
                raise DataError(f"{path}:{lineno}: field 'meta': expected an object")
            if not isinstance(raw.get("prompt"), list):
                raise DataError(f"{path}:{lineno}: field 'prompt': expected a list of messages")
            rows[str(raw["id"])] = raw
    return rows


def with_prompt_meta(row: dict[str, Any], metas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The row as the judge sees it: its prompt row's meta (movies, code) under its own."""
    extra = metas.get(str(row["id"]))
    if not extra:
        return row
    return {**row, "meta": {**extra, **row["meta"]}}
