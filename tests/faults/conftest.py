"""Fault-injection tier: every test here runs a real stage, tool or server and injects a fault
(SIGKILL mid-write, ENOSPC, a misbehaving judge server, corrupt sources, bad params,
concurrent runs). Marked ``faults`` so it can be run alone (``pytest -m faults``); it is part
of ``make test`` while the suite stays well under 15 minutes."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
