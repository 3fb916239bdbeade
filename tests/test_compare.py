"""rlhf-lab compare: arms × seeds across experiments, on synthetic `dvc exp show` rows."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.errors import DataError
from rlhf_lab.evaluation import arms as cmp
from rlhf_lab.evaluation import stats
from rlhf_lab.tools import compare as compare_tool

PROMPTS = ["p0", "p1", "p2", "p3", "p4", "p5"]


def _run(arm, seed, rm, prompt_rm, model=None, **values):
    return cmp.ArmRun(
        arm=arm,
        model=model or arm.split(":")[0],
        seed=seed,
        experiment=f"{arm}-{seed}",
        values={"rm_score": rm, **values},
        prompt_rm=dict(zip(PROMPTS, prompt_rm, strict=True)),
    )


def test_aggregate_means_cis_and_paired_tests():
    runs = [
        _run("ppo:gae", 0, 0.2, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], kl=1.0),
        _run("ppo:gae", 1, 0.4, [0.2, 1.2, 2.2, 3.2, 4.2, 5.2], kl=3.0),
        _run("ppo:gae", 2, 0.6, [0.4, 1.4, 2.4, 3.4, 4.4, 5.4], kl=2.0),
        _run("dpo", 0, 0.1, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], bertscore_f1=0.43129158369640375),
        # the same DPO run seen again in another experiment: counted once, also when a
        # metric moved by float noise (BERTScore batches replies with the other policies')
        _run("dpo", 0, 0.1, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], bertscore_f1=0.4312915847489181),
    ]
    result = cmp.aggregate(runs)
    arms = {a["arm"]: a for a in result["arms"]}
    assert list(arms) == ["ppo:gae", "dpo"]
    assert arms["ppo:gae"]["seeds"] == [0, 1, 2] and arms["dpo"]["seeds"] == [0]
    rm = arms["ppo:gae"]["metrics"]["rm_score"]
    # mean 0.4, s = 0.2, n = 3: half-width t_{0.975, 2} * 0.2 / sqrt(3)
    assert rm["mean"] == pytest.approx(0.4) and rm["n"] == 3
    assert rm["ci_hi"] - rm["mean"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)
    assert arms["ppo:gae"]["metrics"]["kl"]["mean"] == pytest.approx(2.0)
    assert arms["dpo"]["metrics"]["rm_score"] == {"mean": 0.1, "ci_lo": None, "ci_hi": None, "n": 1}
    assert "kl" not in arms["dpo"]["metrics"]  # not faked
    (test,) = result["tests"]
    # per prompt, PPO's mean over seeds is its seed-1 score: 0.2, 1.2, ..., 5.2
    ppo_mean = np.array([0.2, 1.2, 2.2, 3.2, 4.2, 5.2])
    dpo = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    assert test["a"] == "ppo:gae" and test["b"] == "dpo" and test["n_prompts"] == 6
    assert test["mean_diff"] == pytest.approx(float((ppo_mean - dpo).mean()))
    assert test["win_rate"] == pytest.approx(5 / 6)
    assert test["wilcoxon_p"] == stats.paired_test(ppo_mean, dpo)["wilcoxon_p"]
    assert result["warnings"] == []


def test_aggregate_tests_only_shared_prompts_and_flags_clashing_seeds():
    a = _run("ppo:gae", 0, 0.2, [1.0] * 6)
    b = _run("ppo:gae", 0, 0.5, [2.0] * 6)  # same seed, different results: another param
    c = _run("ppo:grpo", 0, 0.3, [0.0] * 6)
    c.prompt_rm = {"p0": 0.0, "p1": 0.0, "zz": 9.0}
    result = cmp.aggregate([a, b, c])
    arms = {x["arm"]: x for x in result["arms"]}
    assert arms["ppo:gae"]["seeds"] == [0, 0]
    assert result["warnings"] and "ppo:gae: seed 0" in result["warnings"][0]
    (test,) = result["tests"]
    assert test["n_prompts"] == 2 and test["mean_diff"] == pytest.approx(1.5)


def _show_row(name, rev, params, metrics, experiments=None):
    return {
        "rev": rev,
        "name": name,
        "data": {
            "rev": rev,
            "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/evaluate.json": {"data": metrics}},
        },
        "error": None,
        "experiments": experiments,
    }


def _metrics(ppo_rm, dpo_rm=0.1):
    return {
        "sft/rm_score": 0.0,
        "sft/tokens": 10.0,
        "ppo/rm_score": ppo_rm,
        "ppo/tokens": 12.0,
        "dpo/rm_score": dpo_rm,
        "delta/ppo/win_rate_rm": 0.6,
        "delta/ppo/win_rate_rm_lc": 0.55,
        "delta/ppo/kl": 1.5,
        "delta/dpo/win_rate_rm": 0.52,
        "verdict/ppo/decision": "proceed",
    }


def _params(seed, advantage="gae"):
    return {
        "ppo": {"seed": seed, "advantage": advantage},
        "eval": {"policies": ["ppo", "dpo"], "baseline": "sft"},
    }


def _exp(name, rev, seed, rm, advantage="gae"):
    return {"revs": [_show_row(name, rev, _params(seed, advantage), _metrics(rm))], "name": name}


SHOW = [
    _show_row(None, "workspace", _params(2, "grpo"), _metrics(0.9)),  # as DVC writes it
    {
        **_show_row("main", "a" * 40, _params(0), {}),
        "experiments": [
            _exp("s0", "b" * 40, 0, 0.2),
            _exp("s1", "c" * 40, 1, 0.4),
            _exp("g0", "d" * 40, 0, 0.7, "grpo"),
        ],
    },
]


def _samples(exp):
    # per-prompt RM scores as evaluate writes them; PPO's depend on the experiment
    shift = {"s0": 0.0, "s1": 0.2, "g0": 1.0, "workspace": 2.0}[exp.name]
    return [
        {
            "id": p,
            "sft_scores": {"reward_model": 0.0},
            "ppo_scores": {"reward_model": i + shift},
            "dpo_scores": {"reward_model": 0.5},
        }
        for i, p in enumerate(PROMPTS)
    ]


def test_parse_exp_show_and_select():
    found = cmp.parse_exp_show(SHOW)
    # "main" has no evaluate metrics: left out
    assert [e.name for e in found] == ["workspace", "s0", "s1", "g0"]
    s1 = found[2]
    assert s1.rev == "c" * 40 and s1.params["ppo.seed"] == 1
    assert s1.params["eval.policies"] == ["ppo", "dpo"]
    assert [e.name for e in cmp.select(found, ["g0", "b" * 7])] == ["g0", "s0"]
    with pytest.raises(Exception, match=r"no evaluated experiment 'nope'.*s0, s1, g0"):
        cmp.select(found, ["nope"])


def test_arm_runs_from_one_experiment():
    exp = cmp.parse_exp_show(SHOW)[3]  # g0: ppo.advantage = grpo
    runs = {r.arm: r for r in cmp.arm_runs(exp, _samples(exp))}
    assert list(runs) == ["sft", "ppo:grpo", "dpo"]
    ppo = runs["ppo:grpo"]
    assert ppo.seed == 0 and ppo.model == "ppo" and ppo.experiment == "g0"
    assert ppo.values == {
        "rm_score": 0.7,
        "win_rate_rm": 0.6,
        "win_rate_rm_lc": 0.55,
        "kl": 1.5,
        "tokens": 12.0,
    }
    assert ppo.prompt_rm["p3"] == 4.0
    assert runs["sft"].seed is None  # no sft.seed param


@pytest.fixture
def exp_show_calls():
    """The ``all_commits`` flag of each ``dvc exp show`` call :func:`fake_dvc` answered."""
    return []


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch, exp_show_calls):
    """The command's DVC reads answered from the fixtures above, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    shown = exp_show_calls
    monkeypatch.setattr(
        "rlhf_lab.tools.compare.dvc_exp_show", lambda all_commits: shown.append(all_commits) or SHOW
    )
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_samples", _samples)
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_full_metrics", lambda exp: exp.metrics)
    return tmp_path


