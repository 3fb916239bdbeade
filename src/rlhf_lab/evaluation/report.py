"""evaluate's outputs for people and for DVC: the markdown report, PNG plots, plot data.

Given an :class:`~rlhf_lab.evaluation.evaluate.EvalResult`:

- :func:`write_plot_images` draws ``reward_hist.png`` (reward-model score of SFT, PPO and the
  references), ``component_hists.png`` (one panel per rule component) and
  ``component_delta.png`` (PPO - SFT per component with its paired 95% CI);
- :func:`write_plot_data` writes the same distributions as DVC plot data, so ``dvc plots diff``
  overlays them across experiments: ``dist/<component>.csv`` (``score`` = bin centre; ``sft``,
  ``ppo``, ``ref`` = fraction of replies in the bin, ``ref`` blank where the references are
  not scored), ``components.csv`` (the breakdown) and ``rm_pairs.csv`` (per-prompt reward-model
  score of SFT and PPO, for a scatter plot);
- :func:`render_report` is ``reports/report.md``: verdict, headline table, significance,
  gates, component breakdown, plots, the five largest PPO gains and losses side by side, and
  the run's key params.

Histograms of components that live in [0, 1] use fixed bins on [0, 1] so that two runs'
files line up bin for bin; the reward model's bins span the pooled range of this run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab.evaluation.evaluate import EvalResult
from rlhf_lab.evaluation.metrics import CONFIDENCE
from rlhf_lab.evaluation.plotting import BINS, WHO, num, pyplot, slug, write_csv
from rlhf_lab.evaluation.scoring import reference_of
from rlhf_lab.judge.rubrics import OVERALL
from rlhf_lab.reward_components import REWARD_MODEL

LABELS = {"sft": "SFT", "ppo": "PPO", "ref": "references"}
COLOURS = {"sft": "#1f77b4", "ppo": "#d62728", "ref": "#7f7f7f"}
# Different dashes too: SFT and PPO histograms often coincide and would hide each other.
LINESTYLES = {"sft": "--", "ppo": "-", "ref": ":"}
REWARD_HIST = "reward_hist.png"
COMPONENT_HISTS = "component_hists.png"
COMPONENT_DELTA = "component_delta.png"
MAX_CELL_CHARS = 400
"""Replies and prompts longer than this are cut in the report's tables (samples.jsonl has
them in full)."""


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def distributions(result: EvalResult) -> dict[str, dict[str, np.ndarray]]:
    """``component -> who -> finite per-row scores`` for sft, ppo and (when scored) ref."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in result.outputs["sft"].scores:
        per: dict[str, np.ndarray] = {}
        for who in WHO:
            o = result.outputs.get(who)
            if o is not None and name in o.scores:
                vals = o.scores[name][np.isfinite(o.scores[name])]
                if vals.size:
                    per[who] = vals
        out[name] = per
    return out


