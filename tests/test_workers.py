"""``make test`` runs pytest-xdist workers: each gets its share of the cores' torch threads."""

from __future__ import annotations

from .conftest import worker_threads


def test_worker_threads_split_the_cores_between_the_workers():
    assert worker_threads(2, None) is None  # not under xdist: torch's default
    assert worker_threads(2, "2") == 1
    assert worker_threads(16, "2") == 8
    assert worker_threads(1, "2") == 1  # never 0
    assert worker_threads(None, "2") == 1
