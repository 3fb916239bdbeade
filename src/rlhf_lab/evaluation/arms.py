"""``rlhf-lab compare``'s library: evaluate's results across DVC experiments, arms × seeds.

An *arm* is one kind of trained policy: the policy's name, plus ``ppo.advantage`` for PPO
(``ppo:gae``, ``ppo:grpo``; just ``ppo`` when the params have no such key), or the baseline
(``sft``). Each experiment (``dvc exp run -S ppo.seed=1 ...``) contributes one run per arm it
evaluated; the run's seed is the ``<policy>.seed`` param (None without one). The same arm and
seed in two experiments with identical results is the same run (e.g. the DPO model of
experiments that differ only in PPO params) and counts once; the same arm and seed with
different results (another param differs) is kept and flagged in ``warnings``.

Per arm, :func:`aggregate` gives the mean and a 95% Student-t interval across seeds of the
reward-model score, win rate and length-controlled win rate vs the baseline, KL(policy ||
baseline), length in tokens and BERTScore F1 (Henderson et al. 2018, "Deep RL that Matters":
report across seeds, never one run). Between every two arms it runs a paired Wilcoxon test on
the prompts they share: each prompt's reward-model score averaged over the arm's seeds, so
the test pairs prompts (as evaluate does) and the seeds' noise is averaged out first.

Pure: dicts in, dicts out. ``rlhf_lab.tools.compare`` runs ``dvc exp show --json`` and reads
each experiment's ``reports/samples.jsonl``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_lab.errors import DataError
from rlhf_lab.evaluation import stats
from rlhf_lab.reward_components import REWARD_MODEL

METRICS_FILE = "metrics/evaluate.json"
PARAMS_FILE = "params.yaml"
CONFIDENCE = 0.95

ARM_METRICS: tuple[tuple[str, str], ...] = (
    # (column, metric key with {m} = the arm's model name)
    ("rm_score", "{m}/rm_score"),
    ("win_rate_rm", "delta/{m}/win_rate_rm"),
    ("win_rate_rm_lc", "delta/{m}/win_rate_rm_lc"),
    ("kl", "delta/{m}/kl"),
    ("tokens", "{m}/tokens"),
    ("bertscore_f1", "{m}/bertscore_f1"),
    # a task with a rule reward (docstring's Phase-1 columns); absent elsewhere
    ("reward", "{m}/reward/total_with_reference"),
    ("bleu4", "{m}/bleu4"),
    ("rougeL", "{m}/rougeL"),
    ("meteor", "{m}/meteor"),
    ("doctest_examples", "{m}/doctest/with_example"),
    ("doctest_pass", "{m}/doctest/pass_rate"),
    ("kl_per_token", "delta/{m}/kl_per_token"),
    # crs (ECR's reply metrics); bleu1 and distinct-n exist for every task with references
    ("bleu1", "{m}/bleu1"),
    ("distinct1", "{m}/distinct1"),
    ("distinct2", "{m}/distinct2"),
    ("empathy", "{m}/reward/crs/empathy"),
    ("judge_emotional_intensity", "{m}/judge/emotional_intensity"),
    ("judge_emotional_persuasiveness", "{m}/judge/emotional_persuasiveness"),
    ("rec_hit_rate", "{m}/rec_hit_rate"),
    ("rec_rate", "{m}/rec_rate"),
    ("hallucinated_rate", "{m}/hallucinated_rate"),
)
"""What the table shows per arm, read from ``metrics/evaluate.json`` (a column no arm has is
left out of the table)."""


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show --json``: its name, git rev, params and evaluate metrics."""

    name: str
    rev: str
    params: dict[str, Any]
    """``params.yaml`` flattened: ``{"ppo.seed": 1, "eval.policies": [...], ...}``."""
    metrics: dict[str, Any]


