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

    def metrics(self) -> dict[str, Any]:
        """``verdict/decision``, ``verdict/failed_gates``, ``verdict/pass/<gate>`` (0/1)..."""
        out: dict[str, Any] = {
            "verdict/decision": self.decision,
            "verdict/failed_gates": ",".join(self.failed),
        }
        for g in self.gates:
            out[f"verdict/pass/{g.name}"] = int(g.passed)
            if g.value is not None:
                out[f"verdict/value/{g.name}"] = g.value
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


def check_gates(metrics: Mapping[str, Any], gates: EvalGates) -> Verdict:
    """Check ``eval.gates`` against the metrics of :func:`build_metrics` (without verdict)."""
    gain = float(metrics["delta/rm_score"])
    kl = float(metrics["delta/kl_ppo_sft"])
    bleu_drop = None
    if "sft/bleu" in metrics and "ppo/bleu" in metrics:
        bleu_drop = float(metrics["sft/bleu"]) - float(metrics["ppo/bleu"])
    d2_sft, d2_ppo = float(metrics["sft/distinct2"]), float(metrics["ppo/distinct2"])
    # Relative to SFT's distinct-2 (the gate is "a fraction of SFT's"); SFT at 0 cannot drop.
    d2_drop = (d2_sft - d2_ppo) / d2_sft if d2_sft > 0 else 0.0
    eos_sft, eos_ppo = metrics.get("sft/eos_rate"), metrics.get("ppo/eos_rate")
    eos_drop = None
    if eos_sft is not None and eos_ppo is not None:
        eos_drop = (eos_sft - eos_ppo) / eos_sft if eos_sft > 0 else 0.0
    pvalue = metrics.get("delta/rm_pvalue_wilcoxon")
    pvalue = None if pvalue is None or not np.isfinite(pvalue) else float(pvalue)
    # PPO's mean minus the low end of SFT's CI: negative = below what SFT's noise explains.
    bs_margin = None
    if gates.bertscore_within_ci and "ppo/bertscore_f1" in metrics:
        lo = metrics.get("sft/bertscore_f1_ci_lo")
        if lo is not None:
            bs_margin = float(metrics["ppo/bertscore_f1"]) - float(lo)
    results = (
        GateResult(
            "reward_gain",
            "hard",
            gain,
            gates.min_reward_gain,
            gain > gates.min_reward_gain,
            f"PPO - SFT mean reward-model score > {gates.min_reward_gain:g}",
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
            f"KL(PPO || SFT) per reply < {gates.max_kl:g} nats",
        ),
        GateResult(
            "bertscore",
            "hard",
            bs_margin,
            0.0,
            bs_margin is None or bs_margin >= 0.0,
            "PPO BERTScore F1 >= lower end of SFT's 95% CI (n/a without references)",
        ),
        GateResult(
            "bleu_drop",
            "soft",
            bleu_drop,
            gates.max_bleu_drop,
            bleu_drop is None or bleu_drop <= gates.max_bleu_drop,
            f"SFT - PPO corpus BLEU <= {gates.max_bleu_drop:g} points (n/a without references)",
        ),
        GateResult(
            "distinct2_drop",
            "soft",
            d2_drop,
            gates.max_distinct2_drop,
            d2_drop <= gates.max_distinct2_drop,
            f"(SFT - PPO distinct-2) / SFT distinct-2 <= {gates.max_distinct2_drop:g}",
        ),
        GateResult(
            "eos_rate_drop",
            "soft",
            eos_drop,
            gates.max_eos_rate_drop,
            eos_drop is None or eos_drop <= gates.max_eos_rate_drop,
            f"(SFT - PPO EOS rate) / SFT EOS rate <= {gates.max_eos_rate_drop:g}",
        ),
    )
    failed_hard = [g.name for g in results if g.kind == "hard" and not g.passed]
    failed_soft = [g.name for g in results if g.kind == "soft" and not g.passed]
    return Verdict(decide(failed_hard, failed_soft), results)