def test_cli_compare_all_writes_the_table(fake_dvc):
    out = CliRunner().invoke(app, ["compare", "--all", "--out", "cmp.json"], terminal_width=200)
    assert out.exit_code == 0, out.output
    result = json.loads((fake_dvc / "cmp.json").read_text())
    arms = {a["arm"]: a for a in result["arms"]}
    # the workspace is left out with --all
    assert list(arms) == ["sft", "ppo:gae", "dpo", "ppo:grpo"]
    assert arms["ppo:gae"]["seeds"] == [0, 1] and arms["ppo:grpo"]["seeds"] == [0]
    assert arms["ppo:gae"]["metrics"]["rm_score"]["mean"] == pytest.approx(0.3)
    # no dpo.seed param, identical results in every experiment: one run, no CI
    assert arms["dpo"]["seeds"] == [None] and arms["dpo"]["experiments"] == ["s0"]
    assert arms["dpo"]["metrics"]["rm_score"] == {"mean": 0.1, "ci_lo": None, "ci_hi": None, "n": 1}
    tests = {(t["a"], t["b"]): t for t in result["tests"]}
    assert len(tests) == 6  # every pair of the 4 arms
    # per prompt: ppo:gae averages shifts 0 and 0.2 -> i + 0.1; ppo:grpo is i + 1
    assert tests[("ppo:gae", "ppo:grpo")]["mean_diff"] == pytest.approx(-0.9)
    assert tests[("ppo:gae", "ppo:grpo")]["win_rate"] == 0.0
    assert "ppo:gae" in out.output and "Wilcoxon" in out.output
    vs = {v["arm"]: v for v in result["vs_baseline"]}
    assert list(vs) == ["ppo:gae", "dpo", "ppo:grpo"]
    # RM score 0.2 and 0.4 over SFT's 0.0 in their own experiments: +0.3 across 2 seeds
    gain = vs["ppo:gae"]["seeds"]["rm_score"]
    assert gain["n"] == 2 and gain["mean_diff"] == pytest.approx(0.3)
    assert vs["ppo:gae"]["seeds"]["tokens"]["mean_diff"] == pytest.approx(2.0)
    # per prompt: ppo:gae's i + 0.1 against SFT's 0.0
    assert vs["ppo:gae"]["prompts"]["reward_model"]["mean_diff"] == pytest.approx(2.6)
    assert "each arm − its baseline" in out.output


