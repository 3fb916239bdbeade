"""RL arms side by side: SFT vs PPO (gae) vs GRPO vs Dr. GRPO vs RLOO vs REINFORCE++ vs DPO.

    python bench/arms.py                          # the default data, 3 seeds (hours on 2 cores)
    python bench/arms.py --steps 6 --seeds 0 1    # a shorter profile
    python bench/arms.py --dry-run                # print the experiments it would run
    python bench/arms.py --steps 6 --set dpo.max_length=128   # any other param, every arm
    python bench/arms.py --steps 6 --compare-only # aggregate what has run (after a stop)

Run it in a workspace where ``dvc repro`` has finished (the upstream stages' outputs are in the
DVC cache). Every (arm, seed) is one DVC experiment, ``dvc exp run -S ...`` in the workspace,
run one after another (two torch processes on 2 cores slow each other 5-10x). Each experiment
reruns only the stages whose params it changes: train_ppo and evaluate (``eval.policies =
[ppo, dpo]`` against ``sft``), and train_dpo once per seed (it depends only on ``dpo.*``).
``rlhf-lab compare`` then aggregates arms x seeds (mean and 95% CI across seeds, paired
Wilcoxon between arms on the shared test prompts) and this script writes its result to
``bench/results/arms.json`` (``--out`` elsewhere) with the settings and the CPU.

Fair comparison: every online arm scores the same number of replies per step and gets the same
number of steps. gae and reinforce_pp sample ``ppo.batch_size`` prompts once; the group
estimators (grpo, dr_grpo, rloo: ``group`` in ``rlhf_lab.config.ESTIMATORS``) need groups, so
they sample ``batch_size / G`` prompts ``G`` times (``ppo.num_generations``): ``batch_size``
replies per step either way, the same minibatch size and the same updates. The online arms are
every registered estimator, seeds-major in ``ESTIMATORS``' order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, WORK, machine
from rlhf_lab import presets
from rlhf_lab.config import ESTIMATORS, Params, load_params
from rlhf_lab.evaluation.arms import Experiment
from rlhf_lab.tools.compare import read_at

RESULTS = RESULTS_DIR / "arms.json"
ONLINE = tuple(ESTIMATORS)
GROUP = 4  # samples per prompt for the group estimators


def arm_overrides(arm: str, batch_size: int) -> dict[str, str]:
    """The params of one online arm at ``batch_size`` replies per step."""
    if ESTIMATORS[arm].group:
        if batch_size % GROUP:
            raise SystemExit(f"ppo.batch_size {batch_size} is not a multiple of {GROUP}")
        return {
            "ppo.advantage": arm,
            "ppo.batch_size": str(batch_size // GROUP),
            "ppo.num_generations": str(GROUP),
        }
    return {"ppo.advantage": arm}


def experiments(
    arms: list[str],
    seeds: list[int],
    batch_size: int,
    extra: dict[str, str],
    dpo_seed: int | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """One experiment per (seed, arm), seed-major (a stopped plan has whole seeds).

    The DPO model depends on ``dpo.*`` alone, so every experiment of a seed trains (or DVC's
    run cache restores) the same one: only the seed's first experiment evaluates it
    (``eval.policies`` [ppo, dpo]); the others evaluate PPO alone against the same baseline.
    ``dpo_seed`` fixes ``dpo.seed`` in every experiment (one DPO model, trained once and
    evaluated once) instead of following the seed: DPO costs a third of a seed's time.
    """
    runs = []
    for seed in seeds:
        for i, arm in enumerate(arms):
            evaluates_dpo = i == 0 and (dpo_seed is None or seed == seeds[0])
            sets = {
                **arm_overrides(arm, batch_size),
                "ppo.seed": str(seed),
                "dpo.seed": str(seed if dpo_seed is None else dpo_seed),
                **({} if evaluates_dpo else {"eval.policies": "[ppo]"}),
                **extra,
            }
            runs.append((f"arms-{arm}-s{seed}", sets))
    return runs


def preset_plan(
    preset: str, arms: Sequence[str], seeds: list[int], batch_size: int, extra: dict[str, str]
) -> list[tuple[str, dict[str, str]]]:
    """:func:`experiments` for ``arms`` with a task preset's ``-S`` values
    (``rlhf-lab params --preset <preset>``, ``++key`` for mappings) under ``extra``; each
    experiment named ``<preset>-<arm>-s<seed>``."""
    sets = dict(o.split("=", 1) for o in presets.dvc_overrides(preset))
    runs = experiments(list(arms), seeds, batch_size, {**sets, **extra})
    return [(name.replace("arms-", f"{preset}-", 1), s) for name, s in runs]


def parse_sets(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` arguments as ``{KEY: VALUE}`` (one-line error on a malformed one)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. dpo.max_length=128")
        out[key.strip()] = value
    return out


def _exp_names(all_commits: bool = False) -> list[str]:
    """The names of this workspace's DVC experiments (of HEAD, or of every commit)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "list",
            "--name-only",
            *(["-A"] if all_commits else []),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def plan_parser(doc: str | None, results: Path) -> argparse.ArgumentParser:
    """The options every arms-style bench takes: seeds, steps, eval prompts, ``--set``,
    ``--out``, ``--dry-run``, ``--compare-only``, ``--all-commits``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="ppo.steps for every arm (default: params)")
    parser.add_argument("--eval-prompts", type=int, help="eval.num_prompts (default: params)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one more param, every arm"
    )
    parser.add_argument(
        "--tag", help="appended to every experiment's name: a variant (--set ...) of the plan"
    )
    parser.add_argument("--out", type=Path, default=results)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument(
        "--compare-only", action="store_true", help="run nothing: aggregate the finished ones"
    )
    parser.add_argument(
        "--all-commits",
        action="store_true",
        help="count (and compare) the plan's experiments made on earlier commits too: only when "
        "those commits changed nothing the experiments depend on (check the SFT rows agree)",
    )
    return parser


def tagged(runs: list[tuple[str, dict[str, str]]], tag: str | None):
    """The plan with ``-<tag>`` after each experiment's name (``--tag``): a variant's
    experiments are new ones, not the plain plan's (which would count as already run)."""
    return [(f"{name}-{tag}" if tag else name, sets) for name, sets in runs]


