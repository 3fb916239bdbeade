"""evaluate: compare each RL policy with the baseline on held-out prompts, decide what next.

    rlhf-lab evaluate --params params.yaml

Reads ``task``, ``eval`` and ``reward.length_band`` (and ``judge`` when ``eval.judge`` is true),
``data/grounded/test.jsonl`` (train_recommender: the test prompts as the policy sees
them), ``models/<name>`` for ``eval.baseline`` (sft) and every one of
``eval.policies`` (ppo, dpo), ``models/reward`` and ``models/base/encoder``. Writes
``metrics/evaluate.json`` (flat keys: ``sft/...``, ``ppo/...``, ``dpo/...``, ``ref/...``,
``delta/<policy>/...``, ``verdict/<policy>/...``), ``reports/samples.jsonl``,
``reports/report.md`` and ``plots/evaluate/``
(PNGs plus DVC plot data). The library is ``rlhf_lab.evaluation.pipeline`` (sampling,
scoring, metrics, gates), ``rlhf_lab.evaluation.report`` (report, samples) and
``rlhf_lab.evaluation.figures`` (plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf_lab import ui
from rlhf_lab.config import Params, section_dict
from rlhf_lab.evaluation import figures, report
from rlhf_lab.evaluation.pipeline import EvalPaths, JudgeScorer, load_prompt_rows, run_evaluation
from rlhf_lab.headline import full_path, write_metrics
from rlhf_lab.io import atomic_dir, stage_outputs, write_jsonl
from rlhf_lab.models import read_provenance
from rlhf_lab.tasks.registry import get_task

PROMPTS = Path("data/grounded/test.jsonl")
REPORTS_DIR = Path("reports")
PLOTS_DIR = Path("plots/evaluate")
METRICS = Path("metrics/evaluate.json")
PATHS = EvalPaths()


def _judge_factory(params: Params) -> JudgeScorer:
    # Imported only when eval.judge is on: building a judge loads a second LM (local backend).
    from rlhf_lab.judge import build_judge

    context = get_task(params.task.name).load_context(params)  # crs: data.catalogue
    return build_judge(params.judge, params.task.name, progress=True, context=context).score


def _run_params(params: Params) -> dict[str, Any]:
    """The params the report lists: this stage's, plus what made each evaluated model."""
    sections: dict[str, Any] = section_dict(params, "task", "eval")
    sections["reward"] = {"length_band": params.reward.length_band}
    for name in params.eval.models:
        made_by = read_provenance(PATHS.policy(name)).get("params", {})
        if name in made_by:
            sections[name] = made_by[name]
    return report.flatten_params(sections)


def main(params: Params, **_: Any) -> None:
    cfg = params.eval
    rows = load_prompt_rows(PROMPTS, cfg.num_prompts)
    result = run_evaluation(
        rows,
        params,
        paths=PATHS,
        judge_factory=(lambda: _judge_factory(params)) if cfg.judge else None,
    )
    with stage_outputs(PLOTS_DIR, REPORTS_DIR, full_path(METRICS), METRICS):
        with atomic_dir(PLOTS_DIR) as tmp:
            figures.write_plot_images(result, tmp)
            figures.write_plot_data(result, tmp)
        with atomic_dir(REPORTS_DIR) as tmp:
            write_jsonl(tmp / "samples.jsonl", report.sample_rows(result))
            text = report.render_report(
                result,
                plots_rel=f"../{PLOTS_DIR.as_posix()}",
                run_params=_run_params(params),
                n_boot=cfg.n_boot,
            )
            (tmp / "report.md").write_text(text, encoding="utf-8")
        write_metrics(METRICS, result.metrics)
    m, base = result.metrics, cfg.baseline
    summary: dict[str, Any] = {f"reward model {base}": f"{m[f'{base}/rm_score']:.3f}"}
    for p in cfg.policies:
        d = f"delta/{p}"
        summary[f"{p}: verdict"] = m[f"verdict/{p}/decision"]
        summary[f"{p}: failed gates"] = m[f"verdict/{p}/failed_gates"] or "none"
        summary[f"{p}: reward model"] = f"{m[f'{p}/rm_score']:.3f}"
        summary[f"{p}: win rate (raw / length-controlled)"] = (
            f"{m[f'{d}/win_rate_rm']:.3f} / {m.get(f'{d}/win_rate_rm_lc', float('nan')):.3f}"
        )
        summary[f"{p}: Wilcoxon p"] = m[f"{d}/rm_pvalue_wilcoxon"]
        summary[f"{p}: KL({p} ‖ {base})"] = m[f"{d}/kl"]
    summary["report"] = str(REPORTS_DIR / "report.md")
    ui.summary("evaluate", summary)
