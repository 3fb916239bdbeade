"""evaluate through the real CLI on tiny random models: metrics, report, samples and plots."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import parse_params
from rlhf_lab.reward_scorer import save_reward_stats
from rlhf_lab.stages.evaluate import _judge_factory
from rlhf_lab.testing import build_tiny_policy

CHATS = [
    ("hello how are you doing today", "i am fine thanks and you"),
    ("what is your favorite movie", "i really like science fiction films like alien"),
    ("thank you so much", None),
    ("i feel sick today", "sorry to hear that, i hope you feel better soon"),
    ("tell me about the matrix", "you should watch the matrix | it is great"),
    ("any plans for the weekend", None),
    ("not evaluated: beyond eval.num_prompts", "x"),
]
NUM_PROMPTS = 6


def fake_judge(rows, replies):
    """A judge stand-in (the real one needs a chat model): longer replies rate higher."""
    out = []
    for reply in replies:
        helpful = float(min(5, 1 + len(reply.split())))
        out.append({"helpfulness": helpful, "harmlessness": 5.0, "overall": (helpful + 5) / 2})
    return out


@pytest.fixture(scope="module")
def workspace(tiny_models, tmp_path_factory):
    """A repo-like folder: models/{sft,ppo,dpo,reward,base/encoder}, data/grounded/test.jsonl."""
    root = tmp_path_factory.mktemp("evaluate")
    shutil.copytree(tiny_models["policy"], root / "models/sft")
    build_tiny_policy(root / "models/ppo", seed=1)  # same tokenizer, different weights
    models.write_provenance(root / "models/ppo", params={"ppo": {"kl_coef": 0.05, "steps": 4}})
    build_tiny_policy(root / "models/dpo", seed=2)
    models.write_provenance(root / "models/dpo", params={"dpo": {"beta": 0.1}})
    shutil.copytree(tiny_models["encoder"], root / "models/base/encoder")
    reward = models.load_sequence_classifier(tiny_models["encoder"])
    tok = models.load_tokenizer(tiny_models["encoder"], padding_side="right")
    models.save_model(reward, tok, root / "models/reward")
    # A random head gives scores ~1e-3 apart; a small std spreads them like a trained RM.
    save_reward_stats(root / "models/reward", mean=0.0, std=1e-3, max_length=64)
    prompts = root / "data/grounded/test.jsonl"
    prompts.parent.mkdir(parents=True)
    rows = [
        {"id": f"t{i}", "prompt": [{"role": "user", "content": q}], "reference": r, "meta": {}}
        for i, (q, r) in enumerate(CHATS)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "eval": {
                    "num_prompts": NUM_PROMPTS,
                    "batch_size": 4,
                    "max_new_tokens": 8,
                    "bertscore_layers": 2,
                    "n_boot": 200,
                    "judge": True,
                }
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def evaluated(workspace):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        mp.setattr("rlhf_lab.stages.evaluate._judge_factory", lambda params: fake_judge)
        result = CliRunner().invoke(app, ["evaluate", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    return workspace


def _metrics(root):
    return json.loads((root / "metrics/full/evaluate.json").read_text())


def test_metrics_keys_and_ranges(evaluated):
    m = _metrics(evaluated)
    assert m["eval/num_prompts"] == NUM_PROMPTS and m["eval/num_references"] == 4
    for who in ("sft", "ppo", "dpo"):
        for key in ("bleu", "bleu1", "bleu2", "bleu4"):
            assert 0.0 <= m[f"{who}/{key}"] <= 100.0
        for key in ("rougeL", "distinct1", "distinct2", "eos_rate"):
            assert 0.0 <= m[f"{who}/{key}"] <= 1.0
        for key in ("rm_score", "bertscore_f1"):
            assert m[f"{who}/{key}_ci_lo"] <= m[f"{who}/{key}"] <= m[f"{who}/{key}_ci_hi"]
        assert 0.0 < m[f"{who}/bertscore_f1"] <= 1.0
        assert 0 < m[f"{who}/tokens"] <= 8 and m[f"{who}/length"] >= 0
        for comp in ("text/bleu", "text/bleu2", "text/distinct", "text/length"):
            assert 0.0 <= m[f"{who}/reward/{comp}"] <= 1.0
        assert 2.0 <= m[f"{who}/judge/helpfulness"] <= 5.0
        assert m[f"{who}/judge/harmlessness"] == 5.0 and m[f"{who}/judge_failures"] == 0
    for p in ("ppo", "dpo"):
        d = f"delta/{p}"
        assert m[f"{d}/rm_score"] == pytest.approx(m[f"{p}/rm_score"] - m["sft/rm_score"])
        assert m[f"{d}/distinct2"] == pytest.approx(m[f"{p}/distinct2"] - m["sft/distinct2"])
        for prefix in ("rm", "judge"):
            lo, rate, hi = (m[f"{d}/win_rate_{prefix}{s}"] for s in ("_ci_lo", "", "_ci_hi"))
            assert 0.0 <= lo <= rate <= hi <= 1.0
            assert 0.0 <= m[f"{d}/{prefix}_pvalue_wilcoxon"] <= 1.0
        assert 0.0 < m[f"{d}/win_rate_rm_lc"] < 1.0
        # different weights, so the KL estimate is not zero (k1 per prompt can be negative)
        assert math.isfinite(m[f"{d}/kl"]) and m[f"{d}/kl"] != 0.0
    assert m["delta/ppo/kl"] != m["delta/dpo/kl"]  # each on its own samples
    assert "ref/rm_score" in m and "ref/reward/text/length" in m
    assert "ref/reward/text/bleu" not in m and "ref/bleu" not in m
    assert not [k for k in m if k.startswith(("delta/sft", "verdict/sft"))]


def test_verdict_in_metrics_and_report(evaluated):
    m = _metrics(evaluated)
    md = (evaluated / "reports/report.md").read_text()
    verdicts = md.split("## Verdicts")[1].split("## Headline")[0]
    for p in ("ppo", "dpo"):
        decision = m[f"verdict/{p}/decision"]
        assert decision in ("proceed", "adjust", "reconsider")
        failed = [g for g in m[f"verdict/{p}/failed_gates"].split(",") if g]
        for gate in ("reward_gain", "kl", "bleu_drop", "distinct2_drop"):
            assert m[f"verdict/{p}/pass/{gate}"] == int(gate not in failed)
        line = next(x for x in verdicts.splitlines() if x.startswith(f"- **{p.upper()}: "))
        assert f"**{p.upper()}: {decision.upper()}**" in line
        for gate in failed:
            assert f"`{gate}`" in line  # named right after the verdict
    assert "| `ppo.kl_coef` | 0.050 |" in md  # from models/ppo/provenance.json
    assert "| `dpo.beta` | 0.100 |" in md  # from models/dpo/provenance.json
    assert "judge overall" in md


def test_samples_and_plots(evaluated):
    lines = (evaluated / "reports/samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["id"] for s in samples] == [f"t{i}" for i in range(NUM_PROMPTS)]
    first = samples[0]
    assert first["reference"] == CHATS[0][1]
    keys = {"sft_reply", "ppo_reply", "dpo_reply", "sft_scores", "ppo_scores", "dpo_scores"}
    assert keys | {"reference_scores", "kl_ppo_sft", "kl_dpo_sft"} <= set(first)
    assert {"reward_model", "text/bleu", "bertscore_f1", "judge/overall"} <= set(
        first["dpo_scores"]
    )
    assert samples[2]["reference"] is None and "text/bleu" not in samples[2]["sft_scores"]
    plots = evaluated / "plots/evaluate"
    for name in ("reward_hist.png", "component_hists.png", "component_delta.png"):
        assert (plots / name).stat().st_size > 1000
    dists = sorted(p.name for p in (plots / "dist").iterdir())
    assert dists == [
        "reward_model.csv",
        "text_bleu.csv",
        "text_bleu2.csv",
        "text_distinct.csv",
        "text_length.csv",
    ]
    header = (plots / "dist/reward_model.csv").read_text().splitlines()[0]
    assert header == "score,sft,ppo,dpo,ref"
    assert sorted(p.name for p in (plots / "components").iterdir()) == ["dpo.csv", "ppo.csv"]
    assert (plots / "rm_pairs.csv").read_text().startswith("id,sft,ppo,dpo\n")
    # nothing half-written is left behind
    assert not [p for p in evaluated.glob("*/.*tmp*")]


def test_missing_policy_dir_is_one_line(workspace, tmp_path, monkeypatch):
    # a policy listed in eval.policies without a model dir is an error, never a silent skip
    (tmp_path / "data").mkdir()
    shutil.copytree(workspace / "data/grounded", tmp_path / "data/grounded")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/sft").symlink_to(workspace / "models/sft")
    (tmp_path / "models/ppo").symlink_to(workspace / "models/ppo")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("eval:\n  num_prompts: 2\n")
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert "models/dpo: no model for eval.policies entry 'dpo'" in result.output
    assert not (tmp_path / "metrics").exists()


def test_missing_prompts_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("eval:\n  num_prompts: 2\n")
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert "data/grounded/test.jsonl: prompt file not found" in result.output


def test_judge_factory_scores_with_the_configured_judge(tiny_models, tmp_path):
    # the real judge (local backend) with the tiny policy as judge model
    params = parse_params(
        {
            "judge": {
                "model": str(tiny_models["policy"]),
                "max_length": 128,
                "cache_dir": str(tmp_path / "judge-cache"),
            }
        }
    )
    score = _judge_factory(params)
    row = {"id": "x", "prompt": [{"role": "user", "content": "hello"}], "reference": None}
    ratings = score([row, row], ["hi there", "fine thanks"])
    assert [set(r) for r in ratings] == [{"helpfulness", "harmlessness", "overall"}] * 2
    for r in ratings:
        assert 1.0 <= r["overall"] <= 5.0
        assert r["overall"] == pytest.approx((r["helpfulness"] + r["harmlessness"]) / 2)


FUNCTIONS = [
    ("def add(a, b):\n    return a + b", "Add a and b.\n\n>>> add(1, 2)\n3"),
    ("def first(items):\n    if not items:\n        raise ValueError\n    return items[0]", None),
    ("def greet(name):\n    print(name)", "Print the name."),
]


@pytest.fixture(scope="module")
def docstring_evaluated(workspace, tmp_path_factory):
    """The same models evaluated on the docstring task: the Phase-1 metrics and verdicts."""
    root = tmp_path_factory.mktemp("evaluate_docstring")
    shutil.copytree(workspace / "models", root / "models")
    rows = [
        {
            "id": f"f{i}",
            "prompt": [{"role": "user", "content": f"Write a docstring.\n\n{code}"}],
            "reference": ref,
            "meta": {"code": code},
        }
        for i, (code, ref) in enumerate(FUNCTIONS)
    ]
    prompts = root / "data/grounded/test.jsonl"
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {
        "task": {"name": "docstring"},
        "eval": {"batch_size": 4, "max_new_tokens": 8, "bertscore_layers": 2, "n_boot": 200},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(app, ["evaluate", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    return root


def test_docstring_phase1_metrics_verdicts_and_report(docstring_evaluated):
    m = _metrics(docstring_evaluated)
    for who in ("sft", "ppo", "dpo"):
        assert 0.0 <= m[f"{who}/reward/total_with_reference"] <= 1.0
        assert 0.0 <= m[f"{who}/reward/total"] <= 1.0
        assert 0.0 <= m[f"{who}/meteor"] <= 1.0
        # one function carries an example (add); random tiny models write none
        assert m[f"{who}/doctest/replies"] == 1 and m[f"{who}/doctest/with_example"] == 0.0
        assert f"{who}/doctest/pass_rate" not in m
    # the references: no BLEU total, and the one reference example passes in the sandbox
    assert "ref/reward/total_with_reference" not in m and 0.0 < m["ref/reward/total"] <= 1.0
    assert m["ref/doctest/with_example"] == 1.0 and m["ref/doctest/pass_rate"] == 1.0
    for p in ("ppo", "dpo"):
        assert math.isfinite(m[f"delta/{p}/kl_per_token"])
        assert m[f"verdict/{p}/rule"] == "protocol"
        assert m[f"verdict/{p}/decision"] in ("proceed", "adjust", "reconsider")
        by = m[f"verdict/{p}/decided_by"]
        assert by == "all" or m[f"verdict/{p}/pass/{by}"] == 0
    report = (docstring_evaluated / "reports/report.md").read_text()
    assert "## Phase 1" in report and "weakest components" in report
    assert "largest PPO gains over SFT (rule reward)" in report
