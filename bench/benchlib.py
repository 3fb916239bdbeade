"""What every benchmark shares: where its files go, and which machine measured it.

Benchmarks run as scripts (``python bench/<name>.py``), so ``bench/`` is first on ``sys.path``
and ``import benchlib`` finds this module; ``tests/test_bench.py`` puts it there too.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

import torch

from rlhf_lab import precision

ROOT = Path(__file__).resolve().parents[1]
# Committed figures: only a real run writes here (a --tiny / smoke run goes under WORK).
RESULTS = ROOT / "bench" / "results"
# Git-ignored: materialised inputs, smoke-run results, resumable state.
WORK = ROOT / "bench" / ".work"


def machine(load_start: float | None = None) -> dict[str, Any]:
    """The machine a figure was measured on; speed figures mean little without it.

    ``load_start`` (``os.getloadavg()[0]`` when the run began) adds the load average at start
    and now: on a shared machine a time says as much about the neighbours as about the code.
    """
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": precision.cpu_model(),
        "cpu_native_bf16": precision.cpu_has_native_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": precision.device_type(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if load_start is not None:
        info["load_average_1min_start_end"] = load_span(load_start)
    return info


def load_span(load_start: float) -> list[float]:
    """The 1-minute load average when a run began (``load_start``) and now."""
    return [round(load_start, 2), round(os.getloadavg()[0], 2)]


def shown_path(path: str | Path) -> str:
    """``path`` as a committed result may name it: relative to the repo when inside it, else
    its last three parts after ``…/`` (a workspace's ``arms/models/sft``), never a home or
    scratch directory of the machine that ran it."""
    if str(path).startswith("…/"):
        return str(path)  # already shown (a re-summarised result)
    p = Path(path).resolve()
    if p.is_relative_to(ROOT):
        return str(p.relative_to(ROOT))
    return "…/" + "/".join(p.parts[-3:])
