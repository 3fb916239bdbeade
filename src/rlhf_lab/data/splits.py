"""Deterministic splits and subsampling from hashes, so a row's fate depends only on its id.

A row's split is a function of (its group, ``data.seed``) alone, not of the order or size of
the source: adding rows to a source never moves an existing row to another split, and the
same seed gives the same split on every machine. Rows of one conversation share a group, so
a test prompt's context never contains a training reference (see ``Example.group``).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

SPLITS = ("train", "valid", "test")
T = TypeVar("T")


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (sha256; stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(group: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """'test' for the first ``test_fraction`` of the hash range, then 'valid', else 'train'."""
    u = unit_hash("split", seed, group)
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


class Subsample(Generic[T]):
    """Keep the ``limit`` items with the smallest hash of (id, seed), streaming (0 = keep all).

    A bounded heap, so reading 130k chitchat turns to keep 400 holds only 400 in memory. The
    kept items come back in the order they were added.
    """

    def __init__(self, limit: int, seed: int) -> None:
        self.limit = limit
        self.seed = seed
        self._heap: list[tuple[float, int, T]] = []  # (-hash, order, item): max-heap on hash
        self._order = 0

    def add(self, id: str, item: T) -> None:
        key = unit_hash("subsample", self.seed, id)
        entry = (-key, self._order, item)
        self._order += 1
        if not self.limit or len(self._heap) < self.limit:
            heapq.heappush(self._heap, entry)
        elif key < -self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def __len__(self) -> int:
        return len(self._heap)

    def items(self) -> list[T]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: e[1])]


def split_rows(
    rows: Iterable[T],
    group_of: Callable[[T], str],
    seed: int,
    valid_fraction: float,
    test_fraction: float,
) -> dict[str, list[T]]:
    """``rows`` grouped by :func:`assign_split` of ``group_of(row)``, order kept."""
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for row in rows:
        out[assign_split(group_of(row), seed, valid_fraction, test_fraction)].append(row)
    return out


def iter_split(split: dict[str, list[T]]) -> Iterator[tuple[str, T]]:
    """(split name, row) over all splits in train/valid/test order."""
    for name in SPLITS:
        for row in split[name]:
            yield name, row
