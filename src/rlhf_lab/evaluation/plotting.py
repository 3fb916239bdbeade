"""Plot and CSV helpers shared by evaluate's report and analyze_rewards.

Both write DVC plot data (CSVs DVC renders with ``dvc plots show``/``diff``) and matplotlib
PNGs; the conventions live here once so the two outputs read the same way.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BINS = 20
"""Histogram bins per component (fixed bins on [0, 1] line two runs' files up bin for bin)."""


def slug(component: str) -> str:
    """A file-name-safe form of a component name: ``text/bleu`` -> ``text_bleu``."""
    return component.replace("/", "_")


def num(x: float | None) -> float:
    """A CSV number: rounded to 6 digits; None becomes NaN (written as a blank)."""
    return float("nan") if x is None else round(float(x), 6)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """Write a CSV (parents created); non-finite floats are written blank."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            # Blank, not "nan": vega-lite reads a blank as a gap; DVC passes "nan" through.
            writer.writerow(
                ["" if isinstance(x, float) and not math.isfinite(x) else x for x in row]
            )
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display in a DVC stage)."""
    import matplotlib

    matplotlib.use("Agg")  # must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def ecdf(values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of the finite ``values``: sorted x and the fraction of values <= x.

    Drawn as a step line it shows every one of a few dozen replies without the spikes that
    histogram bins give so few points, and two runs' curves compare at a glance.
    """
    x = np.sort(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    return x, np.arange(1, x.size + 1) / max(1, x.size)


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels with as few empty cells as possible (at most
    ``max_cols`` wide): 4 panels are 2 x 2, 6 are 2 x 3, 5 are 2 x 3 with one spare cell."""
    if n <= max_cols:
        return 1, max(1, n)
    cols = min(range(2, max_cols + 1), key=lambda c: (-(n // c * c == n), math.ceil(n / c), -c))
    return math.ceil(n / cols), cols
