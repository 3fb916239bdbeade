"""The task protocol verdict (docstring Phase-1 gates) and the metrics it reads: the rule
reward total and the KL per token."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhf_lab.config import EvalConfig, EvalGates, ProtocolGates, parse_params
from rlhf_lab.errors import ConfigError
from rlhf_lab.evaluation import metrics, pipeline, report
from rlhf_lab.evaluation.gates import check_gates, protocol_thresholds
from rlhf_lab.evaluation.metrics import ModelOutputs
from rlhf_lab.reward_components import REWARD_MODEL, task_weights
from rlhf_lab.tasks import docstring


def _metrics_file(tmp_path, gain=0.12, bleu_gain_points=2.5, kl_per_token=0.01):
    """A metrics/evaluate.json as evaluate writes it (the keys the protocol reads), read back."""
    m = {
        "sft/reward/total_with_reference": 0.55,
        "ppo/reward/total_with_reference": 0.55 + gain,
        "delta/ppo/reward/total_with_reference": gain,
        "delta/ppo/reward/total": -0.3,  # without BLEU: not what the protocol reads
        "sft/bleu4": 18.5,
        "ppo/bleu4": 18.5 + bleu_gain_points,
        "delta/ppo/bleu4": bleu_gain_points,
        "delta/ppo/kl_per_token": kl_per_token,
        # the generic gates' inputs too, so a fall-back to them would not fail loudly
        "delta/ppo/rm_score": -1.0,
        "delta/ppo/kl": 1.0,
        "sft/distinct2": 0.5,
        "ppo/distinct2": 0.5,
    }
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(m))
    return json.loads(path.read_text())


PROTOCOL_CASES = [
    # (gain, BLEU-4 gain in points, KL per token) -> decision, decided by
    ((0.12, 2.5, 0.01), "proceed", "all"),
    ((0.10, 2.0, 0.0199), "proceed", "all"),  # the bars are inclusive for gains
    ((0.03, 2.5, 0.01), "adjust", "reward_stalled"),  # rose by < 0.05
    ((0.12, 2.5, 0.03), "adjust", "kl"),  # KL > 0.02
    ((0.12, 2.5, 0.02), "adjust", "kl"),  # proceed needs KL < 0.02
    ((0.07, 2.5, 0.01), "adjust", "reward_gain"),  # between the adjust and proceed bars
    ((0.12, 1.0, 0.01), "adjust", "bleu_gain"),  # BLEU-4 +0.01 < +0.02
    ((-0.01, 2.5, 0.01), "reconsider", "reward_fell"),
    ((0.12, -0.5, 0.01), "reconsider", "bleu_fell"),
    ((0.12, 2.5, 0.06), "reconsider", "kl_far"),  # KL > 0.05
    ((-0.2, -1.0, 0.1), "reconsider", "reward_fell"),  # the first failure decides
]


@pytest.mark.parametrize(("case", "decision", "by"), PROTOCOL_CASES)
def test_docstring_protocol_on_metric_files(tmp_path, case, decision, by):
    m = _metrics_file(tmp_path, *case)
    verdict = check_gates(m, EvalGates(), "ppo", "sft", "docstring")
    assert (verdict.decision, verdict.decided_by, verdict.rule) == (decision, by, "protocol")
    out = verdict.metrics("ppo")
    assert out["verdict/ppo/decision"] == decision
    assert out["verdict/ppo/decided_by"] == by
    assert out["verdict/ppo/rule"] == "protocol"
    assert out["verdict/ppo/value/bleu_gain"] == pytest.approx(case[1] / 100)
    assert out["verdict/ppo/value/kl"] == case[2]


def test_protocol_without_references_checks_no_bleu(tmp_path):
    m = _metrics_file(tmp_path)
    del m["delta/ppo/bleu4"]
    verdict = check_gates(m, EvalGates(), "ppo", "sft", "docstring")
    assert verdict.decision == "proceed"
    assert {g.name: g.value for g in verdict.gates}["bleu_gain"] is None


def test_protocol_thresholds_come_from_params(tmp_path):
    m = _metrics_file(tmp_path)  # +0.12 reward: proceed under the defaults
    params = parse_params({"eval": {"gates": {"protocol": {"min_reward_gain": 0.2}}}})
    verdict = check_gates(m, params.eval.gates, "ppo", "sft", "docstring")
    assert (verdict.decision, verdict.decided_by) == ("adjust", "reward_gain")
    gate = next(g for g in verdict.gates if g.name == "reward_gain")
    assert gate.threshold == 0.2 and gate.rule == "PPO - SFT mean rule reward >= 0.2"


def test_the_task_picks_the_rule(tmp_path):
    m = _metrics_file(tmp_path)
    assert protocol_thresholds(ProtocolGates(), "docstring") == docstring.PHASE1_GATES
    assert protocol_thresholds(ProtocolGates(), "chat") is None
    chat = check_gates(m, EvalGates(), "ppo", "sft", "chat")
    assert (chat.rule, chat.decision, chat.decided_by) == ("generic", "reconsider", "reward_gain")
    off = EvalGates(protocol=ProtocolGates(use=False))
    assert check_gates(m, off, "ppo", "sft", "docstring").rule == "generic"
    # chat has no protocol defaults: turning it on needs every threshold
    with pytest.raises(ConfigError, match=r"eval\.gates\.protocol\.min_reward_gain"):
        protocol_thresholds(ProtocolGates(use=True), "chat")
    full = ProtocolGates(use=True, **docstring.PHASE1_GATES)
    assert check_gates(m, EvalGates(protocol=full), "ppo", "sft", "chat").decision == "proceed"


def test_generic_verdict_names_its_deciding_gate():
    m = {
        "delta/ppo/rm_score": 0.3,
        "delta/ppo/rm_pvalue_wilcoxon": 0.01,
        "delta/ppo/kl": 1.0,
        "sft/distinct2": 0.5,
        "ppo/distinct2": 0.3,  # 40% drop: one soft gate fails
    }
    v = check_gates(m, EvalGates(), "ppo", "sft")
    assert (v.decision, v.decided_by) == ("adjust", "distinct2_drop")
    m["delta/ppo/kl"] = 11.0
    assert check_gates(m, EvalGates(), "ppo", "sft").decided_by == "kl"  # hard before soft


def test_rule_total_by_hand():
    scores = {
        REWARD_MODEL: np.array([5.0, 5.0, 5.0]),
        "docstring/param_coverage": np.array([1.0, 0.0, np.nan]),
        "docstring/bleu": np.array([0.5, np.nan, np.nan]),
        "docstring/length": np.array([1.0, 1.0, np.nan]),
    }
    reward_weights = {
        "reward_model": 1.0,  # a model, not one of the task's rules: left out
        "docstring/param_coverage": 0.3,
        "docstring/bleu": 0.2,
        "docstring/length": 0.1,
        "docstring/doctest": 0.4,  # weighted but not scored: left out
        "text/length": 1.0,  # a generic rule, not the task's: left out
    }
    weights, source = task_weights("docstring", reward_weights)
    assert source == "reward.weights" and "reward_model" not in weights
    total = metrics.rule_total(scores, weights)
    # row 0: (0.3*1 + 0.2*0.5 + 0.1*1) / 0.6; row 1 has no BLEU: (0.3*0 + 0.1*1) / 0.4
    assert total[0] == pytest.approx(0.5 / 0.6)
    assert total[1] == pytest.approx(0.25)
    assert np.isnan(total[2])
    ref_free = metrics.rule_total(scores, weights, ref_free=True)
    assert ref_free[0] == pytest.approx(0.4 / 0.4)
    assert metrics.rule_total(scores, {"docstring/raises_mention": 1.0}) is None
    # a run that weighs none of the task's rules gets the task's defaults
    assert task_weights("docstring", {"reward_model": 1.0})[1] == "task defaults"


def test_kl_per_token_weighs_by_length():
    # two replies: 0.4 nats over 10 tokens and 0.2 over 30 -> 0.6 / 40
    assert metrics.kl_per_token(np.array([0.4, 0.2]), [10, 30]) == pytest.approx(0.015)
    assert metrics.kl_per_token(np.array([]), []) == 0.0


def _outputs(rule_sft, rule_ppo, rm):
    def one(rule, eos_tokens):
        n = len(rule)
        return ModelOutputs(
            texts=["a b c"] * n,
            valid=np.ones(n, dtype=bool),
            n_tokens=eos_tokens,
            eos=[True] * n,
            scores={
                REWARD_MODEL: np.array(rm),
                "docstring/param_coverage": np.array(rule),
                "docstring/bleu": np.zeros(n),
            },
        )

    ref = ModelOutputs(
        texts=["x"] * 4,
        valid=np.ones(4, dtype=bool),
        scores={REWARD_MODEL: np.zeros(4), "docstring/param_coverage": np.ones(4)},
    )
    return {
        "sft": one(rule_sft, [10, 10, 10, 10]),
        "ppo": one(rule_ppo, [10, 20, 5, 5]),
        "ref": ref,
    }


def test_build_metrics_has_the_protocol_inputs():
    outs = _outputs([0.5, 0.5, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0], [0.0, 0.1, 0.2, 0.3])
    metrics.add_rule_totals(outs, {"docstring/param_coverage": 0.3, "docstring/bleu": 0.3})
    assert "total_with_reference" not in outs["ref"].scores  # no BLEU for the references
    kl = {"ppo": np.array([0.1, 0.2, 0.0, 0.1])}
    refs = ["x", "y", "z", "w"]
    m = metrics.build_metrics(outs, refs, kl, baseline="sft", policies=["ppo"], n_boot=200, seed=0)
    # with reference: (coverage + 0 BLEU) / 2; without: coverage alone
    assert m["sft/reward/total_with_reference"] == pytest.approx(0.25)
    assert m["ppo/reward/total_with_reference"] == pytest.approx(0.375)
    assert m["delta/ppo/reward/total_with_reference"] == pytest.approx(0.125)
    assert m["sft/reward/total"] == pytest.approx(0.5) and m["ref/reward/total"] == 1.0
    assert m["delta/ppo/kl_per_token"] == pytest.approx(0.4 / 40)
    assert "delta/ppo/reward/total_with_reference_pvalue_wilcoxon" in m
    assert "sft/reward/docstring/param_coverage" in m
    rows = metrics.component_breakdown(outs, "sft", "ppo", n_boot=200, seed=0)
    assert [r["component"] for r in rows] == [
        "docstring/param_coverage",
        REWARD_MODEL,
        "docstring/bleu",
    ]
    # the examples rank by the rule reward, three each way: gains on rows 0 and 2, no loss
    assert metrics.largest_changes([{}] * 4, outs, "sft", "ppo") == ([0, 2], [])


def test_docstring_report_phase1_section():
    n = 6
    rows = [
        {
            "id": f"f{i}",
            "prompt": [{"role": "user", "content": f"def f{i}(x): ..."}],
            "reference": f"Return x plus {i} for the caller.",
        }
        for i in range(n)
    ]
    refs = [r["reference"] for r in rows]

    def model(texts, coverage, raises):
        return ModelOutputs(
            texts=texts,
            valid=np.ones(n, dtype=bool),
            n_tokens=[10] * n,
            eos=[True] * n,
            scores={
                REWARD_MODEL: np.zeros(n),
                "docstring/param_coverage": np.array(coverage),
                "docstring/raises_mention": np.array(raises),
                "docstring/bleu": np.full(n, 0.2),
                "docstring/length": np.ones(n),
            },
            task_metrics={"doctest/replies": 2, "doctest/with_example": 0.5},
        )

    outs = {
        "sft": model(["Does x."] * n, [0, 0, 0, 1, 1, 1], [0.0] * n),
        "ppo": model(refs, [1, 1, 1, 1, 1, 0], [0.1] * n),  # the references' words: BLEU up
        "ref": ModelOutputs(
            texts=refs,
            valid=np.ones(n, dtype=bool),
            scores={"docstring/param_coverage": np.ones(n), "docstring/length": np.ones(n)},
        ),
    }
    weights, _ = task_weights("docstring", {})
    metrics.add_rule_totals(outs, weights)
    cfg = EvalConfig(policies=["ppo"], n_boot=200)
    result = pipeline.finish("docstring", rows, outs, {"ppo": np.full(n, 0.1)}, cfg)
    m = result.metrics
    assert m["delta/ppo/kl_per_token"] == pytest.approx(0.01)
    assert m["verdict/ppo/decision"] == "proceed" and m["verdict/ppo/rule"] == "protocol"
    assert m["ref/reward/total"] == pytest.approx(1.0)
    md = report.render_report(result, plots_rel="p", run_params={}, n_boot=200)
    phase1 = md.split("## Phase 1")[1].split("## Headline")[0]
    # references: coverage and length 1 (no raises_mention row for them): total 1; SFT's
    # reference-free total (0.3 cov + 0.1 raises + 0.1 length) / 0.5 = (0.15 + 0 + 0.1) / 0.5
    assert m["sft/reward/total"] == pytest.approx(0.5)
    assert "| SFT | 0.400 [" in phase1 and "| +0.500 |" in phase1
    assert "| PPO |" in phase1 and "| references |" in phase1.lower()
    assert "proceed (`all`)" in phase1
    assert "- **PPO**: weakest components `docstring/raises_mention` 0.100" in phase1
    assert "Protocol rule" in md and "(protocol rule)" in md
    assert "### Three largest PPO gains over SFT (rule reward)" in md
    assert len(result.gains["ppo"]) == 3 and result.losses["ppo"] == [5]
