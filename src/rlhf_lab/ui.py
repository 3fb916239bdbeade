"""What users see: progress bars on long loops and a summary table at the end of each stage."""

from __future__ import annotations

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


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (rate, elapsed, remaining)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
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