@dataclass
class ArmRun:
    """One arm in one experiment (one seed)."""

    arm: str
    model: str
    """The model dir name (``ppo``), the prefix of its metric keys."""
    seed: Any
    """The ``<model>.seed`` param (None without one, e.g. for an SFT baseline)."""
    experiment: str
    values: dict[str, float]
    """``ARM_METRICS`` columns this run has."""
    prompt_rm: dict[str, float] = field(default_factory=dict)
    """Test prompt id -> this run's reward-model score."""
    verdict: str | None = None
    """``verdict/<model>/decision`` (None for the baseline)."""
    baseline: str | None = None
    """The arm this run was evaluated against in its experiment (None: it is the baseline)."""
    prompt_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    """Every per-reply score of ``reports/samples.jsonl`` (the rule components, ``flag/*``,
    ``judge/*``...) -> test prompt id -> this run's value."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _entry(row: Mapping[str, Any]) -> Experiment | None:
    data = row.get("data") or {}
    metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
    if not metrics:
        return None  # no evaluate results at this rev (not run, or failed)
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    rev = str(row.get("rev"))
    # DVC names the workspace row by its rev ("workspace") and leaves its name null
    name = row.get("name") or (rev if rev == "workspace" else rev[:7])
    return Experiment(name, rev, _flatten(params), dict(metrics))


def parse_exp_show(show: Sequence[Mapping[str, Any]]) -> list[Experiment]:
    """Every experiment (and baseline commit) with evaluate metrics in ``dvc exp show --json``.

    The workspace row comes first under the name ``workspace``; baseline commits and their
    experiments follow in the order DVC lists them.
    """
    out = []
    for row in show:
        if (exp := _entry(row)) is not None:
            out.append(exp)
        for group in row.get("experiments") or []:
            for rev in group.get("revs") or []:
                if (exp := _entry(rev)) is not None:
                    out.append(exp)
    return out


def select(experiments: Sequence[Experiment], names: Sequence[str]) -> list[Experiment]:
    """The experiments named (by name or a rev prefix of 7+ characters), in that order.

    DataError naming the unknown ones (and the known names) otherwise.
    """
    chosen, unknown = [], []
    for name in names:
        match = [
            e for e in experiments if e.name == name or (len(name) >= 7 and e.rev.startswith(name))
        ]
        if match:
            chosen.append(match[0])
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(e.name for e in experiments) or "none"
        raise DataError(
            f"compare: no evaluated experiment {', '.join(map(repr, unknown))} in "
            f"`dvc exp show` (evaluated: {known})"
        )
    return chosen


def arm_name(model: str, params: Mapping[str, Any]) -> str:
    """``ppo:<ppo.advantage>`` for PPO when the param exists, else the model name."""
    advantage = params.get("ppo.advantage")
    return f"ppo:{advantage}" if model == "ppo" and advantage is not None else model


def models_of(exp: Experiment) -> tuple[str, list[str]]:
    """``(baseline, policies)`` evaluated in ``exp``: from its params, else its metric keys."""
    baseline = exp.params.get("eval.baseline")
    policies = exp.params.get("eval.policies")
    if baseline is None or policies is None:
        policies = sorted(
            {k.split("/")[1] for k in exp.metrics if k.startswith("delta/") and k.count("/") >= 2}
        )
        baseline = "sft"
    return str(baseline), [str(p) for p in policies]


def arm_runs(exp: Experiment, samples: Sequence[Mapping[str, Any]]) -> list[ArmRun]:
    """The baseline's and every policy's run in ``exp``, with per-prompt RM scores from
    evaluate's ``reports/samples.jsonl`` rows (``<model>_scores.reward_model``)."""
    baseline, policies = models_of(exp)
    runs = []
    for model in (baseline, *policies):
        prompt_scores: dict[str, dict[str, float]] = {}
        for row in samples:
            for key, score in (row.get(f"{model}_scores") or {}).items():
                if row.get("id") is not None and isinstance(score, int | float):
                    prompt_scores.setdefault(key, {})[str(row["id"])] = float(score)
        values = {}
        for column, key in ARM_METRICS:
            v = exp.metrics.get(key.format(m=model))
            if isinstance(v, int | float) and math.isfinite(v):
                values[column] = float(v)
        runs.append(
            ArmRun(
                arm=arm_name(model, exp.params),
                model=model,
                seed=exp.params.get(f"{model}.seed"),
                experiment=exp.name,
                values=values,
                prompt_rm=prompt_scores.get(REWARD_MODEL, {}),
                verdict=exp.metrics.get(f"verdict/{model}/decision"),
                baseline=None if model == baseline else arm_name(baseline, exp.params),
                prompt_scores=prompt_scores,
            )
        )
    return runs


SAME_RUN_REL_TOL = 1e-6
"""Two evaluations of one model agree to this relative tolerance: evaluate is deterministic up
to float summation order, and BERTScore batches a model's replies with those of the other
policies evaluated beside it (its F1 moved by 1e-9 between an experiment that evaluated DPO and
one that did not)."""