def histogram(
    values: Mapping[str, np.ndarray], bins: int = BINS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shared bin edges and the fraction of each series' values per bin.

    Values all inside [0, 1] get fixed edges on [0, 1] (comparable across runs); otherwise
    the edges span the pooled range (widened when every value is equal).
    """
    pooled = np.concatenate([v for v in values.values() if v.size]) if values else np.zeros(0)
    if pooled.size == 0 or (pooled.min() >= 0.0 and pooled.max() <= 1.0):
        edges = np.linspace(0.0, 1.0, bins + 1)
    else:
        lo, hi = float(pooled.min()), float(pooled.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    fractions = {who: np.histogram(v, bins=edges)[0] / max(1, v.size) for who, v in values.items()}
    return edges, fractions


# --------------------------------------------------------------------------------------------
# DVC plot data
# --------------------------------------------------------------------------------------------


def write_plot_data(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """``dist/<component>.csv``, ``components.csv`` and ``rm_pairs.csv`` under ``out_dir``."""
    out_dir = Path(out_dir)
    written = []
    for name, per in distributions(result).items():
        edges, frac = histogram(per)
        centres = (edges[:-1] + edges[1:]) / 2
        rows = [
            [round(float(c), 6), *(num(frac[w][i]) if w in frac else math.nan for w in WHO)]
            for i, c in enumerate(centres)
        ]
        written.append(write_csv(out_dir / "dist" / f"{slug(name)}.csv", ["score", *WHO], rows))
    comp_rows = [
        [
            r["component"],
            num(r["sft"]),
            num(r["ppo"]),
            num(r["ref"]),
            num(r["delta"]),
            num(r["delta_ci_lo"]),
            num(r["delta_ci_hi"]),
        ]
        for r in result.breakdown
    ]
    written.append(
        write_csv(
            out_dir / "components.csv",
            ["component", "sft", "ppo", "ref", "delta", "delta_ci_lo", "delta_ci_hi"],
            comp_rows,
        )
    )
    sft_rm = result.outputs["sft"].scores[REWARD_MODEL]
    ppo_rm = result.outputs["ppo"].scores[REWARD_MODEL]
    pairs = [
        [row.get("id", i), num(a), num(b)]
        for i, (row, a, b) in enumerate(zip(result.rows, sft_rm, ppo_rm, strict=True))
    ]
    written.append(write_csv(out_dir / "rm_pairs.csv", ["id", "sft", "ppo"], pairs))
    return written


# --------------------------------------------------------------------------------------------
# PNG plots
# --------------------------------------------------------------------------------------------


def _hist_axes(ax: Any, name: str, per: Mapping[str, np.ndarray]) -> None:
    edges, _ = histogram(per)
    for who in WHO:
        if who in per:
            ax.hist(
                per[who],
                bins=edges,
                weights=np.full(per[who].size, 1.0 / per[who].size),
                histtype="step",
                linewidth=1.6,
                color=COLOURS[who],
                linestyle=LINESTYLES[who],
                label=f"{LABELS[who]} (mean {per[who].mean():.3g})",
            )
    ax.set_title(name, fontsize=10)
    ax.set_ylabel("fraction of replies")
    ax.legend(fontsize=7)


def write_plot_images(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """``reward_hist.png``, ``component_hists.png`` and ``component_delta.png``."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dists = distributions(result)

    fig, ax = plt.subplots(figsize=(6, 4))
    _hist_axes(ax, "reward model score (normalised)", dists[REWARD_MODEL])
    ax.set_xlabel("score")
    fig.tight_layout()
    fig.savefig(out_dir / REWARD_HIST, dpi=110)
    plt.close(fig)

    names = [n for n in dists if n != REWARD_MODEL]
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _hist_axes(ax, name, dists[name])
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / COMPONENT_HISTS, dpi=100)
    plt.close(fig)

    rows_b = result.breakdown[::-1]  # largest gain at the top of a horizontal bar chart
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows_b) + 1.4))
    deltas = np.array([r["delta"] for r in rows_b])
    lo = [r["delta"] - r["delta_ci_lo"] for r in rows_b]
    hi = [r["delta_ci_hi"] - r["delta"] for r in rows_b]
    err = np.clip(np.array([lo, hi]), 0.0, None)  # matplotlib rejects negative error bars
    colours = ["#2ca02c" if d > 0 else "#d62728" if d < 0 else "#7f7f7f" for d in deltas]
    ax.barh([r["component"] for r in rows_b], deltas, xerr=err, color=colours, capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"PPO - SFT mean score ({CONFIDENCE:.0%} paired bootstrap CI)")
    ax.set_title("Where PPO gained or lost, per reward component")
    fig.tight_layout()
    fig.savefig(out_dir / COMPONENT_DELTA, dpi=110)
    plt.close(fig)
    return [out_dir / REWARD_HIST, out_dir / COMPONENT_HISTS, out_dir / COMPONENT_DELTA]


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def _row_scores(result: EvalResult, who: str, i: int) -> dict[str, float | None]:
    out = result.outputs[who]
    scores: dict[str, float | None] = {}
    tables = dict(out.scores)
    if out.bertscore_f1 is not None:
        tables["bertscore_f1"] = out.bertscore_f1
    if out.judge is not None:
        tables.update({f"judge/{d}": v for d, v in out.judge.items()})
    for name, values in tables.items():
        v = float(values[i])
        if math.isfinite(v):
            scores[name] = round(v, 6)
    return scores


