"""analyze_rewards' outputs: the plot data, the PNGs and the markdown summary of a check.

:mod:`rlhf_lab.evaluation.reward_check` runs the check (a :class:`RewardCheck`, and optionally
the :class:`SamplesBreakdown` of evaluate's samples); this module only draws and writes them, as
:mod:`rlhf_lab.evaluation.figures` does for evaluate. Every column lives in [0, 1], so the
histograms use fixed bins (:data:`rlhf_lab.evaluation.plotting.BINS`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab.evaluation.plotting import BINS, num, pyplot, slug, write_csv
from rlhf_lab.evaluation.reward_check import (
    MIN_GAP,
    REFERENCE,
    RewardCheck,
    SamplesBreakdown,
    pair_accuracy,
)
from rlhf_lab.reward_components import TOTAL, TOTAL_REF


def _edges() -> np.ndarray:
    # Every column lives in [0, 1]: fixed bins make two runs' files line up bin for bin.
    return np.linspace(0.0, 1.0, BINS + 1)


def _fractions(values: np.ndarray) -> np.ndarray:
    values = values[np.isfinite(values)]
    return np.histogram(values, bins=_edges())[0] / max(1, values.size)


def _json_num(x: float) -> float | str:
    # JSON has no NaN: an unscored column is "" (as it always was in scores.jsonl).
    return num(x) if math.isfinite(x) else ""


def write_plot_data(
    check: RewardCheck, out_dir: str | Path, samples: SamplesBreakdown | None = None
) -> None:
    """DVC plot data: ``dist/<column>.csv`` (score bin centre; fraction of good and bad
    replies per bin), ``components.csv``, ``kinds.csv``, ``samples.csv`` (with samples) and
    ``scores.jsonl`` (every scored reply)."""
    out = Path(out_dir)
    centres = (_edges()[:-1] + _edges()[1:]) / 2
    g, b = check.pairs()
    m = check.metrics
    for col in check.columns():
        fg, fb = _fractions(check.scores[col][g]), _fractions(check.scores[col][b])
        rows = [
            [round(float(c), 6), num(x), num(y)] for c, x, y in zip(centres, fg, fb, strict=True)
        ]
        write_csv(out / "dist" / f"{slug(col)}.csv", ["score", "good", "bad"], rows)
    write_csv(
        out / "components.csv",
        ["component", "weight", "good", "bad", "gap"],
        [
            [
                col,
                num(check.weights.get(col, check.weights_ref.get(col, 0.0)))
                if col not in (TOTAL, TOTAL_REF)
                else "",
                num(m[f"analyze/good/{col}"]),
                num(m[f"analyze/bad/{col}"]),
                num(m[f"analyze/gap/{col}"]),
            ]
            for col in check.columns()
        ],
    )
    kind_rows = []
    for kind in check.bad_kinds():
        gk, bk = check.pairs(kind)
        good, bad = check.scores[TOTAL][gk], check.scores[TOTAL][bk]
        kind_rows.append(
            [
                kind,
                int(bk.size),
                num(float(good.mean())),
                num(float(bad.mean())),
                num(float((good - bad).mean())),
                num(pair_accuracy(good, bad)),
            ]
        )
    write_csv(out / "kinds.csv", ["kind", "pairs", "good", "bad", "gap", "accuracy"], kind_rows)
    if samples is not None:
        means = samples.means()
        write_csv(
            out / "samples.csv",
            ["component", *samples.who],
            [[col, *(num(means[w][col]) for w in samples.who)] for col in samples.columns],
        )
    with (out / "scores.jsonl").open("w", encoding="utf-8") as fh:
        for i, (kind, text) in enumerate(zip(check.kinds, check.texts, strict=True)):
            row = check.rows[int(check.row_of[i])]
            item = {
                "id": row.get("id"),
                "kind": kind,
                "text": text,
                "scores": {c: _json_num(float(check.scores[c][i])) for c in check.columns()},
            }
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")


def _hist_grid(plt: Any, series: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> None:
    """One panel per column, one step histogram per series, fixed bins on [0, 1]."""
    colours = {"good": "#2ca02c", "bad": "#d62728", "sft": "#1f77b4", "ppo": "#d62728"}
    colours |= {"dpo": "#ff7f0e", REFERENCE: "#7f7f7f"}
    cols = list(series)
    ncols = 3
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, cols, strict=False):
        for label, values in series[col].items():
            v = values[np.isfinite(values)]
            if not v.size:
                continue
            ax.hist(
                v,
                bins=_edges(),
                weights=np.full(v.size, 1.0 / v.size),
                histtype="step",
                linewidth=1.6,
                color=colours.get(label),
                label=f"{label} (mean {v.mean():.3g})",
            )
        ax.set_title(col, fontsize=10)
        ax.set_xlabel("score")
        ax.set_ylabel("fraction of replies")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plot_images(
    check: RewardCheck, out_dir: str | Path, samples: SamplesBreakdown | None = None
) -> list[Path]:
    """``hists.png`` (good vs bad per column), ``gaps.png`` (gap per component and per bad
    kind) and, with samples, ``samples_hists.png`` (SFT, PPO, references per column)."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g, b = check.pairs()
    order = [TOTAL, *(c for c in check.columns() if c != TOTAL)]
    _hist_grid(
        plt,
        {c: {"good": check.scores[c][g], "bad": check.scores[c][b]} for c in order},
        out / "hists.png",
    )
    written = [out / "hists.png"]

    m = check.metrics
    kinds = check.bad_kinds()
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(12, 0.45 * max(len(order), len(kinds)) + 1.6), squeeze=True
    )
    gaps = [m[f"analyze/gap/{c}"] for c in order]
    ax1.barh(order[::-1], gaps[::-1], color="#1f77b4")
    ax1.set_title("gap (good - bad) per component")
    kgaps = [m[f"analyze/gap_by_kind/{k}"] for k in kinds]
    ax2.barh(kinds[::-1], kgaps[::-1], color="#ff7f0e")
    ax2.set_title("total gap per kind of bad reply")
    for ax in (ax1, ax2):
        ax.set_xlabel(f"mean gap over pairs (dashed: {MIN_GAP}, required of the total)")
        ax.axvline(MIN_GAP, color="black", linestyle="--", linewidth=0.8)
        ax.axvline(0.0, color="black", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(out / "gaps.png", dpi=100)
    plt.close(fig)
    written.append(out / "gaps.png")

    if samples is not None:
        _hist_grid(
            plt,
            {c: {w: samples.scores[w][c] for w in samples.who} for c in order},
            out / "samples_hists.png",
        )
        written.append(out / "samples_hists.png")
    return written


def _f(x: Any) -> str:
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.3f}"
    return str(x)


