"""evaluate's statistics: per-model corpus metrics and paired policy-vs-baseline comparisons.

Every policy in ``eval.policies`` is compared with ``eval.baseline`` on the same prompts; the
functions take the two names and never assume which models exist.

Pure (numbers in, numbers out) and unit-tested without models. Key names are documented in
:mod:`rlhf_lab.evaluation.pipeline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_lab import text_metrics
from rlhf_lab.data.rows import Row
from rlhf_lab.evaluation import stats
from rlhf_lab.judge.rubrics import OVERALL
from rlhf_lab.reward_components import REWARD_MODEL, TOTAL, TOTAL_REF, is_reference_based

CONFIDENCE = 0.95
"""Level of every confidence interval in the metrics."""

TOTALS = (TOTAL, TOTAL_REF)
"""``scores`` keys of the rule reward (:func:`add_rule_totals`), named as ``analyze_rewards``
names its totals: ``total`` without the reference-based components (what the references get
too, so the gap to them compares like with like) and ``total_with_reference`` with them (the
reward the policy was trained on)."""

FLAG_PREFIX = "flag/"
"""Prefix of a task flag's per-reply 0/1 value among a model's scores in
``reports/samples.jsonl`` (``flag/rec_hit``); its corpus mean is ``<m>/<flag>_rate``."""


@dataclass
class ModelOutputs:
    """One model's (or the references') replies to the eval rows and their per-row scores.

    Every array is aligned with the rows; NaN marks "not scored" (a reference-based metric on
    a row without reference, a row with no reference for ``ref``, a failed judge rating).
    """

    texts: list[str]
    """Replies (``""`` where a reference is missing)."""
    valid: np.ndarray
    """Rows this output exists for (all for the policies; rows with a reference for ref)."""
    n_tokens: list[int] | None = None
    """Policy tokens per reply, EOS included (None for the references)."""
    eos: list[bool] | None = None
    """Whether the reply ended with EOS (None for the references)."""
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    """Component name (``reward_model``, ``text/bleu``...) -> per-row score."""
    bertscore_f1: np.ndarray | None = None
    """BERTScore F1 against the reference per row (NaN without reference)."""
    judge: dict[str, np.ndarray] | None = None
    """Judge dimension (and ``overall``) -> per-row rating (NaN where the judge failed)."""
    task_flags: dict[str, np.ndarray] = field(default_factory=dict)
    """Task-specific 0/1 outcomes per row, e.g. crs ``rec_hit``, ``rec_any``."""
    task_metrics: dict[str, float] = field(default_factory=dict)
    """Task-specific corpus metrics, e.g. docstring ``doctest/pass_rate``."""


def rule_total(
    scores: Mapping[str, np.ndarray], weights: Mapping[str, float], *, ref_free: bool = False
) -> np.ndarray | None:
    """Per row, the weighted mean of the rule components in ``scores`` with a positive weight
    in ``weights`` (the task's: :func:`rlhf_lab.reward_components.task_weights`), renormalised
    over the components scored on that row (a row without a reference has no BLEU); NaN where
    none is; None when ``scores`` has no weighted component.

    ``ref_free`` leaves out the reference-based components (BLEU). In [0, 1] since every rule
    component is: the docstring task's "total reward".
    """
    ws = {
        n: float(w)
        for n, w in weights.items()
        if w > 0 and n in scores and not (ref_free and is_reference_based(n))
    }
    if not ws:
        return None
    vals = np.stack([np.asarray(scores[n], dtype=np.float64) for n in ws])
    finite = np.isfinite(vals)
    w = np.array(list(ws.values()))[:, None] * finite
    num = (np.where(finite, vals, 0.0) * w).sum(axis=0)
    den = w.sum(axis=0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def add_rule_totals(outputs: Mapping[str, ModelOutputs], weights: Mapping[str, float]) -> None:
    """Put the rule reward :data:`TOTAL` (reference-free) into every output's ``scores``, and
    :data:`TOTAL_REF` into those scored on a weighted reference-based component (not the
    references), in place."""
    ref_based = [n for n, w in weights.items() if w > 0 and is_reference_based(n)]
    for out in outputs.values():
        total = rule_total(out.scores, weights, ref_free=True)
        if total is not None:
            out.scores[TOTAL] = np.where(out.valid, total, np.nan)
        if any(n in out.scores for n in ref_based):
            with_ref = rule_total(out.scores, weights)
            out.scores[TOTAL_REF] = np.where(out.valid, with_ref, np.nan)  # type: ignore[arg-type]


def rule_reward_key(out: ModelOutputs) -> str | None:
    """The rule reward a policy is judged and ranked by: :data:`TOTAL_REF` (what it was trained
    on) where scored, else :data:`TOTAL`; None without rule totals."""
    return next((k for k in (TOTAL_REF, TOTAL) if k in out.scores), None)


def kl_per_token(kl: np.ndarray, n_tokens: Sequence[int]) -> float:
    """Mean KL per sampled token: the replies' summed KL over their summed token counts (a
    long reply weighs by its length, as a per-token penalty does); 0.0 without tokens."""
    total = float(np.sum(n_tokens))
    return float(np.sum(kl)) / total if total > 0 else 0.0


def _nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.isfinite(x)]


def _with_ci(out: dict[str, Any], key: str, values: np.ndarray, n_boot: int, seed: int) -> None:
    """``key`` (mean), ``key_ci_lo`` and ``key_ci_hi`` (percentile bootstrap) into ``out``."""
    vals = _finite(values)
    if vals.size == 0:
        return
    mean, lo, hi = stats.mean_ci(vals, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
    out[key], out[f"{key}_ci_lo"], out[f"{key}_ci_hi"] = mean, lo, hi


def reference_metrics(hyps: Sequence[str], refs: Sequence[str | None]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu; BLEU-1/2/4), mean ROUGE-L F1 and mean METEOR (exact + stem,
    :func:`text_metrics.meteor_scores`) on the rows with a reference.

    ``bleu`` is sacrebleu's standard corpus BLEU (equal to ``bleu4``; the gates read it).
    Empty when no row has a reference.
    """
    pairs = [(h, r) for h, r in zip(hyps, refs, strict=True) if r is not None]
    if not pairs:
        return {}
    h, r = [p[0] for p in pairs], [p[1] for p in pairs]
    out = {f"bleu{n}": text_metrics.bleu_n(h, r, n) for n in (1, 2, 4)}
    out["bleu"] = text_metrics.bleu(h, r)
    out["rougeL"] = text_metrics.rouge_l(h, r)
    out["meteor"] = text_metrics.meteor(h, r)
    return out


