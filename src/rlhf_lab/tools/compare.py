"""compare: evaluate's results across DVC experiments as arms × seeds (a command).

    rlhf-lab compare exp-a exp-b exp-c --out reports/compare.json
    rlhf-lab compare --all
    rlhf-lab compare -A exp-a exp-b   # experiments made on earlier commits too

Runs ``dvc exp show --json`` (each experiment's params and headline ``metrics/evaluate.json``)
and reads each experiment's full ``metrics/full/evaluate.json`` (git-tracked) and
``reports/samples.jsonl`` (a DVC-cached output of ``evaluate``) at its rev with
``dvc.api.read``; prints per arm the mean ± 95% CI half-width across seeds, the paired Wilcoxon
test between every two arms, and each arm against its baseline (per seed and per prompt,
:func:`rlhf_lab.evaluation.arms.versus_baseline`). ``--out`` also writes the numbers as JSON.
The method is in ``rlhf_lab.evaluation.arms``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from rlhf_lab import outputs, ui
from rlhf_lab.config import Params
from rlhf_lab.errors import DataError
from rlhf_lab.evaluation import arms as cmp
from rlhf_lab.headline import full_path
from rlhf_lab.io import write_json

SAMPLES = "reports/samples.jsonl"
FULL_METRICS = str(full_path(cmp.METRICS_FILE))


def _dvc(*args: str) -> str:
    """``dvc <args>``'s stdout in the current repo (the same interpreter's DVC)."""
    out = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["failed"])[-1]
        raise DataError(f"compare: `dvc {' '.join(args)}`: {last}")
    return out.stdout


def experiment_baselines() -> list[str]:
    """Every commit that has experiments, as ``dvc exp list -A`` names it (a branch or a short
    rev): its unindented ``<baseline>:`` lines."""
    lines = _dvc("exp", "list", "-A").splitlines()
    return [ln[:-1] for ln in lines if ln.endswith(":") and not ln[:1].isspace()]


def dvc_exp_show(all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json``: HEAD's experiments, or with ``all_commits`` those of every
    commit that has some (``--rev`` per :func:`experiment_baselines`; ``-A`` would also read
    every commit of the history, minutes in a long one)."""
    revs = [a for rev in experiment_baselines() for a in ("--rev", rev)] if all_commits else []
    return json.loads(_dvc("exp", "show", "--json", *revs))


def read_at(path: str, exp: cmp.Experiment) -> str | None:
    """``path`` at the experiment's rev (the workspace file for ``workspace``); None when it
    is not available there."""
    import dvc.api

    try:
        if exp.name == "workspace":
            return Path(path).read_text(encoding="utf-8")
        return dvc.api.read(path, rev=exp.rev, encoding="utf-8")
    except Exception:  # dvc raises many kinds; each means "not available at that rev"
        return None


def dvc_samples(exp: cmp.Experiment) -> list[dict[str, Any]]:
    """``reports/samples.jsonl`` at the experiment's rev (the workspace file for ``workspace``)."""
    text = read_at(SAMPLES, exp)
    if text is None:
        fix = (
            outputs.how_to_get(SAMPLES)
            if exp.name == "workspace"
            else f"`dvc pull` (a commit) or `dvc exp pull <remote> {exp.name}` (an experiment) "
            "fetches it, or `dvc repro evaluate` at that rev makes it"
        )
        raise DataError(
            f"compare: {SAMPLES} of experiment {exp.name!r} is not in the DVC cache: {fix}"
        )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def dvc_full_metrics(exp: cmp.Experiment) -> dict[str, Any]:
    """Evaluate's full metrics at the experiment's rev; its headline (from ``dvc exp show``)
    where the rev has no full file (written before evaluate split its metrics)."""
    text = read_at(FULL_METRICS, exp)
    return exp.metrics if text is None else {**exp.metrics, **json.loads(text)}