def _cell(text: str, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return s.replace("|", "\\|").replace("<", "&lt;") or "*(empty)*"


def render_summary(
    check: RewardCheck,
    source: str,
    samples: SamplesBreakdown | None = None,
    samples_path: str | None = None,
    examples: int = 3,
) -> str:
    """The markdown summary: verdict, per-component and per-kind tables, plots, examples."""
    m = check.metrics
    gap = m[f"analyze/gap/{TOTAL}"]
    verdict = "PASS" if m["analyze/pass"] else "FAIL"
    weights = ", ".join(f"{n} {w:.3g}" for n, w in check.weights.items())
    lines = [
        f"# Reward discrimination check: {check.task}",
        "",
        f"Input `{source}`: {m['analyze/rows']} rows, {m['analyze/pairs']} (good, bad) pairs. "
        "Good = the human reference; bad = variants made from it on purpose.",
        "",
        f"**{verdict}**: total gap {gap:.3f} (must exceed {MIN_GAP}); the good reply scores "
        f"higher in {m['analyze/pair_accuracy']:.1%} of pairs (ties count half).",
        "",
        f"Total = weighted mean of the reference-free components ({check.weights_source}, "
        f"normalised): {weights}."
        + (
            " Reference-based components (BLEU) score the good reply 1 by construction, so "
            "they are only in `total_with_reference`."
            if TOTAL_REF in check.columns()
            else ""
        ),
        "",
        "| component | good | bad | gap |",
        "|---|---|---|---|",
    ]
    for col in check.columns():
        lines.append(
            f"| {col} | {_f(m[f'analyze/good/{col}'])} | {_f(m[f'analyze/bad/{col}'])} "
            f"| {_f(m[f'analyze/gap/{col}'])} |"
        )
    lines += ["", "| bad kind | pairs | total gap |", "|---|---|---|"]
    for kind in check.bad_kinds():
        lines.append(
            f"| {kind} | {m[f'analyze/pairs_by_kind/{kind}']} "
            f"| {_f(m[f'analyze/gap_by_kind/{kind}'])} |"
        )
    if "analyze/parse_ok_fraction" in m:
        lines += [
            "",
            f"{m['analyze/parse_ok_fraction']:.1%} of the functions parse (the rest, e.g. "
            "Python 2, score 0 on the code-based components whatever the docstring).",
        ]
    lines += ["", "![good vs bad](hists.png)", "", "![gaps](gaps.png)"]
    if samples is not None:
        means = samples.means()
        lines += [
            "",
            f"## Model outputs (`{samples_path}`, {samples.matched} samples)",
            "",
            "| component | "
            + " | ".join("references" if w == REFERENCE else w.upper() for w in samples.who)
            + " |",
            "|---|" + "---|" * len(samples.who),
        ]
        for col in samples.columns:
            lines.append(f"| {col} | " + " | ".join(_f(means[w][col]) for w in samples.who) + " |")
        lines += ["", "![samples](samples_hists.png)"]
    lines += ["", "## Examples", ""]
    for r in range(min(examples, len(check.rows))):
        lines += ["| kind | reply | total |", "|---|---|---|"]
        for i in np.flatnonzero(check.row_of == r):
            lines.append(
                f"| {check.kinds[i]} | {_cell(check.texts[i])} "
                f"| {_f(float(check.scores[TOTAL][i]))} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
