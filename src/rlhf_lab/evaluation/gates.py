"""evaluate's verdict: ``eval.gates`` checked on a policy vs the baseline.

Two rules, one per verdict, both giving ``proceed`` / ``adjust`` / ``reconsider`` and naming
the gate that decided it:

- generic (:func:`decide`): hard gates (reward-model gain, its significance, KL, BERTScore) and
  soft gates (BLEU, distinct-2 and EOS-rate drops); the rule is also in
  :class:`rlhf_lab.config.EvalGates`'s docstring and the report;
- a task's protocol (:func:`check_protocol`), used when ``eval.gates.protocol.use`` is true or
  null for a task with :attr:`~rlhf_lab.tasks.base.Task.gate_defaults` (docstring: the
  Phase-1 gates on the rule reward, BLEU-4 and the mean KL per token,
  :class:`rlhf_lab.config.ProtocolGates`).

Pure: metrics in, verdict out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_lab.config import EvalGates, ProtocolGates
from rlhf_lab.errors import ConfigError
from rlhf_lab.reward_components import TOTAL, TOTAL_REF
from rlhf_lab.tasks.registry import get_task

PROCEED_ALL = "all"
"""``decided_by`` of a proceed verdict: every gate passed, none decided it alone."""


@dataclass(frozen=True)
class GateResult:
    """One gate: its value on this run, threshold, outcome and kind."""

    name: str
    kind: str
    """Generic rule: 'hard' (reward gain, KL) or 'soft' (BLEU and distinct-2 drops); a protocol:
    'reconsider' or 'proceed' (the verdict its failure points to; a failed proceed gate means
    adjust)."""
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
    decided_by: str = PROCEED_ALL
    """The gate that decided the verdict (:data:`PROCEED_ALL` for proceed)."""
    rule: str = "generic"
    """Which rule decided: ``generic`` or ``protocol``."""

    @property
    def failed(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def metrics(self, policy: str) -> dict[str, Any]:
        """``verdict/<policy>/decision``, ``.../decided_by``, ``.../rule``, ``.../failed_gates``,
        ``.../pass/<gate>`` (0/1), ``.../value/<gate>``."""
        pre = f"verdict/{policy}"
        out: dict[str, Any] = {
            f"{pre}/decision": self.decision,
            f"{pre}/decided_by": self.decided_by,
            f"{pre}/rule": self.rule,
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


def decided_by(decision: str, failed_hard: Sequence[str], failed_soft: Sequence[str]) -> str:
    """The gate behind a generic verdict: the first failed hard gate, else the first failed
    soft gate; :data:`PROCEED_ALL` for proceed."""
    if decision == "proceed":
        return PROCEED_ALL
    return [*failed_hard, *failed_soft][0]


def check_gates(
    metrics: Mapping[str, Any],
    gates: EvalGates,
    policy: str,
    baseline: str,
    task: str = "chat",
) -> Verdict:
    """The verdict on ``policy`` vs ``baseline`` in :func:`build_metrics`' output: the task's
    protocol where it applies (:func:`protocol_thresholds`), else the generic gates."""
    thresholds = protocol_thresholds(gates.protocol, task)
    if thresholds is not None:
        return check_protocol(metrics, thresholds, policy, baseline)
    return check_generic(metrics, gates, policy, baseline)


def check_generic(
    metrics: Mapping[str, Any], gates: EvalGates, policy: str, baseline: str
) -> Verdict:
    """Check the generic ``eval.gates`` on ``policy`` vs ``baseline``."""
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
    decision = decide(failed_hard, failed_soft)
    return Verdict(decision, results, decided_by(decision, failed_hard, failed_soft))


PROTOCOL_FIELDS = (
    "min_reward_gain",
    "min_bleu_gain",
    "max_kl_per_token",
    "adjust_reward_gain",
    "reconsider_kl_per_token",
)
"""The thresholds of :class:`rlhf_lab.config.ProtocolGates`."""


def protocol_thresholds(cfg: ProtocolGates, task: str) -> dict[str, float] | None:
    """The protocol thresholds in force for ``task``: each ``eval.gates.protocol`` field, or the
    task's default (:attr:`rlhf_lab.tasks.base.Task.gate_defaults`) where it is null; None when
    the generic gates decide (``use: false``, or null for a task without a protocol: a task
    with no defaults uses the generic gates unless ``use`` is true and every threshold is set).

    ConfigError when the protocol is on and a threshold has neither a value nor a default.
    """
    defaults = get_task(task).gate_defaults
    use = cfg.use if cfg.use is not None else bool(defaults)
    if not use:
        return None
    out: dict[str, float] = {}
    for name in PROTOCOL_FIELDS:
        value = getattr(cfg, name)
        value = defaults.get(name) if value is None else value
        if value is None:
            raise ConfigError(
                f"params.yaml: eval.gates.protocol.{name}: task {task!r} has no default; set it "
                "or set eval.gates.protocol.use to false"
            )
        out[name] = float(value)
    return out


def kl_per_token(kl: np.ndarray, n_tokens: Sequence[int]) -> float:
    """Mean KL per sampled token: the replies' summed KL over their summed token counts (a
    long reply weighs by its length, as a per-token penalty does); 0.0 without tokens."""
    total = float(np.sum(n_tokens))
    return float(np.sum(kl)) / total if total > 0 else 0.0


def check_protocol(
    metrics: Mapping[str, Any], t: Mapping[str, float], policy: str, baseline: str
) -> Verdict:
    """The task's protocol on ``policy`` vs ``baseline`` (:class:`rlhf_lab.config.ProtocolGates`).

    Reads ``delta/<p>/reward/total_with_reference`` (mean rule reward gain; ``.../total``
    when no reference-based component is weighted), ``delta/<p>/bleu4`` (corpus
    BLEU-4 gain in points, divided by 100 here: the protocol's BLEU is on the 0-1 scale) and
    ``delta/<p>/kl_per_token``. The reconsider gates are checked first, then the proceed ones;
    the first failure in that order decides. Between the adjust and the proceed reward bars
    (and for a BLEU-4 gain in [0, ``min_bleu_gain``)) the protocol names no verdict: adjust,
    the cautious reading, decided by the proceed gate that failed.
    """
    d = f"delta/{policy}/"
    reward = f"{d}reward/{TOTAL_REF}"
    gain = float(metrics[reward if reward in metrics else f"{d}reward/{TOTAL}"])
    bleu = metrics.get(f"{d}bleu4")
    bleu_gain = None if bleu is None else float(bleu) / 100.0
    kl = float(metrics[f"{d}kl_per_token"])
    P, B = policy.upper(), baseline.upper()
    reconsider = (
        GateResult(
            "reward_fell",
            "reconsider",
            gain,
            0.0,
            gain >= 0.0,
            f"{P} - {B} mean rule reward >= 0",
        ),
        GateResult(
            "bleu_fell",
            "reconsider",
            bleu_gain,
            0.0,
            bleu_gain is None or bleu_gain >= 0.0,
            f"{P} - {B} corpus BLEU-4 (0-1) >= 0 (n/a without references)",
        ),
        GateResult(
            "kl_far",
            "reconsider",
            kl,
            t["reconsider_kl_per_token"],
            kl <= t["reconsider_kl_per_token"],
            f"mean KL({P} || {B}) per token <= {t['reconsider_kl_per_token']:g} nats",
        ),
    )
    proceed = (
        GateResult(
            "reward_stalled",
            "proceed",
            gain,
            t["adjust_reward_gain"],
            gain >= t["adjust_reward_gain"],
            f"{P} - {B} mean rule reward >= {t['adjust_reward_gain']:g} (else adjust)",
        ),
        GateResult(
            "kl",
            "proceed",
            kl,
            t["max_kl_per_token"],
            kl < t["max_kl_per_token"],
            f"mean KL({P} || {B}) per token < {t['max_kl_per_token']:g} nats",
        ),
        GateResult(
            "reward_gain",
            "proceed",
            gain,
            t["min_reward_gain"],
            gain >= t["min_reward_gain"],
            f"{P} - {B} mean rule reward >= {t['min_reward_gain']:g}",
        ),
        GateResult(
            "bleu_gain",
            "proceed",
            bleu_gain,
            t["min_bleu_gain"],
            bleu_gain is None or bleu_gain >= t["min_bleu_gain"],
            f"{P} - {B} corpus BLEU-4 (0-1) >= {t['min_bleu_gain']:g} (n/a without references)",
        ),
    )
    gates = (*reconsider, *proceed)
    for decision, group in (("reconsider", reconsider), ("adjust", proceed)):
        failed = [g.name for g in group if not g.passed]
        if failed:
            return Verdict(decision, gates, failed[0], "protocol")
    return Verdict("proceed", gates, PROCEED_ALL, "protocol")
