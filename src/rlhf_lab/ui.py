"""What users see: progress on long loops, a line per RL step, a summary table per stage.

On a terminal long loops draw rich progress bars; when stderr is a file or a pipe (``dvc
repro > log``, CI, ``nohup``) rich draws nothing until the end, so :func:`track` prints a
plain progress line every :data:`PROGRESS_EVERY_S` seconds instead. :func:`step_line` prints
one line per training step either way.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from rlhf_lab.errors import literal

# stderr, so a stage's stdout stays clean for piping and DVC's log stays readable.
console = Console(stderr=True)
T = TypeVar("T")
PROGRESS_EVERY_S = float(os.environ.get("RLHF_LAB_PROGRESS_EVERY_S", "30"))
"""Seconds between two progress lines of a loop when stderr is not a terminal."""


KNOWN_WARNINGS = (
    # peft asks transformers 5 for the old name; nothing for a user to change
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)
"""(category, message regex) of library warnings a stage hides: known and harmless here."""


def quiet_libraries() -> None:
    """Inside a stage: no Hugging Face progress bars or load reports (the stage prints its own
    progress) and none of :data:`KNOWN_WARNINGS`; errors still show."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # the variables above act on import; a library already imported is told directly
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _plain(text: str) -> None:
    # no markup or highlighting, and no wrapping at rich's 80 columns for non-terminals
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _progress_line(description: str, done: int, total: int | None, elapsed: float) -> None:
    if total:
        left = elapsed / done * (total - done) if 0 < done < total else None
        eta = "" if left is None else f", ~{left:.0f} s left"
        _plain(f"{description}: {done}/{total} ({done / total:.0%}), {elapsed:.0f} s{eta}")
    else:
        _plain(f"{description}: {done} done, {elapsed:.0f} s")


def _track_lines(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    """A line at the start, every :data:`PROGRESS_EVERY_S` seconds and at the end."""
    start = last = time.monotonic()
    done = 0
    _progress_line(description, done, total, 0.0)
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S and done != total:
            _progress_line(description, done, total, now - start)
            last = now
    _progress_line(description, done, total, time.monotonic() - start)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (rate, elapsed, remaining) on a terminal, else with
    plain progress lines (see the module docstring)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not console.is_terminal:
        yield from _track_lines(items, description, total)
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(escape(literal(description)), total=total)
        for item in items:
            yield item
            progress.advance(task)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def step_line(
    stage: str, step: int, total: int, values: Mapping[str, float], seconds: float
) -> None:
    """``train_ppo step 3/12  score 0.912  kl 0.12  length 17.3  12.4 s``: one line per
    training step, on a terminal (above the progress bar) and in a log file alike."""
    shown = "  ".join(f"{name} {_fmt(value)}" for name, value in values.items())
    _plain(f"{stage} step {step}/{total}  {shown}  {seconds:.1f} s")


def summary(title: str, rows: Mapping[str, Any]) -> None:
    """Print a two-column summary table (metric → value)."""
    table = Table(title=Text(literal(title)), show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():  # Text: a value's "[b]" is data, not a style
        table.add_row(Text(literal(key)), Text(literal(_fmt(value))))
    console.print(table)


def error(message: str) -> None:
    """Print ``error: message`` as one literal line (no markup, escapes shown as escapes)."""
    _line("error: ", "bold red", message)


def warning(message: str) -> None:
    """Print ``warning: message`` as one literal line (no markup, escapes shown as escapes)."""
    _line("warning: ", "yellow", message)


def _line(label: str, style: str, message: str) -> None:
    console.print(Text(label, style=style) + Text(literal(message)), soft_wrap=True)
