"""evaluate's verdict: ``eval.gates`` checked on a policy vs the baseline.

Hard gates (reward gain, its significance, KL, BERTScore) and soft gates (BLEU, distinct-2 and
EOS-rate drops) give ``proceed`` / ``adjust`` / ``reconsider`` (:func:`decide`; the rule is also
in :class:`rlhf_lab.config.EvalGates`'s docstring and the report). Pure: metrics in, verdict out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_lab.config import EvalGates


@dataclass(frozen=True)
class GateResult:
    """One gate: its value on this run, threshold, outcome and kind."""

    name: str
    kind: str
    """'hard' (reward gain, KL) or 'soft' (BLEU and distinct-2 drops)."""
    value: float | None
    """None when the gate could not be measured (BLEU without references): it passes."""
    threshold: float
    passed: bool
    rule: str
    """The pass condition in words, for the report."""


@dataclass(frozen=True)
class Verdict:
    """The proceed / adjust / reconsider decision and the gates behind it."""

    decision: str
    gates: tuple[GateResult, ...]

    @property
    def failed(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def metrics(self, policy: str) -> dict[str, Any]:
        """``verdict/<policy>/decision``, ``.../failed_gates``, ``.../pass/<gate>`` (0/1)..."""
        pre = f"verdict/{policy}"
        out: dict[str, Any] = {
            f"{pre}/decision": self.decision,
            f"{pre}/failed_gates": ",".join(self.failed),
        }
        for g in self.gates:
            out[f"{pre}/pass/{g.name}"] = int(g.passed)
            if g.value is not None:
                out[f"{pre}/value/{g.name}"] = g.value
        return out


def decide(failed_hard: Sequence[str], failed_soft: Sequence[str]) -> str:
    """The verdict rule (also in ``EvalGates``'s docstring and the report).

    ``proceed``: every gate passes. ``adjust``: the hard gates pass and exactly one soft gate
    fails. ``reconsider``: a hard gate fails (no significant reward gain, KL too large, or a
    BERTScore loss), or more than one soft gate fails.
    """
    if failed_hard or len(failed_soft) > 1:
        return "reconsider"
    if failed_soft:
        return "adjust"
    return "proceed"


def check_gates(
    metrics: Mapping[str, Any], gates: EvalGates, policy: str, baseline: str
) -> Verdict:
    """Check ``eval.gates`` on ``policy`` vs ``baseline`` in :func:`build_metrics`' output."""
    pol, base, delta = f"{policy}/", f"{baseline}/", f"delta/{policy}/"
    gain = float(metrics[f"{delta}rm_score"])
    kl = float(metrics[f"{delta}kl"])
    bleu_drop = None
    if f"{base}bleu" in metrics and f"{pol}bleu" in metrics:
        bleu_drop = float(metrics[f"{base}bleu"]) - float(metrics[f"{pol}bleu"])
    d2_base, d2_pol = float(metrics[f"{base}distinct2"]), float(metrics[f"{pol}distinct2"])
    # Relative to the baseline's distinct-2 (the gate is "a fraction of the baseline's"); a
    # baseline at 0 cannot drop.
    d2_drop = (d2_base - d2_pol) / d2_base if d2_base > 0 else 0.0
    eos_base, eos_pol = metrics.get(f"{base}eos_rate"), metrics.get(f"{pol}eos_rate")
    eos_drop = None
    if eos_base is not None and eos_pol is not None:
        eos_drop = (eos_base - eos_pol) / eos_base if eos_base > 0 else 0.0
    pvalue = metrics.get(f"{delta}rm_pvalue_wilcoxon")
    pvalue = None if pvalue is None or not np.isfinite(pvalue) else float(pvalue)
    # The policy's mean minus the low end of the baseline's CI: negative = below what the
    # baseline's noise explains.
    bs_margin = None
    if gates.bertscore_within_ci and f"{pol}bertscore_f1" in metrics:
        lo = metrics.get(f"{base}bertscore_f1_ci_lo")
        if lo is not None:
            bs_margin = float(metrics[f"{pol}bertscore_f1"]) - float(lo)
    P, B = policy.upper(), baseline.upper()
    results = (
        GateResult(
            "reward_gain",
            "hard",
            gain,
            gates.min_reward_gain,
            gain > gates.min_reward_gain,
            f"{P} - {B} mean reward-model score > {gates.min_reward_gain:g}",
        ),
        GateResult(
            "significance",
            "hard",
            pvalue,
            gates.max_rm_pvalue,
            pvalue is not None and pvalue < gates.max_rm_pvalue,
            f"paired Wilcoxon p-value of the reward-model gain < {gates.max_rm_pvalue:g}",
        ),
        GateResult(
            "kl",
            "hard",
            kl,
            gates.max_kl,
            kl < gates.max_kl,
            f"KL({P} || {B}) per reply < {gates.max_kl:g} nats",
        ),
        GateResult(
            "bertscore",
            "hard",
            bs_margin,
            0.0,
            bs_margin is None or bs_margin >= 0.0,
            f"{P} BERTScore F1 >= lower end of {B}'s 95% CI (n/a without references)",
        ),
        GateResult(
            "bleu_drop",
            "soft",
            bleu_drop,
            gates.max_bleu_drop,
            bleu_drop is None or bleu_drop <= gates.max_bleu_drop,
            f"{B} - {P} corpus BLEU <= {gates.max_bleu_drop:g} points (n/a without references)",
        ),
        GateResult(
            "distinct2_drop",
            "soft",
            d2_drop,
            gates.max_distinct2_drop,
            d2_drop <= gates.max_distinct2_drop,
            f"({B} - {P} distinct-2) / {B} distinct-2 <= {gates.max_distinct2_drop:g}",
        ),
        GateResult(
            "eos_rate_drop",
            "soft",
            eos_drop,
            gates.max_eos_rate_drop,
            eos_drop is None or eos_drop <= gates.max_eos_rate_drop,
            f"({B} - {P} EOS rate) / {B} EOS rate <= {gates.max_eos_rate_drop:g}",
        ),
    )
    failed_hard = [g.name for g in results if g.kind == "hard" and not g.passed]
    failed_soft = [g.name for g in results if g.kind == "soft" and not g.passed]
    return Verdict(decide(failed_hard, failed_soft), results)
