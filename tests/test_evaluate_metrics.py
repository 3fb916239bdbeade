"""evaluate's pure parts: per-model metrics, policy-vs-baseline comparisons, gates, scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_lab import reward_components, text_metrics
from rlhf_lab.config import EvalConfig, EvalGates, Params
from rlhf_lab.evaluation import metrics, pipeline, scoring, stats
from rlhf_lab.evaluation.gates import check_gates, decide
from rlhf_lab.reward_components import REWARD_MODEL, is_reference_based

ROWS = [
    {"id": "a", "prompt": [{"role": "user", "content": "hi"}], "reference": "hello there you"},
    {"id": "b", "prompt": [{"role": "user", "content": "film?"}], "reference": "watch alien"},
    {"id": "c", "prompt": [{"role": "user", "content": "bye"}], "reference": None},
    {"id": "d", "prompt": [{"role": "user", "content": "ok"}], "reference": "  "},
]
REFS = [scoring.reference_of(r) for r in ROWS]


def _model(texts, rm, eos=None, **scores):
    n = len(texts)
    return metrics.ModelOutputs(
        texts=list(texts),
        valid=np.ones(n, dtype=bool),
        n_tokens=[len(t.split()) + 1 for t in texts],
        eos=list(eos) if eos is not None else [True] * n,
        scores={REWARD_MODEL: np.asarray(rm, dtype=float), **scores},
    )


SFT = _model(["hello you", "watch it", "bye bye", "ok ok ok"], [0.0, 0.5, -1.0, 0.2])
PPO = _model(
    ["hello there you", "watch alien now", "goodbye friend", "ok"],
    [1.0, 0.4, 0.0, 0.7],
    eos=[True, True, False, True],
)
KL = {"ppo": np.array([0.5, 1.5, 2.0, 0.0])}
SFT_PPO = {"baseline": "sft", "policies": ["ppo"]}


def test_reference_of_skips_null_and_blank():
    assert REFS == ["hello there you", "watch alien", None, None]


def test_reference_metrics_use_only_rows_with_reference():
    got = metrics.reference_metrics(PPO.texts, REFS)
    hyps, refs = ["hello there you", "watch alien now"], ["hello there you", "watch alien"]
    assert got["bleu"] == pytest.approx(text_metrics.bleu(hyps, refs))
    assert got["bleu4"] == got["bleu"]
    assert got["bleu1"] == pytest.approx(text_metrics.bleu_n(hyps, refs, 1))
    # ROUGE-L by hand: exact match = 1; "watch alien now" vs "watch alien": P=2/3, R=1 -> 0.8
    assert got["rougeL"] == pytest.approx((1.0 + 0.8) / 2)
    # METEOR by hand (alpha 0.9, beta 3, gamma 0.5): exact match, 3 words in 1 chunk:
    # 1 - 0.5 (1/3)^3; "watch alien now" vs "watch alien": P 2/3, R 1,
    # Fmean = P R / (0.9 P + 0.1 R) = 20/21, 1 chunk of 2 -> 20/21 (1 - 0.5 (1/2)^3)
    meteor = ((1 - 0.5 / 27) + 20 / 21 * (1 - 0.5 / 8)) / 2
    assert got["meteor"] == pytest.approx(meteor)
    assert metrics.reference_metrics(["x"], [None]) == {}


def test_summarise_model_by_hand():
    m = metrics.summarise_model(PPO, REFS, n_boot=200, seed=0)
    assert m["rm_score"] == pytest.approx(0.525)
    assert m["rm_score_ci_lo"] <= m["rm_score"] <= m["rm_score_ci_hi"]
    # 9 words, all distinct; bigrams: 2 + 2 + 1 + 0 = 5, all distinct
    assert m["distinct1"] == 1.0 and m["distinct2"] == 1.0
    assert m["length"] == pytest.approx(9 / 4)
    assert m["tokens"] == pytest.approx((4 + 4 + 3 + 2) / 4)
    assert m["eos_rate"] == 0.75
    sft = metrics.summarise_model(SFT, REFS, n_boot=200, seed=0)
    # "hello you" "watch it" "bye bye" "ok ok ok": 9 tokens, 6 distinct
    assert sft["distinct1"] == pytest.approx(6 / 9)
    # bigrams: (hello you) (watch it) (bye bye) (ok ok) (ok ok): 4 distinct of 5
    assert sft["distinct2"] == pytest.approx(4 / 5)


def test_build_metrics_keys_deltas_and_comparisons():
    m = metrics.build_metrics({"sft": SFT, "ppo": PPO}, REFS, KL, **SFT_PPO, n_boot=500, seed=0)
    assert m["eval/num_prompts"] == 4 and m["eval/num_references"] == 2
    for key in ("rm_score", "bleu", "bleu1", "bleu2", "bleu4", "rougeL", "distinct1",
                "distinct2", "length", "tokens", "eos_rate"):  # fmt: skip
        assert m[f"delta/ppo/{key}"] == pytest.approx(m[f"ppo/{key}"] - m[f"sft/{key}"]), key
    assert "delta/ppo/rm_score_ci_lo" in m and "delta/ppo/rm_score_ci_hi" in m
    assert m["delta/ppo/rm_score"] == pytest.approx(0.525 - (-0.075))
    # PPO beats SFT on 3 of 4 prompts
    assert m["delta/ppo/win_rate_rm"] == 0.75
    assert m["delta/ppo/win_rate_rm_ci_lo"] <= 0.75 <= m["delta/ppo/win_rate_rm_ci_hi"]
    lc = stats.length_controlled_win_rate(
        PPO.scores[REWARD_MODEL], SFT.scores[REWARD_MODEL], PPO.n_tokens, SFT.n_tokens
    )
    assert m["delta/ppo/win_rate_rm_lc"] == lc and 0.0 < lc < 1.0
    p = stats.paired_test(PPO.scores[REWARD_MODEL], SFT.scores[REWARD_MODEL])
    assert m["delta/ppo/rm_pvalue_wilcoxon"] == p["wilcoxon_p"]
    assert m["delta/ppo/rm_pvalue_ttest"] == p["ttest_p"]
    assert m["delta/ppo/kl"] == pytest.approx(1.0)
    # no judge, no BERTScore: their keys are absent, not faked
    assert not [k for k in m if "judge" in k or "bertscore" in k]
    # flat: every value a number or a string
    assert all(isinstance(v, int | float | str) for v in m.values())


def test_build_metrics_compares_every_policy_with_the_baseline():
    # a second policy, DPO, that only lengthens PPO's replies: its deltas are its own
    dpo = _model([t + " indeed" for t in PPO.texts], [2.0, 2.0, -2.0, 2.0])
    kl = {**KL, "dpo": np.array([3.0, 3.0, 3.0, 3.0])}
    m = metrics.build_metrics(
        {"sft": SFT, "ppo": PPO, "dpo": dpo},
        REFS,
        kl,
        baseline="sft",
        policies=["ppo", "dpo"],
        n_boot=200,
        seed=0,
    )
    assert m["dpo/rm_score"] == 1.0 and m["dpo/tokens"] == pytest.approx(13 / 4 + 1)
    assert m["delta/dpo/rm_score"] == pytest.approx(1.0 - (-0.075))
    assert m["delta/dpo/win_rate_rm"] == 0.75 and m["delta/dpo/kl"] == 3.0
    assert m["delta/dpo/tokens"] == pytest.approx(m["dpo/tokens"] - m["sft/tokens"])
    # PPO's keys are those of the one-policy run: a policy's deltas ignore the others
    alone = metrics.build_metrics({"sft": SFT, "ppo": PPO}, REFS, KL, **SFT_PPO, n_boot=200, seed=0)
    assert {k: v for k, v in m.items() if "dpo" not in k} == alone
    assert not [k for k in m if k.startswith("delta/sft")]


def test_judge_failures_are_excluded_from_win_rate():
    sft, ppo = (
        _model(SFT.texts, SFT.scores[REWARD_MODEL]),
        _model(PPO.texts, [0, 0, 0, 0]),
    )
    sft.judge = scoring.judge_table(
        [{"helpfulness": 2.0, "overall": 2.0}, {"helpfulness": None, "overall": None}] * 2
    )
    ppo.judge = scoring.judge_table(
        [{"helpfulness": 3.0, "overall": 3.0}, {"helpfulness": 5.0, "overall": 5.0}] * 2
    )
    assert np.isnan(sft.judge["overall"][1])
    m = metrics.build_metrics({"sft": sft, "ppo": ppo}, REFS, KL, **SFT_PPO, n_boot=200, seed=0)
    assert m["sft/judge/helpfulness"] == 2.0 and m["ppo/judge/overall"] == 4.0
    assert m["sft/judge_failures"] == 2 and m["ppo/judge_failures"] == 0
    assert m["delta/ppo/win_rate_judge"] == 1.0  # the two failed rows do not take part
    assert m["delta/ppo/judge/overall"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("failed_hard", "failed_soft", "decision"),
    [
        ([], [], "proceed"),
        ([], ["bleu_drop"], "adjust"),
        ([], ["distinct2_drop"], "adjust"),
        ([], ["bleu_drop", "distinct2_drop"], "reconsider"),
        (["reward_gain"], [], "reconsider"),
        (["kl"], ["bleu_drop"], "reconsider"),
    ],
)
def test_decide(failed_hard, failed_soft, decision):
    assert decide(failed_hard, failed_soft) == decision


def _gate_metrics(policy="ppo", **over):
    m = {
        f"delta/{policy}/rm_score": 0.3,
        f"delta/{policy}/kl": 4.0,
        "sft/bleu": 10.0,
        f"{policy}/bleu": 9.0,
        "sft/distinct2": 0.5,
        f"{policy}/distinct2": 0.48,
        "sft/eos_rate": 0.8,
        f"{policy}/eos_rate": 0.9,
        f"delta/{policy}/rm_pvalue_wilcoxon": 0.01,
        "sft/bertscore_f1_ci_lo": 0.40,
        f"{policy}/bertscore_f1": 0.42,
    }
    m.update({k.replace("ppo", policy): v for k, v in over.items()})
    return {k: v for k, v in m.items() if v is not None}


GATE_CASES = [
    ({}, "proceed", ""),
    ({"delta/ppo/rm_score": 0.0}, "reconsider", "reward_gain"),  # must be strictly above
    ({"delta/ppo/kl": 12.0}, "reconsider", "kl"),
    ({"ppo/bleu": 7.5}, "adjust", "bleu_drop"),  # 2.5 points > 2
    ({"ppo/distinct2": 0.4}, "adjust", "distinct2_drop"),  # 20% of SFT's > 10%
    ({"ppo/bleu": 7.0, "ppo/distinct2": 0.4}, "reconsider", "bleu_drop,distinct2_drop"),
    ({"sft/bleu": None, "ppo/bleu": None}, "proceed", ""),  # no references: n/a
    ({"delta/ppo/rm_pvalue_wilcoxon": 0.2}, "reconsider", "significance"),
    ({"delta/ppo/rm_pvalue_wilcoxon": float("nan")}, "reconsider", "significance"),
    ({"ppo/bertscore_f1": 0.39}, "reconsider", "bertscore"),  # below SFT's CI: hacking
    ({"ppo/bertscore_f1": None}, "proceed", ""),  # no references: n/a
    ({"ppo/eos_rate": 0.6}, "adjust", "eos_rate_drop"),  # 25% of SFT's > 10%
]


@pytest.mark.parametrize("policy", ["ppo", "dpo"])
@pytest.mark.parametrize(("over", "decision", "failed"), GATE_CASES)
def test_check_gates(over, decision, failed, policy):
    verdict = check_gates(_gate_metrics(policy, **over), EvalGates(), policy, "sft")
    assert verdict.decision == decision
    vm = verdict.metrics(policy)
    pre = f"verdict/{policy}"
    assert vm[f"{pre}/decision"] == decision and vm[f"{pre}/failed_gates"] == failed
    names = ("reward_gain", "significance", "kl", "bertscore", "bleu_drop", "distinct2_drop")
    for gate in (*names, "eos_rate_drop"):
        assert vm[f"{pre}/pass/{gate}"] == int(gate not in failed.split(","))
    assert vm[f"{pre}/value/distinct2_drop"] == pytest.approx(
        (0.5 - _gate_metrics(policy, **over)[f"{policy}/distinct2"]) / 0.5
    )


def test_gate_rules_name_the_models():
    verdict = check_gates(_gate_metrics("dpo"), EvalGates(), "dpo", "sft")
    assert verdict.gates[0].rule == "DPO - SFT mean reward-model score > 0"


def test_gate_thresholds_come_from_params():
    gates = EvalGates(min_reward_gain=0.5, max_kl=3.0)
    assert check_gates(_gate_metrics(), gates, "ppo", "sft").failed == ["reward_gain", "kl"]


def test_breakdown_and_largest_changes():
    bleu = np.array([1.0, 0.5, np.nan, np.nan])
    sft = _model(SFT.texts, SFT.scores[REWARD_MODEL], **{"text/bleu": bleu})
    ppo = _model(PPO.texts, PPO.scores[REWARD_MODEL], **{"text/bleu": bleu - 0.5})
    rows = metrics.component_breakdown({"sft": sft, "ppo": ppo}, "sft", "ppo", n_boot=200, seed=0)
    assert [r["component"] for r in rows] == [
        REWARD_MODEL,
        "text/bleu",
    ]  # gain first
    bleu_row = rows[1]
    assert bleu_row["baseline"] == 0.75 and bleu_row["policy"] == 0.25 and bleu_row["n"] == 2
    assert bleu_row["delta"] == bleu_row["delta_ci_lo"] == bleu_row["delta_ci_hi"] == -0.5
    gains, losses = metrics.largest_changes(ROWS, {"sft": sft, "ppo": ppo}, "sft", "ppo", k=2)
    assert gains == [0, 2]  # per-prompt gains +1.0, -0.1, +1.0, +0.5; ties keep row order
    assert losses == [1]  # -0.1 is the only loss


def test_components_by_task():
    assert reward_components.task_rules("chat", generic=True) == [
        "text/bleu",
        "text/bleu2",
        "text/distinct",
        "text/length",
    ]
    assert "crs/recommendation" in reward_components.task_rules("crs", generic=True)
    doc = reward_components.task_rules("docstring", generic=True)
    assert "docstring/param_coverage" in doc and "crs/recommendation" not in doc
    assert is_reference_based("text/bleu2") and is_reference_based("docstring/bleu")
    assert not is_reference_based("text/distinct")


def test_length_component_uses_the_params_band():
    replies = ["one two three", "a " * 12]
    params = Params(reward={"length_band": [3, 10]})
    length = reward_components.build(["text/length"], params)["text/length"]
    assert length(replies, ROWS[:2]) == [1.0, 0.8]


class FakeRewardModel:
    """Scores a reply by its word count: enough to check the plumbing."""

    def score(self, prompts, replies, batch_size=32):
        assert len(prompts) == len(replies)
        return [float(len(r.split())) for r in replies]


def _score(task, rows, texts, judge=None):
    n = len(rows)
    refs = [scoring.reference_of(r) for r in rows]
    outputs = {
        "sft": metrics.ModelOutputs(list(texts), np.ones(n, dtype=bool), [1] * n, [True] * n),
        "ppo": metrics.ModelOutputs(list(texts), np.ones(n, dtype=bool), [1] * n, [True] * n),
        "ref": metrics.ModelOutputs(
            [r or "" for r in refs], np.array([r is not None for r in refs])
        ),
    }
    scoring.score_outputs(
        outputs,
        rows,
        components=reward_components.build(
            reward_components.task_rules(task, generic=True),
            Params(task={"name": task}, reward={"length_band": [1, 5]}),
        ),
        task=task,
        reward_model=FakeRewardModel(),
        bert_scorer=None,
        judge=judge,
    )
    return outputs


def test_score_outputs_crs():
    rows = [
        {
            "id": "r1",
            "prompt": [{"role": "user", "content": "any sci-fi?"}],
            "reference": "Try Alien (1979)",
            "meta": {"movies": {"1": "Alien (1979)"}, "gold_movies": ["1"]},
        },
        {
            "id": "r2",
            "prompt": [{"role": "user", "content": "a comedy?"}],
            "reference": None,
            "meta": {"movies": {"2": "Airplane! (1980)", "3": "Clue (1985)"}, "gold_movies": ["3"]},
        },
    ]
    out = _score("crs", rows, ["You should watch Alien (1979).", "Watch Airplane! or Zorg (2011)"])
    sft = out["sft"]
    assert sft.task_flags["rec_hit"].tolist() == [1.0, 0.0]
    assert sft.task_flags["rec"].tolist() == [1.0, 1.0]
    assert sft.task_flags["hallucinated"].tolist() == [0.0, 1.0]  # no film "Zorg (2011)"
    assert sft.scores["crs/empathy"].tolist() == [0.0, 0.0]  # no feeling words
    assert sft.scores["crs/recommendation"][0] == 1.0
    assert sft.scores[REWARD_MODEL].tolist() == [5.0, 5.0]
    assert math.isnan(sft.scores["text/bleu"][1])  # no reference on row 2
    ref = out["ref"]
    assert "text/bleu" not in ref.scores and math.isnan(ref.scores[REWARD_MODEL][1])
    assert ref.task_flags["rec_hit"][0] == 1.0
    refs = [scoring.reference_of(r) for r in rows]
    m = metrics.build_metrics(out, refs, {"ppo": np.zeros(2)}, **SFT_PPO, n_boot=100, seed=0)
    assert (
        m["sft/rec_hit_rate"] == 0.5 and m["sft/rec_rate"] == 1.0 and m["ref/rec_hit_rate"] == 1.0
    )
    assert m["sft/hallucinated_rate"] == 0.5 and m["ref/hallucinated_rate"] == 0.0
    assert m["sft/reward/crs/empathy"] == 0.0 and 0.0 <= m["sft/bleu1"] <= 100.0
    assert 0.0 < m["sft/distinct1"] <= 1.0 and 0.0 < m["sft/distinct2"] <= 1.0


def test_score_outputs_docstring_and_judge():
    rows = [
        {
            "id": "f",
            "prompt": [{"role": "user", "content": "document this"}],
            "reference": "Add a and b.",
            "meta": {"code": "def add(a, b):\n    return a + b\n"},
        }
    ]
    calls = []

    def judge(rows_, replies):
        calls.append(list(replies))
        return [{"accuracy": 4.0, "completeness": None, "overall": None} for _ in replies]

    out = _score("docstring", rows, ["Return the sum of a and b."], judge=judge)
    sft = out["sft"]
    assert sft.scores["docstring/param_coverage"][0] == 1.0
    assert sft.scores["docstring/return_mention"][0] == 1.0
    assert out["ref"].scores["docstring/return_mention"][0] == 0.0  # "Add a and b." says no return
    assert "docstring/bleu" not in out["ref"].scores
    assert len(calls) == 2  # SFT and PPO, never the references
    assert sft.judge["accuracy"][0] == 4.0 and np.isnan(sft.judge["completeness"][0])
    m = metrics.summarise_model(sft, [scoring.reference_of(r) for r in rows], n_boot=100, seed=0)
    assert m["judge/accuracy"] == 4.0 and "judge/completeness" not in m
    assert m["judge_failures"] == 1
    # no function here carries examples: the doctest pass rate has no replies to count
    assert sft.task_metrics == {} and "doctest/pass_rate" not in m


def test_score_outputs_docstring_doctest_pass_rate():
    row = {
        "id": "f",
        "prompt": [{"role": "user", "content": "document this"}],
        "reference": "Add a and b.\n\n>>> add(1, 2)\n3",
        "meta": {"code": "def add(a, b):\n    return a + b\n"},
    }
    out = _score("docstring", [row], [">>> add(2, 2)\n5"])
    assert out["sft"].task_metrics == {
        "doctest/replies": 1.0,
        "doctest/with_example": 1.0,
        "doctest/pass_rate": 0.0,
    }
    assert out["ref"].task_metrics["doctest/pass_rate"] == 1.0  # the reference's example passes
    m = metrics.build_metrics(out, ["x"], {"ppo": np.zeros(1)}, **SFT_PPO, n_boot=100, seed=0)
    assert m["sft/doctest/with_example"] == 1.0 and m["ref/doctest/pass_rate"] == 1.0
    assert m["delta/ppo/doctest/pass_rate"] == 0.0


def test_finish_puts_the_verdict_in_the_metrics():
    # 4 toy prompts: no test could be significant; only the KL gate is under test here
    gates = EvalGates(max_kl=0.5, max_rm_pvalue=1.0, max_eos_rate_drop=1.0)
    cfg = EvalConfig(policies=["ppo"], n_boot=100, gates=gates)
    result = pipeline.finish("chat", ROWS, {"sft": SFT, "ppo": PPO}, KL, cfg)
    assert result.metrics["verdict/ppo/decision"] == "reconsider"
    assert result.metrics["verdict/ppo/failed_gates"] == "kl"
    assert result.gains == {"ppo": [0, 2, 3]} and result.losses == {"ppo": [1]}


def test_eval_config_rejects_bad_model_lists():
    assert EvalConfig().models == ["sft", "ppo", "dpo"]
    for bad in ({"policies": []}, {"policies": ["ppo", "ppo"]}, {"policies": ["sft"]},
                {"policies": ["ref"]}, {"baseline": "delta"}, {"policies": ["a/b"]}):  # fmt: skip
        with pytest.raises(ValueError, match="eval"):
            EvalConfig(**bad)


def test_task_flags_and_task_scores_get_paired_cis_and_tests():
    # crs: per reply a gold hit (0/1) and an empathy score; PPO hits on 3 prompts SFT missed
    sft = _model(SFT.texts, SFT.scores[REWARD_MODEL], **{"crs/empathy": np.full(4, 0.5)})
    sft.task_flags["rec_hit"] = np.array([0.0, 0.0, 0.0, 1.0])
    ppo = _model(PPO.texts, PPO.scores[REWARD_MODEL], **{"crs/empathy": np.full(4, 0.75)})
    ppo.task_flags["rec_hit"] = np.array([1.0, 1.0, 1.0, np.nan])  # one reply not flagged
    m = metrics.build_metrics({"sft": sft, "ppo": ppo}, REFS, KL, **SFT_PPO, n_boot=500, seed=0)
    assert m["sft/rec_hit_rate"] == 0.25 and m["ppo/rec_hit_rate"] == 1.0
    # paired on the 3 prompts both have: every difference is +1
    assert m["delta/ppo/rec_hit_rate_ci_lo"] == 1.0 and m["delta/ppo/rec_hit_rate_ci_hi"] == 1.0
    p = stats.paired_test([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])["wilcoxon_p"]
    assert m["delta/ppo/rec_hit_rate_pvalue_wilcoxon"] == p == pytest.approx(0.25)
    assert m["delta/ppo/reward/crs/empathy"] == pytest.approx(0.25)
    assert m["delta/ppo/reward/crs/empathy_ci_lo"] == pytest.approx(0.25)
    assert m["delta/ppo/reward/crs/empathy_ci_hi"] == pytest.approx(0.25)
    assert m["delta/ppo/reward/crs/empathy_pvalue_wilcoxon"] == pytest.approx(0.125)
    # the reward model and the generic text components keep their own keys only
    assert metrics.task_scores(ppo, sft) == ["crs/empathy"]