def sample_rows(result: EvalResult) -> list[dict[str, Any]]:
    """``reports/samples.jsonl`` rows: prompt, reference, both replies and all their scores."""
    out = []
    sft, ppo = result.outputs["sft"], result.outputs["ppo"]
    for i, row in enumerate(result.rows):
        item: dict[str, Any] = {
            "id": row.get("id"),
            "prompt": row["prompt"],
            "reference": reference_of(row),
            "sft_reply": sft.texts[i],
            "ppo_reply": ppo.texts[i],
            "sft_eos": bool(sft.eos[i]) if sft.eos is not None else None,
            "ppo_eos": bool(ppo.eos[i]) if ppo.eos is not None else None,
            "sft_scores": _row_scores(result, "sft", i),
            "ppo_scores": _row_scores(result, "ppo", i),
            "reference_scores": _row_scores(result, "ref", i) if "ref" in result.outputs else {},
            "kl_ppo_sft": round(float(result.kl[i]), 6),
        }
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and abs(x) < 10 ** (-digits):
            return f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def _signed(x: Any, digits: int = 3) -> str:
    s = _fmt(x, digits)
    return f"+{s}" if isinstance(x, float) and math.isfinite(x) and x > 0 else s


def _pvalue(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(m: Mapping[str, Any], key: str, signed: bool = False) -> str:
    """``mean [lo, hi]`` for a metric with ``_ci_lo`` / ``_ci_hi`` siblings."""
    if key not in m:
        return "–"
    f = _signed if signed else _fmt
    lo, hi = m.get(f"{key}_ci_lo"), m.get(f"{key}_ci_hi")
    if lo is None or hi is None:
        return f(m[key])
    return f"{f(m[key])} [{_fmt(lo)}, {_fmt(hi)}]"


def cell(text: Any, limit: int = MAX_CELL_CHARS) -> str:
    """Text made safe for one markdown table cell: pipes escaped, newlines as <br>, cut."""
    s = str(text) if text is not None else "–"
    # Control characters (a badly trained policy emits them) would garble the markdown.
    s = "".join(ch for ch in s if ch == "\n" or ch.isprintable())
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "")
    s = s.replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("\n", "<br>") or "*(empty)*"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


HEADLINE: tuple[tuple[str, str, bool], ...] = (
    # (metric key without model prefix, label, has a bootstrap CI)
    ("rm_score", "reward model score (normalised), mean [95% CI]", True),
    (f"judge/{OVERALL}", "judge overall (1–5)", False),
    ("bleu", "corpus BLEU (sacrebleu)", False),
    ("bleu1", "BLEU-1", False),
    ("bleu2", "BLEU-2", False),
    ("bleu4", "BLEU-4", False),
    ("rougeL", "ROUGE-L F1", False),
    ("bertscore_f1", "BERTScore F1 [95% CI]", True),
    ("distinct1", "distinct-1", False),
    ("distinct2", "distinct-2", False),
    ("length", "mean length (words)", False),
    ("tokens", "mean length (tokens, EOS included)", False),
    ("eos_rate", "EOS rate (reply finished)", False),
    ("rec_hit_rate", "recommendation hit rate (gold movie named)", False),
    ("rec_rate", "recommendation rate (any known movie named)", False),
)


