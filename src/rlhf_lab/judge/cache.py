"""The resumable score cache: an append-only JSONL file per (judge, rubric sha).

Each line is ``{"key": sha256, "value": float, "mass": float|null}`` for one successful
judge answer; the key (:meth:`rlhf_lab.judge.base.RatingRequest.key`) hashes the judge
identity, the rubric sha and the texts the judge reads, so a different model, rubric or text
never hits. Failures are not cached: a re-run asks for exactly the items that are missing.

Lines are appended, flushed and fsynced after every batch, so killing the stage loses at most
the batch in flight; a line cut short by the kill is skipped when the file is read back, and
so is a line that parses but is not a record (wrong types, a value off every scale, a mass
outside [0, 1]): its item is asked again, and ``skipped_lines`` counts both.
Appends use one ``write`` per batch on an ``O_APPEND`` file, so two runs sharing the cache
(``dvc queue start -j 2``) interleave whole batches rather than corrupt each other's lines.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

from rlhf_lab.io import sha256_text
from rlhf_lab.judge.rubrics import SCALE

_VALUE_RANGE = (min(0.0, SCALE[0]), float(SCALE[-1]))
"""Cached values are 1..5 ratings or 0..1 pairwise probabilities."""


def _number(x: object) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_record(line: str) -> tuple[str, float, float | None] | None:
    """``(key, value, mass)`` from one cache line, or None when it is not a valid record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    key, value, mass = rec.get("key"), rec.get("value"), rec.get("mass")
    if not isinstance(key, str) or not key or not _number(value):
        return None
    if not _VALUE_RANGE[0] <= value <= _VALUE_RANGE[1]:
        return None
    if mass is not None and not (_number(mass) and 0.0 <= mass <= 1.0 + 1e-6):
        return None
    return key, float(value), None if mass is None else float(mass)


class ScoreCache:
    """Cached judge answers for one judge and rubric (see module docstring)."""

    def __init__(self, cache_dir: str | Path, judge_id: str, rubric_sha: str) -> None:
        self.path = Path(cache_dir) / f"{sha256_text(judge_id + '|' + rubric_sha)[:24]}.jsonl"
        self.judge_id = judge_id
        self.rubric_sha = rubric_sha
        self._entries: dict[str, tuple[float, float | None]] = {}
        self.skipped_lines = 0
        """Lines that could not be read back (cut short, or not a record); re-scored."""
        # A kill mid-write can leave a last line without its newline; the next append must
        # start a fresh line or it would glue a good record onto the broken one.
        self._needs_newline = False
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                self._needs_newline = fh.read(1) != b"\n"
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                record = parse_record(line)
                if record is None:
                    self.skipped_lines += 1
                    continue
                key, value, mass = record
                self._entries[key] = (value, mass)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> tuple[float, float | None] | None:
        """``(value, mass)`` for ``key``, or None when it was never scored."""
        return self._entries.get(key)

    def add(self, items: Iterable[tuple[str, float, float | None]]) -> int:
        """Append ``(key, value, mass)`` records durably; return how many were new."""
        lines = []
        for key, value, mass in items:
            if key in self._entries or not math.isfinite(value):
                continue
            if mass is not None and not math.isfinite(mass):
                mass = None
            self._entries[key] = (value, mass)
            lines.append(json.dumps({"key": key, "value": value, "mass": mass}) + "\n")
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = memoryview((("\n" if self._needs_newline else "") + "".join(lines)).encode())
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._needs_newline = False
        return len(lines)