def _close(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=SAME_RUN_REL_TOL, abs_tol=1e-12) for k in a
    )


def _same_run(a: ArmRun, b: ArmRun) -> bool:
    # one model evaluated in two experiments: the same numbers up to float noise
    return a.seed == b.seed and _close(a.values, b.values) and _close(a.prompt_rm, b.prompt_rm)


def _unique(runs: Iterable[ArmRun]) -> dict[str, list[ArmRun]]:
    """Runs by arm (first-seen order), each run once (see the module docstring)."""
    by_arm: dict[str, list[ArmRun]] = {}
    for run in runs:
        seen = by_arm.setdefault(run.arm, [])
        if not any(_same_run(r, run) for r in seen):
            seen.append(run)
    return by_arm


def _prompt_values(run: ArmRun, key: str) -> dict[str, float]:
    return run.prompt_rm if key == REWARD_MODEL else run.prompt_scores.get(key, {})


def _prompt_means(runs: Sequence[ArmRun], key: str = REWARD_MODEL) -> dict[str, float]:
    """Prompt id -> mean score ``key`` over the runs, on the prompts every run scored."""
    values = [_prompt_values(r, key) for r in runs]
    shared = set.intersection(*(set(v) for v in values)) if runs else set()
    return {p: float(np.mean([v[p] for v in values])) for p in sorted(shared)}


def _p(value: float) -> float | None:
    # NaN (too few pairs) as None: JSON has no NaN
    return value if math.isfinite(value) else None


def versus_baseline(runs: Sequence[ArmRun]) -> list[dict[str, Any]]:
    """Each policy arm against the baseline it was evaluated with, paired two ways.

    ``seeds``: per column, the run's value minus its own experiment's baseline value, one
    difference per seed: mean and 95% Student-t interval of the differences, and the paired
    t-test p-value across seeds (None with one seed). ``prompts``: per per-reply score of
    ``reports/samples.jsonl`` (reward model, the task's flags and rules, judge dimensions),
    each prompt's value averaged over the arm's seeds minus the baseline's: the mean, its 95%
    paired-bootstrap CI (:func:`stats.mean_ci`) and the Wilcoxon signed-rank p-value over the
    shared prompts. Corpus metrics (BLEU, distinct-n) have only the seed pairing.

    Returns ``[{"arm", "baseline", "seeds": {column: {"mean_diff", "ci_lo", "ci_hi", "n",
    "ttest_p"}}, "prompts": {score: {"n_prompts", "mean_diff", "ci_lo", "ci_hi",
    "wilcoxon_p"}}}]``, one per policy arm in first-seen order.
    """
    in_exp = {(r.experiment, r.arm): r for r in runs}
    pairs: dict[str, list[tuple[ArmRun, ArmRun]]] = {}
    for run in runs:
        base = in_exp.get((run.experiment, run.baseline)) if run.baseline else None
        if base is None:
            continue
        seen = pairs.setdefault(run.arm, [])
        if not any(_same_run(p, run) for p, _ in seen):
            seen.append((run, base))
    baselines = _unique(r for r in runs if r.baseline is None)
    out = []
    for arm, arm_pairs in pairs.items():
        by_seed = {}
        for column, _ in ARM_METRICS:
            both = [
                (p.values[column], b.values[column])
                for p, b in arm_pairs
                if column in p.values and column in b.values
            ]
            if not both:
                continue
            xp, xb = np.array([x for x, _ in both]), np.array([y for _, y in both])
            mean, lo, hi = stats.t_interval(xp - xb, confidence=CONFIDENCE)
            p = stats.paired_test(xp, xb)["ttest_p"] if len(both) > 1 else float("nan")
            by_seed[column] = {
                "mean_diff": mean,
                "ci_lo": lo,
                "ci_hi": hi,
                "n": len(both),
                "ttest_p": _p(p),
            }
        policy_runs = [p for p, _ in arm_pairs]
        base_name = arm_pairs[0][1].arm
        base_runs = baselines.get(base_name, [])
        keys = set.intersection(
            *(set(r.prompt_scores) | {REWARD_MODEL} for r in policy_runs + base_runs)
        )
        by_prompt = {}
        for key in sorted(keys):
            a, b = _prompt_means(policy_runs, key), _prompt_means(base_runs, key)
            shared = sorted(set(a) & set(b))
            if not shared:
                continue
            xa, xb = np.array([a[q] for q in shared]), np.array([b[q] for q in shared])
            _, lo, hi = stats.mean_ci(xa - xb, confidence=CONFIDENCE)
            test = stats.paired_test(xa, xb)
            by_prompt[key] = {
                "n_prompts": len(shared),
                "mean_diff": test["mean_diff"],
                "ci_lo": lo,
                "ci_hi": hi,
                "wilcoxon_p": _p(test["wilcoxon_p"]),
            }
        out.append({"arm": arm, "baseline": base_name, "seeds": by_seed, "prompts": by_prompt})
    return out