def test_cli_compare_named_and_errors(fake_dvc, exp_show_calls):
    out = CliRunner().invoke(app, ["compare", "s1", "workspace"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "ppo:grpo" in out.output  # the workspace's params
    out = CliRunner().invoke(app, ["compare", "-A", "s1"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert exp_show_calls == [False, True]
    out = CliRunner().invoke(app, ["compare"])
    assert out.exit_code == 2 and "name the experiments to compare, or pass --all" in out.output
    out = CliRunner().invoke(app, ["compare", "nope"], terminal_width=200)
    assert out.exit_code == 2 and "no evaluated experiment 'nope'" in out.output


def test_dvc_exp_show_reads_every_baseline_that_has_experiments(monkeypatch):
    calls = []
    listed = "main:\n\t5dc7c9c [docstring-gae-s2]\n1af5721:\n\tc9eefaf [docstring-gae-s0]\n"

    def run(cmd, **_):
        calls.append(cmd[3:])  # after `python -m dvc`
        out = listed if cmd[3:5] == ["exp", "list"] else "[]"
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr("rlhf_lab.tools.compare.subprocess.run", run)
    assert compare_tool.dvc_exp_show() == []
    assert calls == [["exp", "show", "--json"]]
    assert compare_tool.dvc_exp_show(all_commits=True) == []
    assert calls[1:] == [
        ["exp", "list", "-A"],
        ["exp", "show", "--json", "--rev", "main", "--rev", "1af5721"],
    ]

    def fail(cmd, **_):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: not a dvc repo\n")

    monkeypatch.setattr("rlhf_lab.tools.compare.subprocess.run", fail)
    with pytest.raises(DataError, match=r"`dvc exp list -A`: ERROR: not a dvc repo"):
        compare_tool.dvc_exp_show(all_commits=True)


def test_phase1_columns_and_verdicts():
    metrics = {
        "sft/rm_score": 0.0,
        "ppo/rm_score": 0.2,
        "ppo/reward/total_with_reference": 0.62,
        "ppo/bleu4": 19.5,
        "ppo/meteor": 0.46,
        "ppo/doctest/pass_rate": 0.5,
        "delta/ppo/kl_per_token": 0.015,
        "verdict/ppo/decision": "proceed",
    }
    params = {"eval": {"baseline": "sft", "policies": ["ppo"]}, "ppo": {"seed": 0}}
    (exp,) = cmp.parse_exp_show([_show_row("d0", "r0", params, metrics)])
    runs = {r.arm: r for r in cmp.arm_runs(exp, [])}
    ppo = runs["ppo"]
    assert ppo.verdict == "proceed" and runs["sft"].verdict is None
    assert ppo.values["reward"] == 0.62 and ppo.values["kl_per_token"] == 0.015
    result = cmp.aggregate(runs.values())
    assert [a["verdicts"] for a in result["arms"]] == [[None], ["proceed"]]
    header, rows = cmp.table_rows(result)
    # only columns some arm has: no BERTScore, ROUGE-L or doctest example rate here
    assert header == ["arm", "seeds", "rm_score", "reward", "bleu4", "meteor", "doctest_pass",
                      "kl_per_token"]  # fmt: skip
    assert rows[1][3] == "0.620 (1 seed)"


def _crs_run(arm, seed, exp, bleu1, hits, baseline="sft"):
    model = arm.split(":")[0]
    return cmp.ArmRun(
        arm=arm,
        model=model,
        seed=seed,
        experiment=exp,
        values={"bleu1": bleu1, "rec_hit_rate": float(np.mean(hits))},
        prompt_rm=dict.fromkeys(PROMPTS, 0.0),
        baseline=None if arm == baseline else baseline,
        prompt_scores={"flag/rec_hit": dict(zip(PROMPTS, hits, strict=True))},
    )


def test_versus_baseline_pairs_seeds_within_experiments_and_prompts_across_them():
    sft_hits = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    runs = []
    for seed, (bleu1, hits) in enumerate(
        [(16.0, [1, 1, 0, 1, 1, 0]), (17.0, [1, 1, 1, 1, 1, 0]), (18.0, [1, 0, 1, 1, 1, 0])]
    ):
        exp = f"crs-gae-s{seed}"
        runs.append(_crs_run("sft", None, exp, 14.0, sft_hits))  # the same SFT every time
        runs.append(_crs_run("ppo:gae", seed, exp, bleu1, [float(h) for h in hits]))
    result = cmp.aggregate(runs)
    (vs,) = result["vs_baseline"]
    assert vs["arm"] == "ppo:gae" and vs["baseline"] == "sft"
    bleu = vs["seeds"]["bleu1"]
    # differences 2, 3, 4: mean 3, s = 1, t_{0.975, 2} = 4.302653
    assert bleu["mean_diff"] == pytest.approx(3.0) and bleu["n"] == 3
    assert bleu["ci_hi"] - 3.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert bleu["ttest_p"] == pytest.approx(
        stats.paired_test([16.0, 17.0, 18.0], [14.0, 14.0, 14.0])["ttest_p"]
    )
    # per prompt, PPO's hits averaged over seeds vs SFT's: +1, +2/3, +2/3, +1, 0, 0
    hit = vs["prompts"]["flag/rec_hit"]
    ppo_mean = np.array([1.0, 2 / 3, 2 / 3, 1.0, 1.0, 0.0])
    assert hit["n_prompts"] == 6
    assert hit["mean_diff"] == pytest.approx(float((ppo_mean - np.array(sft_hits)).mean()))
    assert hit["ci_lo"] <= hit["mean_diff"] <= hit["ci_hi"]
    assert hit["wilcoxon_p"] == stats.paired_test(ppo_mean, sft_hits)["wilcoxon_p"]
    assert vs["prompts"]["reward_model"]["wilcoxon_p"] == 1.0  # identical RM scores
    # the baseline is one run (the same numbers in every experiment), not three seeds
    arms = {a["arm"]: a for a in result["arms"]}
    assert arms["sft"]["metrics"]["bleu1"]["n"] == 1


def test_arm_runs_name_their_baseline_and_keep_every_prompt_score():
    exp = cmp.parse_exp_show(SHOW)[3]
    rows = _samples(exp)
    rows[0]["ppo_scores"]["flag/rec_hit"] = 1.0
    runs = {r.arm: r for r in cmp.arm_runs(exp, rows)}
    assert runs["sft"].baseline is None and runs["ppo:grpo"].baseline == "sft"
    assert runs["ppo:grpo"].prompt_scores["flag/rec_hit"] == {"p0": 1.0}
    assert runs["ppo:grpo"].prompt_scores["reward_model"] == runs["ppo:grpo"].prompt_rm