def _print(result: Mapping[str, Any]) -> None:
    header, rows = cmp.table_rows(result)
    table = Table(title="arms × seeds: mean ± 95% CI half-width across seeds")
    for h in header:
        table.add_column(h, justify="left" if h == "arm" else "right")
    for row in rows:
        table.add_row(*row)
    ui.console.print(table)
    tests = Table(title="paired Wilcoxon on the shared test prompts (RM score, mean over seeds)")
    for h in ("a", "b", "prompts", "mean a − b", "a wins", "Wilcoxon p"):
        tests.add_column(h, justify="left" if h in ("a", "b") else "right")
    for t in result["tests"]:
        tests.add_row(
            t["a"],
            t["b"],
            str(t["n_prompts"]),
            f"{t['mean_diff']:+.3f}",
            f"{t['win_rate']:.3f}",
            "–" if t["wilcoxon_p"] is None else f"{t['wilcoxon_p']:.3g}",
        )
    ui.console.print(tests)
    _print_vs_baseline(result.get("vs_baseline") or [])
    for w in result["warnings"]:
        ui.warning(w)


def _ci(d: Mapping[str, Any]) -> str:
    if d["ci_lo"] is None:
        return f"{d['mean_diff']:+.3f}"
    return f"{d['mean_diff']:+.3f} [{d['ci_lo']:+.3f}, {d['ci_hi']:+.3f}]"


def _print_vs_baseline(rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(title="each arm − its baseline: per seed (t) and per prompt (Wilcoxon), 95% CI")
    for h in ("arm", "metric", "seeds: mean [CI]", "t-test p", "prompts: mean [CI]", "Wilcoxon p"):
        table.add_column(h, justify="left" if h in ("arm", "metric") else "right")
    for row in rows:
        for column, seeds in row["seeds"].items():
            table.add_row(
                f"{row['arm']} − {row['baseline']}",
                column,
                f"{_ci(seeds)} (n={seeds['n']})",
                "–" if seeds["ttest_p"] is None else f"{seeds['ttest_p']:.3g}",
                "",
                "",
            )
        for key, prompts in row["prompts"].items():
            table.add_row(
                f"{row['arm']} − {row['baseline']}",
                key,
                "",
                "",
                f"{_ci(prompts)} (n={prompts['n_prompts']})",
                "–" if prompts["wilcoxon_p"] is None else f"{prompts['wilcoxon_p']:.3g}",
            )
    if table.row_count:
        ui.console.print(table)


def main(
    params: Params,
    *,
    experiments: Sequence[str] = (),
    all_: bool = False,
    all_commits: bool = False,
    out: Path | None = None,
    show: Callable[[bool], list[dict[str, Any]]] | None = None,
    read_samples: Callable[[cmp.Experiment], list[dict[str, Any]]] | None = None,
    read_metrics: Callable[[cmp.Experiment], dict[str, Any]] | None = None,
    **_: Any,
) -> None:
    """``show`` / ``read_samples`` / ``read_metrics`` (default :func:`dvc_exp_show` /
    :func:`dvc_samples` / :func:`dvc_full_metrics`) let tests feed fixture JSON instead of a
    git + DVC repo. ``all_commits`` also lists the experiments of earlier baseline commits: a
    seed made before an unrelated commit still counts, and an arm whose runs of one seed differ
    between commits (its baseline SFT, say) is flagged in the result's ``warnings``."""
    show = show or dvc_exp_show
    read_samples = read_samples or dvc_samples
    read_metrics = read_metrics or dvc_full_metrics
    if bool(experiments) == all_:
        raise DataError("compare: name the experiments to compare, or pass --all (not both)")
    found = cmp.parse_exp_show(show(all_commits))
    if all_:
        chosen = [e for e in found if e.name != "workspace"] or found
    else:
        chosen = cmp.select(found, experiments)
    chosen = [dataclasses.replace(e, metrics=read_metrics(e)) for e in chosen]
    result = cmp.compare(chosen, read_samples)
    _print(result)
    if out is not None:
        write_json(out, result)
        ui.console.print(f"wrote {out}")
