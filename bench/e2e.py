"""End-to-end wall time of the default pipeline: each stage forced from a clean state, then a
no-op ``dvc repro``.

    python bench/e2e.py            # in the repo root, with .venv active

Runs ``dvc repro --force --single-item <stage>`` for each stage in pipeline order (every
stage after the stages whose outputs it reads, else in dvc.yaml order: so every stage really
runs, with its upstream outputs already in place), then a plain ``dvc repro``
that must find nothing to do. Prints a table and writes ``bench/results/e2e.json``. The run
updates dvc.lock and metrics/ in the workspace: commit them with the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import yaml
from rich.console import Console
from rich.table import Table

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, machine
from rlhf_lab import headline, precision

RESULTS = RESULTS_DIR / "e2e.json"


def _dvc(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def _paths(entries: list[str | dict]) -> list[str]:
    """The paths of a stage's ``deps`` or ``outs`` list (an out may be ``{path: options}``)."""
    return [p for e in entries for p in ([e] if isinstance(e, str) else e)]


def pipeline_order(stages: dict[str, dict]) -> list[str]:
    """``dvc.yaml``'s stages with each after every stage whose outputs it depends on (a dep on
    an output or on a folder holding one); otherwise in file order."""

    def inside(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/")

    outs = {name: _paths(st.get("outs", []) + st.get("metrics", [])) for name, st in stages.items()}
    needs = {
        name: {
            other
            for dep in _paths(st.get("deps", []))
            for other, paths in outs.items()
            if other != name and any(inside(dep, o) or inside(o, dep) for o in paths)
        }
        for name, st in stages.items()
    }
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            raise ValueError(f"dvc.yaml: a cycle among {sorted(set(stages) - set(order))}")
        order.append(ready[0])
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", help="subset of stages (default: all, in order)")
    args = parser.parse_args()
    stages = pipeline_order(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    if args.stages:
        stages = [s for s in stages if s in args.stages]
    times = {s: _dvc("repro", "--force", "--single-item", s) for s in stages}
    noop = _dvc("repro")
    total = sum(times.values())
    table = Table(title=f"e2e: default pipeline wall time (s), {precision.cpu_model()}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for stage, sec in times.items():
        table.add_row(stage, f"{sec:.1f}", f"{sec / total:.0%}")
    table.add_row("[bold]total", f"[bold]{total:.1f}", "")
    table.add_row("no-op dvc repro", f"{noop:.2f}", "")
    Console().print(table)
    metrics = {}
    evaluate = ROOT / "metrics" / "evaluate.json"
    if evaluate.is_file():
        metrics = headline.read_metrics(evaluate)  # every number, not only the headline
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "stages_s": times,
                "total_s": total,
                "noop_repro_s": noop,
                "machine": machine(),
                "evaluate": metrics,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