def _headline(m: Mapping[str, Any]) -> list[str]:
    rows = []
    for key, label, has_ci in HEADLINE:
        if f"sft/{key}" not in m and f"ppo/{key}" not in m:
            continue
        if has_ci:
            vals = [_ci(m, f"{w}/{key}") for w in ("sft", "ppo")]
            delta = _ci(m, f"delta/{key}", signed=True)
            ref = _ci(m, f"ref/{key}")
        else:
            vals = [_fmt(m.get(f"{w}/{key}")) for w in ("sft", "ppo")]
            delta = _signed(m.get(f"delta/{key}"))
            ref = _fmt(m.get(f"ref/{key}"))
        rows.append([label, *vals, delta, ref])
    judge_dims = sorted(
        k.removeprefix("sft/judge/")
        for k in m
        if k.startswith("sft/judge/") and not k.endswith(f"/{OVERALL}")
    )
    for dim in judge_dims:
        key = f"judge/{dim}"
        rows.append(
            [
                f"judge {dim} (1–5)",
                _fmt(m.get(f"sft/{key}")),
                _fmt(m.get(f"ppo/{key}")),
                _signed(m.get(f"delta/{key}")),
                "–",
            ]
        )
    rows.append(
        ["win rate PPO vs SFT, reward model [95% CI]", "", "", _ci(m, "delta/win_rate_rm"), ""]
    )
    if "delta/win_rate_judge" in m:
        label = "win rate PPO vs SFT, judge overall [95% CI]"
        rows.append([label, "", "", _ci(m, "delta/win_rate_judge"), ""])
    label = "KL(PPO ‖ SFT), nats per reply [95% CI]"
    rows.append([label, "", "", _ci(m, "delta/kl_ppo_sft"), ""])
    return _table(["metric", "SFT", "PPO", "PPO − SFT", "references"], rows)


def _significance(m: Mapping[str, Any], n_boot: int) -> list[str]:
    lines = []
    for prefix, label in (("rm", "reward model"), ("judge", "judge (overall rating)")):
        if f"delta/win_rate_{prefix}" not in m:
            continue
        p = m.get(f"delta/{prefix}_pvalue_wilcoxon")
        verdict = (
            "significant at the 0.05 level"
            if p is not None and p < 0.05
            else "not significant at the 0.05 level"
        )
        lines.append(
            f"- **{label}**: PPO wins {_fmt(m[f'delta/win_rate_{prefix}'])} of prompts "
            f"(ties count half; {CONFIDENCE:.0%} paired bootstrap CI "
            f"[{_fmt(m.get(f'delta/win_rate_{prefix}_ci_lo'))}, "
            f"{_fmt(m.get(f'delta/win_rate_{prefix}_ci_hi'))}], {n_boot} resamples). "
            f"Wilcoxon signed-rank test, two-sided: p = {_pvalue(p)} ({verdict}); "
            f"paired t-test: p = {_pvalue(m.get(f'delta/{prefix}_pvalue_ttest'))}."
        )
    if "delta/rm_score_ci_lo" in m:
        lines.append(
            f"- Mean reward-model gain: {_ci(m, 'delta/rm_score', signed=True)} "
            f"({CONFIDENCE:.0%} paired bootstrap CI of the mean per-prompt difference)."
        )
    lines.append(
        "- The Wilcoxon test is the headline test: it pairs each prompt's two replies and does "
        "not assume the score differences are normal; prompts where both scores are equal are "
        "dropped before ranking."
    )
    return lines


def _gates(result: EvalResult) -> list[str]:
    rows = [
        [
            f"`{g.name}`",
            g.kind,
            _fmt(g.value) if g.value is not None else "n/a",
            _fmt(g.threshold),
            cell(g.rule),
            "pass" if g.passed else "**FAIL**",
        ]
        for g in result.verdict.gates
    ]
    return _table(["gate", "kind", "value", "threshold", "pass condition", "result"], rows)


def _breakdown(result: EvalResult) -> list[str]:
    rows = [
        [
            f"`{r['component']}`",
            _fmt(r["sft"]),
            _fmt(r["ppo"]),
            _fmt(r["ref"]),
            f"{_signed(r['delta'])} [{_fmt(r['delta_ci_lo'])}, {_fmt(r['delta_ci_hi'])}]",
            _pvalue(r["pvalue_wilcoxon"]),
        ]
        for r in result.breakdown
    ]
    return _table(
        ["component", "SFT", "PPO", "references", "PPO − SFT [95% CI]", "Wilcoxon p"], rows
    )