def summarise_model(
    out: ModelOutputs,
    refs: Sequence[str | None] | None,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Corpus-level metrics of one model (keys without the ``sft/`` prefix).

    ``refs`` is None for the references themselves: no reference-based metrics then.
    """
    texts = [t for t, ok in zip(out.texts, out.valid, strict=True) if ok]
    m: dict[str, Any] = {}
    # the reward model's score and the rule rewards, each with its bootstrap CI
    for name, key in ((REWARD_MODEL, "rm_score"), *((t, f"reward/{t}") for t in TOTALS)):
        if name in out.scores:
            _with_ci(m, key, out.scores[name], n_boot, seed)
    if refs is not None:
        m.update(reference_metrics(out.texts, refs))
    if out.bertscore_f1 is not None:
        _with_ci(m, "bertscore_f1", out.bertscore_f1, n_boot, seed)
    m["distinct1"] = text_metrics.distinct_n(texts, 1)
    m["distinct2"] = text_metrics.distinct_n(texts, 2)
    m["length"] = text_metrics.mean_length(texts)
    if out.n_tokens is not None:
        m["tokens"] = float(np.mean(out.n_tokens))
    if out.eos is not None:
        m["eos_rate"] = float(np.mean(out.eos))
    for name, values in out.scores.items():
        if name not in (REWARD_MODEL, *TOTALS) and (mean := _nanmean(values)) is not None:
            m[f"reward/{name}"] = mean
    for name, flags in out.task_flags.items():
        if (mean := _nanmean(flags)) is not None:
            m[f"{name}_rate"] = mean
    m.update(out.task_metrics)
    if out.judge is not None:
        for dim, values in out.judge.items():
            if (mean := _nanmean(values)) is not None:
                m[f"judge/{dim}"] = mean
        overall = out.judge.get(OVERALL)
        if overall is not None:
            m["judge_failures"] = int(np.sum(~np.isfinite(overall)))
    return m


def paired_comparison(
    prefix: str, policy: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int
) -> dict[str, float]:
    """Win rate of a policy over the baseline with a 95% paired-bootstrap CI, and p-values.

    Only prompts where both scores are finite take part. Keys: ``win_rate_<prefix>`` (+ CI),
    ``<prefix>_pvalue_wilcoxon`` (Wilcoxon signed-rank, two-sided; the headline test: it
    does not assume normal score differences) and ``<prefix>_pvalue_ttest`` (paired t-test).
    """
    a, b = np.asarray(policy, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return {}
    a, b = a[both], b[both]
    rate, lo, hi = stats.win_rate_ci(a, b, n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
    test = stats.paired_test(a, b)
    return {
        f"win_rate_{prefix}": rate,
        f"win_rate_{prefix}_ci_lo": lo,
        f"win_rate_{prefix}_ci_hi": hi,
        f"{prefix}_pvalue_wilcoxon": test["wilcoxon_p"],
        f"{prefix}_pvalue_ttest": test["ttest_p"],
    }


def compare_with_baseline(
    policy: ModelOutputs,
    baseline: ModelOutputs,
    policy_summary: Mapping[str, Any],
    baseline_summary: Mapping[str, Any],
    kl: np.ndarray,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One policy vs the baseline (keys without the ``delta/<policy>/`` prefix).

    ``<metric>``: policy minus baseline for every corpus metric both have; ``rm_score_ci_lo/hi``
    the paired CI of the mean per-prompt gain; ``win_rate_rm`` (+ CI, p-values) and
    ``win_rate_rm_lc`` (length-controlled, :func:`stats.length_controlled_win_rate` on the
    token lengths); the same on the judge's ``overall``; ``kl`` (+ CI): KL(policy || baseline)
    per reply, ``kl_per_token`` (:func:`kl_per_token`); ``reward/<total>_ci_lo/hi`` and
    ``reward/<total>_pvalue_wilcoxon``: the paired CI and test of the rule-reward gain
    (``<total>``: :func:`rule_reward_key`); the same for each task flag's rate
    (``<flag>_rate_ci_lo/hi``, ``<flag>_rate_pvalue_wilcoxon``) and each of the task's own
    scores (``reward/<task>/<rule>_ci_lo/hi``, ``..._pvalue_wilcoxon``; :func:`task_scores`).
    """
    out: dict[str, Any] = {}
    # CI bounds of the two means do not subtract into a CI of the difference; the paired CIs
    # are below.
    for key, value in policy_summary.items():
        other = baseline_summary.get(key)
        if key.endswith(("_ci_lo", "_ci_hi")) or other is None or key == "judge_failures":
            continue
        out[key] = float(value) - float(other)
    rm_pol, rm_base = policy.scores[REWARD_MODEL], baseline.scores[REWARD_MODEL]
    # CI of the mean *paired* difference: far tighter than the two marginal CIs suggest.
    _, lo, hi = stats.mean_ci(rm_pol - rm_base, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
    out["rm_score_ci_lo"], out["rm_score_ci_hi"] = lo, hi
    out.update(paired_comparison("rm", rm_pol, rm_base, n_boot, seed))
    if policy.n_tokens is not None and baseline.n_tokens is not None:
        both = np.isfinite(rm_pol) & np.isfinite(rm_base)
        if both.any():
            out["win_rate_rm_lc"] = stats.length_controlled_win_rate(
                rm_pol[both],
                rm_base[both],
                np.asarray(policy.n_tokens, dtype=np.float64)[both],
                np.asarray(baseline.n_tokens, dtype=np.float64)[both],
            )
    if baseline.judge is not None and policy.judge is not None and OVERALL in policy.judge:
        out.update(
            paired_comparison("judge", policy.judge[OVERALL], baseline.judge[OVERALL], n_boot, seed)
        )
    _with_ci(out, "kl", kl, n_boot, seed)
    if policy.n_tokens is not None:
        out["kl_per_token"] = kl_per_token(kl, policy.n_tokens)
    key = rule_reward_key(baseline)
    if key is not None and key in policy.scores:
        _paired_gain(out, f"reward/{key}", policy.scores[key], baseline.scores[key], n_boot, seed)
    # The task's per-reply outcomes (crs: gold hit, any movie, invented title; its empathy
    # score), each a paired CI and test like the rule reward's: a rate that moves by a few
    # points on 100 prompts is noise or not only with the pairing.
    for name in sorted(set(policy.task_flags) & set(baseline.task_flags)):
        flags = policy.task_flags[name], baseline.task_flags[name]
        _paired_gain(out, f"{name}_rate", *flags, n_boot, seed)
    for name in task_scores(policy, baseline):
        scores = policy.scores[name], baseline.scores[name]
        _paired_gain(out, f"reward/{name}", *scores, n_boot, seed)
    return out


def task_scores(policy: ModelOutputs, baseline: ModelOutputs) -> list[str]:
    """The task's own per-reply scores both have (``<task>/<rule>``, e.g. ``crs/empathy``):
    not the reward model, the rule totals or the generic ``text/*`` components."""
    shared = set(policy.scores) & set(baseline.scores)
    return sorted(k for k in shared if "/" in k and not k.startswith("text/"))


def _paired_gain(
    out: dict[str, Any], key: str, policy: np.ndarray, baseline: np.ndarray, n_boot: int, seed: int
) -> None:
    """``key_ci_lo``/``key_ci_hi`` (paired bootstrap CI of the mean per-prompt gain) and
    ``key_pvalue_wilcoxon`` into ``out``, on the prompts where both are finite."""
    a, b = np.asarray(policy, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return
    diff = a[both] - b[both]
    _, lo, hi = stats.mean_ci(diff, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
    out[f"{key}_ci_lo"], out[f"{key}_ci_hi"] = lo, hi
    out[f"{key}_pvalue_wilcoxon"] = stats.paired_test(a[both], b[both])["wilcoxon_p"]


def build_metrics(
    outputs: Mapping[str, ModelOutputs],
    refs: Sequence[str | None],
    kl: Mapping[str, np.ndarray],
    *,
    baseline: str,
    policies: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Every metric except the verdicts: per model, references, and each policy's deltas.

    ``kl[policy]`` is the per-prompt KL(policy || baseline) on the policy's samples.
    """
    names = [baseline, *policies]
    per_model = {name: summarise_model(outputs[name], refs, n_boot, seed) for name in names}
    metrics: dict[str, Any] = {
        "eval/num_prompts": len(refs),
        "eval/num_references": sum(r is not None for r in refs),
    }
    for name, m in per_model.items():
        metrics.update({f"{name}/{k}": v for k, v in m.items()})
    if "ref" in outputs and outputs["ref"].valid.any():
        ref_m = summarise_model(outputs["ref"], None, n_boot, seed)
        metrics.update({f"ref/{k}": v for k, v in ref_m.items()})
    for policy in policies:
        delta = compare_with_baseline(
            outputs[policy],
            outputs[baseline],
            per_model[policy],
            per_model[baseline],
            kl[policy],
            n_boot=n_boot,
            seed=seed,
        )
        metrics.update({f"delta/{policy}/{k}": v for k, v in delta.items()})
    return metrics


def component_breakdown(
    outputs: Mapping[str, ModelOutputs], baseline: str, policy: str, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Per reward component: baseline, policy and reference means, policy - baseline (95% CI).

    Rows (keys ``component``, ``baseline``, ``policy``, ``ref``, ``delta``, ``delta_ci_lo``,
    ``delta_ci_hi``, ``pvalue_wilcoxon``, ``n``) are sorted by the size of the change (largest
    gain first); the report shows this table and a bar chart of it, so a reward-model gain
    bought with, say, a length change is visible next to it.
    """
    base, pol, ref = outputs[baseline], outputs[policy], outputs.get("ref")
    rows = []
    for name in base.scores:
        if name in TOTALS:
            continue  # the sum of the rows, not a component
        a, b = pol.scores[name], base.scores[name]
        both = np.isfinite(a) & np.isfinite(b)
        if not both.any():
            continue
        diff = a[both] - b[both]
        _, lo, hi = stats.mean_ci(diff, confidence=CONFIDENCE, n_boot=n_boot, seed=seed)
        p = stats.paired_test(a[both], b[both])["wilcoxon_p"]
        ref_mean = _nanmean(ref.scores[name]) if ref is not None and name in ref.scores else None
        rows.append(
            {
                "component": name,
                "baseline": float(b[both].mean()),
                "policy": float(a[both].mean()),
                "ref": ref_mean,
                "delta": float(diff.mean()),
                "delta_ci_lo": lo,
                "delta_ci_hi": hi,
                "pvalue_wilcoxon": p,
                "n": int(both.sum()),
            }
        )
    return sorted(rows, key=lambda r: -r["delta"])


EXAMPLES_RULE = 3
"""Before/after examples each way when ranked by the rule reward (the Phase-1 protocol's)."""
EXAMPLES_RM = 5
"""Before/after examples each way when ranked by the reward model."""


def ranking_score(out: ModelOutputs) -> str:
    """The score the before/after examples are ranked by: the rule reward
    (:func:`rule_reward_key`) when the run has one (the docstring task's reward), else the
    reward model."""
    return rule_reward_key(out) or REWARD_MODEL


def largest_changes(
    rows: Sequence[Row],
    outputs: Mapping[str, ModelOutputs],
    baseline: str,
    policy: str,
    k: int | None = None,
) -> tuple[list[int], list[int]]:
    """Row indices of a policy's ``k`` largest gains and ``k`` largest losses by
    :func:`ranking_score` (the rule reward where there is one, else the reward model).

    ``k`` defaults to :data:`EXAMPLES_RULE` (the Phase-1 protocol reads three each way) when
    ranking by the rule reward, else :data:`EXAMPLES_RM`.
    """
    key = ranking_score(outputs[baseline])
    if k is None:
        k = EXAMPLES_RM if key == REWARD_MODEL else EXAMPLES_RULE
    diff = outputs[policy].scores[key] - outputs[baseline].scores[key]
    diff = np.where(np.isfinite(diff), diff, 0.0)
    order = np.argsort(-diff, kind="stable")
    gains = [int(i) for i in order if diff[i] > 0][:k]
    losses = [int(i) for i in order[::-1] if diff[i] < 0][:k]
    return gains, losses
