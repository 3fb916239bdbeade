"""The fast path against the default over seeds: ``critic.shared_trunk`` vs the separate critic.

    python bench/shared_trunk.py --dry-run       # print the experiments it would run
    python bench/shared_trunk.py                 # seeds 0-2, both critics (about an hour)
    python bench/shared_trunk.py --compare-only  # aggregate what has run (after a stop)

Run it in a workspace where ``dvc repro`` has finished on the default params. Every (critic,
seed) is one DVC experiment in the workspace (``bench/arms.py``'s plan runner, one after
another, each from HEAD's params.yaml), the separate critic's seeds first, so train_critic
reruns once when the layout changes; the separate critic at HEAD's seed is the committed run
itself, and nothing reruns for it. Each experiment retrains PPO (gae) at ``ppo.seed`` and
evaluates it against the same SFT model (and the same DPO model) on the same test prompts.

``rlhf-lab compare`` aggregates each layout's seeds on its own (both are the arm ``ppo:gae``):
the reward-model score, win rates and KL to SFT with 95% Student-t intervals, the gain over SFT
(per seed, paired t; per prompt, Wilcoxon) and each seed's verdict. train_ppo's own metrics
add the critic's explained variance, its last-step score and KL, and its rollout and update
seconds. The result goes to ``bench/results/shared_trunk.json`` with the machine and the
command; a layout earns the default by learning as well (score, KL, explained variance,
verdicts) in less time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from arms import (
    compare_plan,
    head_params,
    metrics_at,
    plan_parser,
    plan_result,
    plan_sets,
    print_plan,
    run_plan,
    tagged,
)
from benchlib import RESULTS as RESULTS_DIR
from benchlib import WORK
from rlhf_lab.headline import full_path
from rlhf_lab.stages.train_ppo import METRICS as PPO_METRICS

RESULTS = RESULTS_DIR / "shared_trunk.json"
LAYOUTS = {"separate": "false", "shared": "true"}
"""Experiment name part -> ``critic.shared_trunk``; the separate critic (the default) first."""
ARM = "ppo:gae"
TRAIN_METRICS = (
    "val/explained_variance",
    "objective/score",
    "objective/kl",
    "time/total_rollout_s",
    "time/total_update_s",
)
"""train_ppo's metrics kept per experiment."""


def plan(seeds: Sequence[int], extra: Mapping[str, str]) -> list[tuple[str, dict[str, str]]]:
    """One experiment per (layout, seed), layout-major (train_critic reruns once)."""
    return [
        (f"trunk-{layout}-s{seed}", {"critic.shared_trunk": v, "ppo.seed": str(seed), **extra})
        for layout, v in LAYOUTS.items()
        for seed in seeds
    ]


def train_metrics(experiments: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """train_ppo's :data:`TRAIN_METRICS` of each compared experiment (by name), read at its
    rev; an experiment whose file is not there is left out."""
    out = {}
    for exp in experiments:
        if (metrics := metrics_at(exp, str(full_path(PPO_METRICS)))) is not None:
            out[exp["name"]] = {k: metrics[k] for k in TRAIN_METRICS if k in metrics}
    return out


def layout_summary(compared: Mapping[str, Any], train: Mapping[str, Mapping[str, float]]):
    """One layout's figures: compare's ``ppo:gae`` arm (metrics, verdicts, seeds), its gain
    over SFT, and train_ppo's metrics per experiment with their mean."""
    arm = next(a for a in compared["arms"] if a["arm"] == ARM)
    versus = next((v for v in compared.get("vs_baseline") or [] if v["arm"] == ARM), None)
    per_exp = {name: train[name] for name in arm["experiments"] if name in train}
    means = {
        k: sum(m[k] for m in per_exp.values()) / len(per_exp)
        for k in TRAIN_METRICS
        if per_exp and all(k in m for m in per_exp.values())
    }
    return {
        "seeds": arm["seeds"],
        "experiments": arm["experiments"],
        "verdicts": arm["verdicts"],
        "metrics": arm["metrics"],
        "vs_sft": versus,
        "train_ppo": per_exp,
        "train_ppo_mean": means,
    }


def markdown(result: Mapping[str, Any]) -> str:
    """The two layouts side by side: mean over seeds [95% interval] where compare has one."""
    layouts = result["layouts"]
    head = ["", *layouts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(summary: Mapping[str, Any] | None) -> str:
        if summary is None:
            return ""
        text = f"{summary['mean']:.3f}"
        if summary.get("ci_lo") is not None:
            text += f" [{summary['ci_lo']:.3f}, {summary['ci_hi']:.3f}]"
        return text

    for label, key in (
        ("RM score", "rm_score"),
        ("win rate vs SFT (RM)", "win_rate_rm"),
        ("length-controlled win rate", "win_rate_rm_lc"),
        ("KL to SFT (nats/reply)", "kl"),
        ("reply tokens", "tokens"),
    ):
        lines.append(
            f"| {label} | "
            + " | ".join(cell(layouts[n]["metrics"].get(key)) for n in layouts)
            + " |"
        )
    for label, key in (
        ("explained variance (last step)", "val/explained_variance"),
        ("train_ppo rollout + update (s)", None),
    ):
        cells = []
        for n in layouts:
            m = layouts[n]["train_ppo_mean"]
            if key is None:
                value = m.get("time/total_rollout_s", 0) + m.get("time/total_update_s", 0)
            else:
                value = m.get(key)
            cells.append("" if value is None else f"{value:.3f}" if key else f"{value:.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| verdicts by seed | "
        + " | ".join(", ".join(str(v) for v in layouts[n]["verdicts"]) for n in layouts)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    args = plan_parser(__doc__, RESULTS).parse_args()
    params = head_params()
    runs = tagged(plan(args.seeds, plan_sets(args)), args.tag)
    if args.dry_run:
        print_plan(runs)
        return
    seconds, finished = run_plan(
        runs, WORK / "shared_trunk_seconds.json", args.compare_only, args.all_commits
    )
    layouts = {}
    for layout in LAYOUTS:
        mine = [(n, s) for n, s in runs if s["critic.shared_trunk"] == LAYOUTS[layout]]
        if not any(n in finished for n, _ in mine):
            continue
        compared = compare_plan(mine, finished, args.out, args.all_commits)
        layouts[layout] = layout_summary(compared, train_metrics(compared["experiments"]))
    result = {
        **plan_result("shared_trunk.py", args, params, runs, finished, seconds),
        "layouts": layouts,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
