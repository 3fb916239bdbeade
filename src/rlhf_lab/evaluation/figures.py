"""evaluate's figures: PNG plots and DVC plot data of every model's score distributions.

Given an :class:`~rlhf_lab.evaluation.pipeline.EvalResult` (the baseline, every policy of
``eval.policies`` and the references; one colour and one line style per model):

- :func:`write_plot_images` draws ``reward_hist.png`` (the ECDF of the reward-model score of
  every model and the references), ``component_hists.png`` (one ECDF panel per rule
  component; the names stay from when they were histograms) and
  ``component_delta.png`` (policy - baseline per component with its paired 95% CI, one bar
  colour per policy);
- :func:`write_plot_data` writes the same distributions as DVC plot data, so ``dvc plots diff``
  overlays them across experiments: ``dist/<component>.csv`` (``score`` = bin centre; one
  column per model and ``ref`` = fraction of replies in the bin, ``ref`` blank where the
  references are not scored), ``components/<policy>.csv`` (the breakdown of one policy) and
  ``rm_pairs.csv`` (per-prompt reward-model score of every model, for a scatter plot).

Histograms of components that live in [0, 1] use fixed bins on [0, 1] so that two runs'
files line up bin for bin; the reward model's bins span the pooled range of this run. The
markdown report that embeds the PNGs is :mod:`rlhf_lab.evaluation.report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_lab.evaluation.metrics import (
    CONFIDENCE,
)
from rlhf_lab.evaluation.pipeline import EvalResult
from rlhf_lab.evaluation.plotting import BINS, ecdf, grid_shape, num, pyplot, slug, write_csv
from rlhf_lab.reward_components import REWARD_MODEL

REF = "ref"
"""The human references' key in ``EvalResult.outputs`` and their column in the plot data."""
BASELINE_COLOUR, REF_COLOUR = "#1f77b4", "#7f7f7f"
POLICY_COLOURS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
"""One per policy, in ``eval.policies`` order (cycled past six)."""


def label(who: str) -> str:
    """Display name: ``ppo`` -> ``PPO``, ``ref`` -> ``references``."""
    return "references" if who == REF else who.upper()


def colour(result: EvalResult, who: str) -> str:
    if who == REF:
        return REF_COLOUR
    if who == result.baseline:
        return BASELINE_COLOUR
    return POLICY_COLOURS[result.policies.index(who) % len(POLICY_COLOURS)]


def linestyle(result: EvalResult, who: str) -> str:
    # Different dashes too: histograms often coincide and would hide each other.
    return ":" if who == REF else "--" if who == result.baseline else "-"


REWARD_HIST = "reward_hist.png"
COMPONENT_HISTS = "component_hists.png"
COMPONENT_DELTA = "component_delta.png"


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def _series(result: EvalResult) -> list[str]:
    """Every reply set, in plot order: the baseline, the policies, the references."""
    return [*result.models, REF]