def _last_user_turn(prompt: Sequence[Mapping[str, str]]) -> str:
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message.get("content", "")
    return prompt[-1].get("content", "") if prompt else ""


def _examples(result: EvalResult, indices: Sequence[int], title: str) -> list[str]:
    lines = [f"## {title}", ""]
    if not indices:
        return [*lines, "None.", ""]
    sft_rm = result.outputs["sft"].scores[REWARD_MODEL]
    ppo_rm = result.outputs["ppo"].scores[REWARD_MODEL]
    rows = []
    for rank, i in enumerate(indices, 1):
        row = result.rows[i]
        ref = reference_of(row)
        prompt = cell(_last_user_turn(row["prompt"]))
        if ref is not None:
            prompt += f"<br><br>*reference:* {cell(ref)}"
        rows.append(
            [
                f"{rank}. `{cell(row.get('id', i), 60)}`",
                prompt,
                f"{cell(result.outputs['sft'].texts[i])}<br>*rm {_fmt(float(sft_rm[i]))}*",
                f"{cell(result.outputs['ppo'].texts[i])}<br>*rm {_fmt(float(ppo_rm[i]))}*",
                _signed(float(ppo_rm[i] - sft_rm[i])),
            ]
        )
    lines += _table(["#", "prompt (last user turn)", "SFT reply", "PPO reply", "Δ rm"], rows)
    return [*lines, ""]


def render_report(
    result: EvalResult,
    *,
    plots_rel: str,
    run_params: Mapping[str, Any],
    n_boot: int,
) -> str:
    """The markdown report. ``plots_rel``: the plots folder relative to the report."""
    m = result.metrics
    v = result.verdict
    param_rows = [[f"`{k}`", cell(_fmt(x), 120)] for k, x in run_params.items()]
    failed = ", ".join(f"`{name}`" for name in v.failed)
    lines = [
        "# Evaluation: PPO vs SFT",
        "",
        f"**Verdict: {v.decision.upper()}**"
        + (
            f" — failing gate{'s' if len(v.failed) > 1 else ''}: {failed}."
            if failed
            else " — every gate passes."
        ),
        "",
        "Rule: *proceed* when every gate passes; *adjust* when the hard gates (`reward_gain`, "
        "`significance`, `kl`, `bertscore`) pass and exactly one soft gate (`bleu_drop`, "
        "`distinct2_drop`, `eos_rate_drop`) fails; *reconsider* when a hard gate fails or "
        "more than one soft gate fails.",
        "",
        f"Task `{result.task}`: {m.get('eval/num_prompts')} test prompts "
        f"({m.get('eval/num_references')} with a reference). Both models sampled with the same "
        "settings and seed; PPO − SFT is PPO minus SFT.",
        "",
        "## Headline",
        "",
        *_headline(m),
        "",
        "## Significance",
        "",
        *_significance(m, n_boot),
        "",
        "## Gates",
        "",
        *_gates(result),
        "",
        "## Reward components",
        "",
        "Mean per-reply score of each reward component (the reward model is normalised to the "
        "training prompts' mean 0, std 1; the rule components are in [0, 1]). Components that "
        "compare with the reference (BLEU) are not scored for the references themselves.",
        "",
        *_breakdown(result),
        "",
        f"![reward-model score distribution]({plots_rel}/{REWARD_HIST})",
        "",
        f"![rule-component distributions]({plots_rel}/{COMPONENT_HISTS})",
        "",
        f"![PPO - SFT per component]({plots_rel}/{COMPONENT_DELTA})",
        "",
        *_examples(result, result.gains, "Five largest PPO gains (reward model)"),
        *_examples(result, result.losses, "Five largest PPO losses (reward model)"),
        "## Run parameters",
        "",
        *_table(["param", "value"], param_rows),
        "",
    ]
    return "\n".join(lines)


def flatten_params(sections: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested param sections as ``{"ppo.lora.r": 16, ...}`` for the report's params table."""
    out: dict[str, Any] = {}
    for key, value in sections.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = value
    return out
