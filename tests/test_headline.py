"""Headline metrics: the small ``metrics/<stage>.json`` DVC tabulates, the full set beside it."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from rlhf_lab import headline
from rlhf_lab.cli import app

from .conftest import REPO

EVALUATE = {
    "sft/rm_score": 0.1,
    "ppo/rm_score": 0.5,
    "ppo/rm_score_ci_lo": 0.3,
    "ppo/bleu": 0.7,
    "ppo/bleu4": 0.7,
    "ppo/tokens": 15.0,
    "ppo/reward/text/length": 0.6,
    "ppo/reward/doctest": 0.25,
    "ppo/doctest/pass_rate": 0.5,
    "delta/ppo/rm_score": 0.4,
    "delta/ppo/win_rate_rm": 0.77,
    "delta/ppo/win_rate_rm_ci_lo": 0.66,
    "delta/ppo/win_rate_rm_lc": 0.76,
    "delta/ppo/rm_pvalue_wilcoxon": 2e-6,
    "delta/ppo/rm_pvalue_ttest": 3e-6,
    "delta/ppo/kl": 1.2,
    "verdict/ppo/decision": "proceed",
    "verdict/ppo/pass/kl": 1,
    "eval/num_prompts": 50,
}


def test_headline_keeps_exactly_the_named_keys():
    assert headline.headline("evaluate", EVALUATE) == {
        "sft/rm_score": 0.1,
        "ppo/rm_score": 0.5,
        "ppo/bleu4": 0.7,
        "ppo/tokens": 15.0,
        "ppo/doctest/pass_rate": 0.5,
        "delta/ppo/win_rate_rm": 0.77,
        "delta/ppo/win_rate_rm_lc": 0.76,
        "delta/ppo/rm_pvalue_wilcoxon": 2e-6,
        "delta/ppo/kl": 1.2,
        "verdict/ppo/decision": "proceed",
    }
    # a stage without a rule keeps everything
    assert headline.headline("some_new_stage", {"a": 1, "b/c": 2}) == {"a": 1, "b/c": 2}


def test_write_metrics_writes_headline_and_full(tmp_path):
    target = tmp_path / "metrics/evaluate.json"
    headline.write_metrics(target, EVALUATE)
    full = tmp_path / "metrics/full/evaluate.json"
    assert headline.full_path(target) == full
    assert json.loads(full.read_text()) == EVALUATE
    assert json.loads(target.read_text()) == headline.headline("evaluate", EVALUATE)
    assert headline.read_metrics(target) == EVALUATE


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_with_metrics_has_a_headline_and_a_full_output():
    for name, stage in _stages().items():
        metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
        if not metrics:
            continue
        assert metrics == [f"metrics/{name}.json"], name
        assert name in headline.HEADLINE, f"{name}: add its headline keys to HEADLINE"
        outs = {next(iter(o)): o[next(iter(o))] for o in stage["outs"] if isinstance(o, dict)}
        assert outs.get(f"metrics/full/{name}.json") == {"cache": False}, name


def test_committed_headlines_are_the_committed_full_metrics_split():
    """The committed run's files agree with the split rule (they came from one real run)."""
    for name, stage in _stages().items():
        if "metrics" not in stage:
            continue
        full = json.loads((REPO / f"metrics/full/{name}.json").read_text())
        shown = json.loads((REPO / f"metrics/{name}.json").read_text())
        assert shown == headline.headline(name, full), name
        assert len(shown) <= 25, name


def test_compare_reads_the_full_metrics(tmp_path, monkeypatch):
    """A number only the full file has (``sft/bleu``-like diagnostics; here ``tokens``) still
    reaches compare's table."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    row = {
        "rev": "abcdef1234",
        "name": "e1",
        "data": {
            "params": {"params.yaml": {"data": {"eval": {"baseline": "sft", "policies": ["ppo"]}}}},
            "metrics": {"metrics/evaluate.json": {"data": {"ppo/rm_score": 0.5}}},
        },
    }
    full = {"ppo/rm_score": 0.5, "ppo/tokens": 13.0, "sft/tokens": 11.0, "sft/rm_score": 0.1}
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_exp_show", lambda all_commits: [row])
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_samples", lambda exp: [])
    monkeypatch.setattr("rlhf_lab.tools.compare.dvc_full_metrics", lambda exp: full)
    out = CliRunner().invoke(app, ["compare", "--all", "--out", "cmp.json"])
    assert out.exit_code == 0, out.output
    arms = {a["arm"]: a for a in json.loads((tmp_path / "cmp.json").read_text())["arms"]}
    assert arms["ppo"]["metrics"]["tokens"]["mean"] == 13.0
    assert arms["sft"]["metrics"]["rm_score"]["mean"] == 0.1