def distributions(result: EvalResult) -> dict[str, dict[str, np.ndarray]]:
    """``component -> who -> finite per-row scores`` for every model and (when scored) ref."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in result.outputs[result.baseline].scores:
        per: dict[str, np.ndarray] = {}
        for who in _series(result):
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


COMPONENT_HEADER = ("delta", "delta_ci_lo", "delta_ci_hi")


def write_plot_data(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """``dist/<component>.csv``, ``components/<policy>.csv`` and ``rm_pairs.csv``."""
    out_dir = Path(out_dir)
    written = []
    who_all = _series(result)
    for name, per in distributions(result).items():
        edges, frac = histogram(per)
        centres = (edges[:-1] + edges[1:]) / 2
        rows = [
            [round(float(c), 6), *(num(frac[w][i]) if w in frac else math.nan for w in who_all)]
            for i, c in enumerate(centres)
        ]
        path = out_dir / "dist" / f"{slug(name)}.csv"
        written.append(write_csv(path, ["score", *who_all], rows))
    for policy, breakdown in result.breakdown.items():
        comp_rows = [
            [
                r["component"],
                num(r["baseline"]),
                num(r["policy"]),
                num(r["ref"]),
                *(num(r[k]) for k in COMPONENT_HEADER),
            ]
            for r in breakdown
        ]
        header = ["component", result.baseline, policy, REF, *COMPONENT_HEADER]
        written.append(write_csv(out_dir / "components" / f"{policy}.csv", header, comp_rows))
    rm = [result.outputs[m].scores[REWARD_MODEL] for m in result.models]
    pairs = [
        [row.get("id", i), *(num(scores[i]) for scores in rm)] for i, row in enumerate(result.rows)
    ]
    written.append(write_csv(out_dir / "rm_pairs.csv", ["id", *result.models], pairs))
    return written


# --------------------------------------------------------------------------------------------
# PNG plots
# --------------------------------------------------------------------------------------------


RM_AXIS = "reward-model score (z-score: 0 = the mean, 1 = one std over the training prompts)"
"""What the reward model's number is: ``models/reward`` normalises raw scores with the mean
and std it saw on the training prompts (``reward_stats.json``), as PPO does."""


def _axis_label(name: str, per: Mapping[str, np.ndarray]) -> str:
    if name == REWARD_MODEL:
        return RM_AXIS
    if all(v.min() >= 0.0 and v.max() <= 1.0 for v in per.values() if v.size):
        return f"{name} score (0 = worst, 1 = best)"
    return f"{name} score"


def _ecdf_axes(
    ax: Any, result: EvalResult, name: str, per: Mapping[str, np.ndarray], title: str = ""
) -> None:
    """One ECDF step line per reply set: at x, the fraction of replies scoring <= x, so a
    curve further right scores higher; the legend holds each set's size and mean."""
    for who in _series(result):
        if who not in per:
            continue
        x, y = ecdf(per[who])
        ax.step(
            np.r_[x[0], x],
            np.r_[0.0, y],
            where="post",
            linewidth=1.6,
            color=colour(result, who),
            linestyle=linestyle(result, who),
            label=f"{label(who)} (n={x.size}, mean {x.mean():.3g})",
        )
    ax.set_title(title or name, fontsize=10)
    ax.set_xlabel(_axis_label(name, per), fontsize=8)
    ax.set_ylabel("fraction of replies scoring <= x", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _delta_bars(ax: Any, result: EvalResult) -> None:
    """Grouped horizontal bars: per component, one bar per policy (policy - baseline, CI)."""
    # Components in the first policy's order (largest gain at the top of the chart).
    first = result.breakdown[result.policies[0]]
    names = [r["component"] for r in first][::-1]
    height = 0.8 / len(result.policies)
    for k, policy in enumerate(result.policies):
        by_name = {r["component"]: r for r in result.breakdown[policy]}
        ys, deltas, lo, hi = [], [], [], []
        for j, name in enumerate(names):
            if (r := by_name.get(name)) is None:
                continue
            ys.append(j + (k - (len(result.policies) - 1) / 2) * height)
            deltas.append(r["delta"])
            lo.append(r["delta"] - r["delta_ci_lo"])
            hi.append(r["delta_ci_hi"] - r["delta"])
        err = np.clip(np.array([lo, hi]), 0.0, None)  # matplotlib rejects negative error bars
        ax.barh(
            ys,
            deltas,
            height=height,
            xerr=err,
            color=colour(result, policy),
            capsize=3,
            label=label(policy),
        )
    ax.set_yticks(range(len(names)), names)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(
        f"policy - {label(result.baseline)} mean score ({CONFIDENCE:.0%} paired bootstrap CI)"
    )
    ax.set_title("Where each policy gained or lost, per reward component")
    ax.legend(fontsize=8)


def write_plot_images(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """``reward_hist.png``, ``component_hists.png`` and ``component_delta.png``."""
    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dists = distributions(result)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    title = "Reward-model score per reply (ECDF; further right = higher)"
    _ecdf_axes(ax, result, REWARD_MODEL, dists[REWARD_MODEL], title)
    fig.tight_layout()
    fig.savefig(out_dir / REWARD_HIST, dpi=110)
    plt.close(fig)

    names = [n for n in dists if n != REWARD_MODEL and dists[n]]
    rows, cols = grid_shape(max(1, len(names)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _ecdf_axes(ax, result, name, dists[name])
    if not names:
        axes[0, 0].text(0.5, 0.5, "no rule component scored", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax in list(axes.flat)[max(1, len(names)) :]:
        fig.delaxes(ax)  # a spare cell of the grid: no empty frame
    fig.suptitle(
        "Rule components per reply (ECDF; further right = higher; the references are not "
        "scored on components that need one)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out_dir / COMPONENT_HISTS, dpi=100)
    plt.close(fig)

    n_rows = len(result.breakdown[result.policies[0]])
    fig, ax = plt.subplots(figsize=(7, (0.3 + 0.2 * len(result.policies)) * n_rows + 1.4))
    _delta_bars(ax, result)
    fig.tight_layout()
    fig.savefig(out_dir / COMPONENT_DELTA, dpi=110)
    plt.close(fig)
    return [out_dir / REWARD_HIST, out_dir / COMPONENT_HISTS, out_dir / COMPONENT_DELTA]
