"""analyze_rewards: do the task's rule rewards tell good replies from bad ones? (a command)

    rlhf-lab analyze_rewards --task docstring --input ../shared/data/docstring/valid.jsonl.gz
    rlhf-lab analyze_rewards --samples reports/samples.jsonl  # + every policy, references

Reads ``task.name`` (unless ``--task``), ``reward.weights`` (the total's weights) and ``data``
(``catalogue`` for crs; ``max_chars``, ``max_turns``, ``max_invalid_fraction`` when the input
is a raw source file). The input is prompt rows (default ``data/grounded/test.jsonl``) or a
source file in the task's format. Writes ``metrics/analyze_rewards.json`` and
``plots/analyze_rewards/``: ``summary.md``, ``hists.png``, ``gaps.png`` (and
``samples_hists.png``), DVC plot data ``dist/*.csv``, ``components.csv``, ``kinds.csv``
(``samples.csv``) and every scored reply in ``scores.jsonl``. The method and the metric keys
are in ``rlhf_lab.evaluation.reward_check``, the plots and summary in
``rlhf_lab.evaluation.reward_check_report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import reward_components, ui
from rlhf_lab.config import Params
from rlhf_lab.evaluation import reward_check as ar
from rlhf_lab.evaluation import reward_check_report as report
from rlhf_lab.io import atomic_dir, claim_out_dir, mark_out_dir, write_json
from rlhf_lab.tools.generate import HELD_OUT_PROMPTS as INPUT

PLOTS_DIR = Path("plots/analyze_rewards")
METRICS = Path("metrics/analyze_rewards.json")


def main(
    params: Params,
    *,
    input: Path | None = None,
    samples: Path | None = None,
    task: str | None = None,
    limit: int = 0,
    out_dir: Path = PLOTS_DIR,
    metrics_path: Path = METRICS,
    **_: Any,
) -> None:
    claim_out_dir(out_dir, "analyze_rewards")  # before any work: --out may be a foreign folder
    task = ar.check_task(task or params.task.name)
    source = input or INPUT
    inputs = ar.load_inputs(source, task, params.data, limit)
    weights, weights_source = reward_components.task_weights(task, params.reward.weights)
    fns = ar.component_functions(task, params)
    check = ar.run_check(inputs.rows, task, fns, weights, weights_source)
    metrics = dict(check.metrics)
    metrics["analyze/rows_skipped"] = inputs.skipped
    metrics["analyze/rows_invalid"] = inputs.invalid
    breakdown = None
    if samples is not None:
        rows_read = ar.read_samples(samples)
        breakdown = ar.score_samples(rows_read, inputs.rows, fns, check, str(samples))
        metrics.update(ar.samples_metrics(breakdown))
    with atomic_dir(out_dir) as tmp:
        mark_out_dir(tmp, "analyze_rewards")
        report.write_plot_data(check, tmp, breakdown)
        report.write_plot_images(check, tmp, breakdown)
        text = report.render_summary(
            check, str(source), breakdown, str(samples) if samples else None
        )
        (tmp / "summary.md").write_text(text, encoding="utf-8")
    write_json(metrics_path, metrics)
    rows: dict[str, Any] = {
        "rows / pairs": f"{metrics['analyze/rows']} / {metrics['analyze/pairs']}",
        f"total gap (must exceed {ar.MIN_GAP})": metrics["analyze/gap/total"],
        "pair accuracy": metrics["analyze/pair_accuracy"],
        "verdict": "pass" if metrics["analyze/pass"] else "FAIL",
    }
    rows.update({f"gap {c}": metrics[f"analyze/gap/{c}"] for c in check.components})
    if breakdown is not None:
        for who in breakdown.who:
            rows[f"{who} total"] = metrics.get(f"analyze/samples/{who}/total", float("nan"))
    rows["summary"] = str(out_dir / "summary.md")
    ui.summary("analyze_rewards", rows)