def plan_sets(args: argparse.Namespace) -> dict[str, str]:
    """The ``-S`` values :func:`plan_parser`'s options add to every experiment."""
    extra = {}
    if args.steps:
        extra["ppo.steps"] = str(args.steps)
    if args.eval_prompts:
        extra["eval.num_prompts"] = str(args.eval_prompts)
    extra.update(parse_sets(args.set))
    return extra


def print_plan(runs: list[tuple[str, dict[str, str]]]) -> None:
    """``--dry-run``: each experiment's name and ``-S`` values."""
    for name, sets in runs:
        print(name, " ".join(f"-S {k}={v}" for k, v in sets.items()))


PARAMS = Path("params.yaml")
LEFT = WORK / "params_left.yaml"
"""The params.yaml the last experiment of a plan left in the workspace (git-ignored)."""


def head_params_text() -> str:
    """HEAD's params.yaml: what every experiment of a plan starts from."""
    return subprocess.run(
        ["git", "show", f"HEAD:{PARAMS}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def head_params() -> Params:
    """HEAD's params, which a plan is made from: the workspace's params.yaml holds what the
    last experiment left (a GRPO arm's ``ppo.batch_size`` of 4 would make the next plan's
    group arms sample 1 prompt)."""
    path = WORK / "params_head.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head_params_text())
    return load_params(path)


def check_params(current: str, head: str, left: str | None) -> None:
    """Refuse to run a plan over params.yaml edits of the user's: each experiment starts from
    HEAD's params.yaml (plus its ``-S`` values), so the file is rewritten before each one. That
    is safe when it is HEAD's or what this script's last experiment left (``left``)."""
    if current not in (head, left):
        raise SystemExit(
            f"{PARAMS} has changes that are neither HEAD's nor the last benchmark experiment's: "
            "commit or stash them (each experiment runs on HEAD's params plus its -S values)"
        )


def run_plan(
    runs: list[tuple[str, dict[str, str]]],
    seconds_file: Path,
    compare_only: bool = False,
    all_commits: bool = False,
) -> tuple[dict[str, float], set[str]]:
    """Run the plan's experiments one after another in the workspace; ``(wall seconds by
    experiment, names of the finished ones)``.

    In the workspace, not ``--temp``: like ``dvc repro``, ``dvc exp run`` there skips every
    stage whose deps and params match ``dvc.lock``, so a seed's second arm reruns train_ppo and
    evaluate only. A ``--temp`` copy starts from HEAD's lock and relies on the run cache, which
    DVC never writes for a stage with a git-tracked (``cache: false``) output that is not a
    metric or plot (``Stage.run`` in DVC 3), and every stage here has one
    (``metrics/full/<stage>.json``), so each ``--temp`` experiment re-ran the whole pipeline.
    Before each experiment params.yaml goes back to HEAD's (:func:`check_params` first), so
    none inherits the previous one's values, of this plan or of another. The workspace ends
    holding the last experiment (``git checkout params.yaml dvc.lock && dvc checkout`` returns
    to HEAD's).

    An experiment that already exists (a stopped earlier call) is not run again: rerunning the
    same command resumes the plan; with ``all_commits``, one made on an earlier commit counts.
    The seconds are kept across calls in ``seconds_file`` (under bench/.work, git-ignored).
    """
    done = set(_exp_names(all_commits))
    seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}
    head = head_params_text()
    left = LEFT.read_text() if LEFT.is_file() else None
    todo = [(n, sets) for n, sets in runs if n not in done and not compare_only]
    if todo:
        check_params((ROOT / PARAMS).read_text(), head, left)
    for name, sets in todo:
        (ROOT / PARAMS).write_text(head)
        start = time.perf_counter()
        sets_args = [a for k, v in sets.items() for a in ("-S", f"{k}={v}")]
        _run([sys.executable, "-m", "dvc", "exp", "run", "--name", name, *sets_args])
        seconds[name] = time.perf_counter() - start
        seconds_file.parent.mkdir(parents=True, exist_ok=True)
        seconds_file.write_text(json.dumps(seconds, indent=2) + "\n")
        LEFT.write_text((ROOT / PARAMS).read_text())
    return seconds, set(_exp_names(all_commits))


def compare_plan(
    runs: list[tuple[str, dict[str, str]]],
    finished: set[str],
    out: Path,
    all_commits: bool = False,
) -> dict[str, Any]:
    """``rlhf-lab compare`` over the plan's finished experiments (its JSON, read back)."""
    ran = [n for n, _ in runs if n in finished]
    if not ran:
        raise SystemExit("no experiment of this plan has finished: nothing to compare")
    out.parent.mkdir(parents=True, exist_ok=True)
    compared = out.with_suffix(".compare.json")
    flags = ["--all-commits"] if all_commits else []
    _run(["rlhf-lab", "compare", *ran, *flags, "--out", str(compared)])
    result = json.loads(compared.read_text())
    compared.unlink()
    return result


def plan_result(
    script: str,
    args: argparse.Namespace,
    params: Params,
    runs: list[tuple[str, dict[str, str]]],
    finished: set[str],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What every arms-style result file opens with: the command that reproduces it (a
    ``--compare-only`` call only aggregated it), the machine, the budget and the experiments."""
    return {
        "command": f"python bench/{script} "
        + " ".join(a for a in sys.argv[1:] if a != "--compare-only"),
        **machine(),
        "replies_per_step": params.ppo.batch_size,
        "steps": args.steps or params.ppo.steps,
        "experiments": {name: sets for name, sets in runs if name in finished},
        "missing": [name for name, _ in runs if name not in finished],
        "experiment_seconds": {n: s for n, s in seconds.items() if n in finished},
    }


def _cell(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("mean", "ci_lo", "ci_hi")} | {"seeds": summary["n"]}


def summarise_arms(
    compared: Mapping[str, Any], metrics: Sequence[tuple[str, str, str | None]]
) -> dict[str, Any]:
    """A task benchmark's per-arm figures from ``rlhf-lab compare``'s JSON.

    ``metrics``: (name in the result, compare's column, the per-reply score in samples.jsonl
    or None for a corpus metric). ``arms``: arm -> name -> ``{"mean", "ci_lo", "ci_hi",
    "seeds"}``, with ``vs_baseline_seeds`` (``mean_diff``, t-interval, ``ttest_p``, ``n``) and,
    for a per-reply metric, ``vs_baseline_prompts`` (``mean_diff``, paired-bootstrap CI,
    ``wilcoxon_p``, ``n_prompts``) for every arm evaluated against a baseline; ``baseline``:
    that arm's name.
    """
    versus = {v["arm"]: v for v in compared.get("vs_baseline") or []}
    arms: dict[str, dict[str, Any]] = {}
    for arm in compared["arms"]:
        row = {}
        vs = versus.get(arm["arm"])
        for name, column, score in metrics:
            if column not in arm["metrics"]:
                continue
            cell = _cell(arm["metrics"][column])
            if vs is not None and column in vs["seeds"]:
                cell["vs_baseline_seeds"] = vs["seeds"][column]
            if vs is not None and score is not None and score in vs["prompts"]:
                cell["vs_baseline_prompts"] = vs["prompts"][score]
            row[name] = cell
        arms[arm["arm"]] = row
    baselines = {v["baseline"] for v in versus.values()}
    return {
        "baseline": baselines.pop() if len(baselines) == 1 else sorted(baselines),
        "arms": arms,
    }


def metrics_at(exp: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The metrics file ``path`` at a compared experiment's rev (``rlhf-lab compare``'s
    ``experiments`` entry: ``name``, ``rev``); None when it is not there."""
    text = read_at(path, Experiment(exp["name"], exp["rev"], {}, {}))
    return None if text is None else json.loads(text)


def first_metrics(compared: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The metrics file ``path`` at the first compared experiment's rev that has it ({} when
    none does): for what is the same in every experiment of a plan (its SFT baseline, the
    recommender)."""
    for exp in compared.get("experiments") or []:
        if (metrics := metrics_at(exp, path)) is not None:
            return metrics
    return {}


def fmt(x: float) -> str:
    """A figure for a markdown table: one decimal from 10 up, else three."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3f}"


def markdown_table(
    result: Mapping[str, Any],
    labels: Mapping[str, str],
    reference: Mapping[str, str],
    reference_head: str,
) -> str:
    """:func:`summarise_arms`'s ``arms`` as a markdown table: per metric (``labels``: name ->
    row label, in row order) and arm the mean over seeds with its 95% interval; for an RL arm
    the difference from the baseline and its p (per prompt, Wilcoxon, where the metric is per
    reply; else over seeds, paired t); ``reference``: name -> the last column's cell."""
    arms = list(result["arms"])
    head = ["metric", *arms, reference_head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, label in labels.items():
        cells = []
        for arm in arms:
            c = result["arms"][arm].get(name)
            if c is None:
                cells.append("")
                continue
            text = fmt(c["mean"])
            if c["ci_lo"] is not None:  # one seed has no interval
                text += f" [{fmt(c['ci_lo'])}, {fmt(c['ci_hi'])}]"
            vs = c.get("vs_baseline_prompts") or c.get("vs_baseline_seeds")
            if vs is not None:
                p = vs.get("wilcoxon_p", vs.get("ttest_p"))
                text += f"; Δ {vs['mean_diff']:+.3g}" + ("" if p is None else f", p {p:.2g}")
            cells.append(text)
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {reference.get(name, '')} |")
    return "\n".join(lines)


def preset_main(
    script: str,
    doc: str | None,
    preset: str,
    arms: Sequence[str],
    results: Path,
    summary: Callable[[dict[str, Any]], dict[str, Any]],
    table: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """A task benchmark's whole command (``bench/docstring.py``, ``bench/crs.py``): the
    :func:`preset_plan` of ``arms`` on ``preset``, printed (``--dry-run``) or run and compared,
    then ``results`` (``--out``): :func:`plan_result`, the preset, ``summary(compared)`` and
    ``rlhf-lab compare``'s JSON; ``table(result)``, when given, is printed (markdown)."""
    parser = plan_parser(doc, results)
    parser.add_argument("--arms", nargs="*", default=list(arms), choices=arms)
    args = parser.parse_args()
    params = presets.preset_params(preset, head_params())
    runs = preset_plan(preset, args.arms, args.seeds, params.ppo.batch_size, plan_sets(args))
    runs = tagged(runs, args.tag)
    if args.dry_run:
        print_plan(runs)
        return

    seconds, finished = run_plan(
        runs, WORK / f"{preset}_seconds.json", args.compare_only, args.all_commits
    )
    compared = compare_plan(runs, finished, args.out, args.all_commits)
    result = {
        **plan_result(script, args, params, runs, finished, seconds),
        "preset": preset,
        **summary(compared),
        "compare": compared,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if table is not None:
        print(table(result))
    print(f"wrote {args.out}")


def main() -> None:
    parser = plan_parser(__doc__, RESULTS)
    parser.add_argument("--arms", nargs="*", default=list(ONLINE), choices=ONLINE)
    parser.add_argument("--dpo-seed", type=int, help="one DPO model (this dpo.seed) for all seeds")
    args = parser.parse_args()

    params = head_params()
    extra = plan_sets(args)
    runs = experiments(args.arms, args.seeds, params.ppo.batch_size, extra, args.dpo_seed)
    runs = tagged(runs, args.tag)
    if args.dry_run:
        print_plan(runs)
        return

    seconds, finished = run_plan(
        runs, WORK / "arms_seconds.json", args.compare_only, args.all_commits
    )
    compared = compare_plan(runs, finished, args.out, args.all_commits)
    result = {
        **plan_result("arms.py", args, params, runs, finished, seconds),
        "group_size": GROUP,  # replies per prompt of the group estimators
        "dpo_seeds": "per seed" if args.dpo_seed is None else [args.dpo_seed],
        "compare": compared,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