def aggregate(runs: Iterable[ArmRun]) -> dict[str, Any]:
    """Arms × seeds: per arm the mean and 95% t-interval across seeds of each column, and a
    paired Wilcoxon test between every two arms on their shared prompts.

    Returns ``{"arms": [{"arm", "model", "seeds", "experiments", "verdicts", "metrics":
    {column: {"mean", "ci_lo", "ci_hi", "n"}}}], "tests": [{"a", "b", "n_prompts", "mean_diff",
    "win_rate", "wilcoxon_p"}], "vs_baseline": [...] (:func:`versus_baseline`), "warnings":
    [...]}``; ``ci_lo``/``ci_hi`` are None with one seed; a test is left out when the two arms
    share no prompt.
    """
    runs = list(runs)
    by_arm = _unique(runs)
    arms = []
    for arm, rs in by_arm.items():
        summary: dict[str, Any] = {}
        for column, _ in ARM_METRICS:
            vals = [r.values[column] for r in rs if column in r.values]
            if vals:
                mean, lo, hi = stats.t_interval(vals, confidence=CONFIDENCE)
                summary[column] = {"mean": mean, "ci_lo": lo, "ci_hi": hi, "n": len(vals)}
        arms.append(
            {
                "arm": arm,
                "model": rs[0].model,
                "seeds": [r.seed for r in rs],
                "experiments": [r.experiment for r in rs],
                "verdicts": [r.verdict for r in rs],
                "metrics": summary,
            }
        )
    tests = []
    means = {arm: _prompt_means(rs) for arm, rs in by_arm.items()}
    for a, b in itertools.combinations(by_arm, 2):
        shared = sorted(set(means[a]) & set(means[b]))
        if not shared:
            continue
        xa = np.array([means[a][p] for p in shared])
        xb = np.array([means[b][p] for p in shared])
        test = stats.paired_test(xa, xb)
        tests.append(
            {
                "a": a,
                "b": b,
                "n_prompts": len(shared),
                "mean_diff": test["mean_diff"],
                "win_rate": stats.win_rate(xa, xb),
                "wilcoxon_p": _p(test["wilcoxon_p"]),
            }
        )
    warnings = [
        f"{arm}: seed {seed!r} appears in {n} experiments with different results (another "
        "param differs between them; they are averaged as if seeds)"
        for arm, rs in by_arm.items()
        for seed in dict.fromkeys(r.seed for r in rs)
        if (n := sum(r.seed == seed for r in rs)) > 1
    ]
    return {
        "arms": arms,
        "tests": tests,
        "vs_baseline": versus_baseline(runs),
        "warnings": warnings,
    }


def _cell(m: Mapping[str, Any] | None) -> str:
    if m is None:
        return "–"
    if m["ci_lo"] is None:
        return f"{m['mean']:.3f} (1 seed)"
    return f"{m['mean']:.3f} ± {m['mean'] - m['ci_lo']:.3f}"


def table_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The arms table as (header, rows of strings): ``mean ± CI half-width`` per column."""
    columns = [c for c, _ in ARM_METRICS if any(c in a["metrics"] for a in result["arms"])]
    header = ["arm", "seeds", *columns]
    rows = [
        [a["arm"], str(len(a["seeds"])), *(_cell(a["metrics"].get(c)) for c in columns)]
        for a in result["arms"]
    ]
    return header, rows


def compare(
    experiments: Sequence[Experiment],
    read_samples: Callable[[Experiment], Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """:func:`aggregate` over the experiments, each one's samples from ``read_samples``."""
    if not experiments:
        raise DataError("compare: no experiment with metrics/evaluate.json to compare")
    runs = [run for exp in experiments for run in arm_runs(exp, read_samples(exp))]
    result = aggregate(runs)
    result["experiments"] = [{"name": e.name, "rev": e.rev} for e in experiments]
    return result
