"""train_ppo through the real CLI on tiny random models (after train_critic, so the critic is
the one the stage before writes): curves and metrics, models/ppo, checkpoints and --resume."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.io import write_jsonl

from .ppo_helpers import (  # noqa: F401
    TINY_PPO,
    copy_policy,
    make_reward_model,
    one_thread,
    scored_rows,
    write_prompts,
)

PARAMS = {
    # the separate layout (a trained critic adapter); the shared trunk has its own test below
    "critic": {
        "epochs": 1,
        "shared_trunk": False,
        "batch_size": 8,
        "max_length": 64,
        "lora": {"r": 4, "alpha": 8},
    },
    "reward": {
        "weights": {"reward_model": 1.0, "text/length": 0.5},
        "weights_end": {"reward_model": 1.0, "text/distinct": 0.5},
        "length_band": [2, 8],
    },
    "ppo": {**TINY_PPO, "save_every": 2},
}
ISSUE_KEYS = [
    "objective/score",
    "reward/reward_model",
    "reward/text/length",
    "reward/text/distinct",
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "policy/approxkl",
    "policy/clipfrac",
    "loss/policy",
    "loss/value",
    "val/clipfrac",
    "val/explained_variance",
    "gen/length",
    "gen/eos_rate",
    "time/rollout_s",
    "time/update_s",
]


def _invoke(*args):
    return CliRunner().invoke(app, [*args, "--params", "params.yaml"])


@pytest.fixture
def workspace(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_policy(tiny_models["policy"], tmp_path / "models/sft")
    make_reward_model(tiny_models["encoder"], tmp_path / "models/reward")
    write_prompts(tmp_path, 6)
    write_jsonl(tmp_path / "data/scored/train.jsonl", scored_rows(8))
    write_jsonl(tmp_path / "data/scored/valid.jsonl", scored_rows(4))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return tmp_path


def _three_clean_steps(workspace):
    """metrics/train_ppo.json of a finished run: every issue key, 3 steps, no skipped update."""
    metrics = json.loads((workspace / "metrics/full/train_ppo.json").read_text())
    for key in ISSUE_KEYS:
        assert key in metrics, key
    assert metrics["train/steps"] == 3 and metrics["train/skipped_updates"] == 0
    return metrics


@pytest.mark.usefixtures("one_thread")
def test_train_ppo_runs_saves_and_resumes(workspace):
    assert _invoke("train_critic").exit_code == 0
    result = _invoke("train_ppo")
    assert result.exit_code == 0, result.output

    metrics = _three_clean_steps(workspace)
    assert metrics["weight/text/distinct"] == 0.5 and metrics["weight/text/length"] == 0.0
    curves = workspace / "plots/train_ppo/plots/metrics"
    for key in ISSUE_KEYS:
        rows = (curves / f"{key}.tsv").read_text().splitlines()
        assert len(rows) == 4, key  # header + 3 steps

    # models/ppo is a plain causal LM that generates
    out = workspace / "models/ppo"
    assert json.loads((out / "provenance.json").read_text())["stage"] == "train_ppo"
    assert not (out / "adapter_config.json").exists()
    tok = models.load_tokenizer(out)
    lm = models.load_causal_lm(out)
    batch = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert lm.generate(**batch, max_new_tokens=3, do_sample=False).shape[1] > 0

    ckpts = sorted(p.name for p in (workspace / "checkpoints/train_ppo").iterdir())
    assert ckpts == ["step-000002", "step-000003"]
    for name in (
        "policy/adapter_model.safetensors",
        "critic/value_head.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
    ):
        assert (workspace / "checkpoints/train_ppo/step-000003" / name).is_file(), name

    # A plain re-run continues the finished checkpoint: the same model, no step re-run.
    weights = (out / "model.safetensors").read_bytes()
    result = _invoke("train_ppo")
    assert result.exit_code == 0, result.output
    assert "resuming train_ppo at step 3/3" in result.output
    assert (out / "model.safetensors").read_bytes() == weights
    assert len((curves / "objective/score.tsv").read_text().splitlines()) == 4

    # With a weight schedule (reward.weights_end) ppo.steps sets every step's weights, so more
    # steps is a different run, not this one continued (growing ppo.steps without a schedule:
    # tests/faults/test_ppo_checkpoints.py).
    params = {**PARAMS, "ppo": {**PARAMS["ppo"], "steps": 4}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = _invoke("train_ppo", "--resume")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: checkpoints/train_ppo: cannot resume: ppo.steps changed (checkpoint 3 vs now 4); "
        "run without --resume to start over, or delete the directory"
    )


def test_missing_critic_fails_in_one_line(workspace):
    result = _invoke("train_ppo")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "models/critic" in lines[0] and "train_critic" in lines[0]


@pytest.mark.usefixtures("one_thread")
def test_critic_free_estimator_needs_no_critic_and_logs_no_critic_metric(workspace):
    """grpo through the CLI without train_critic: no models/critic read, no critic adapter or
    value head saved, no val/* or loss/value key; a re-run resumes the finished checkpoint."""
    params = {**PARAMS, "ppo": {**PARAMS["ppo"], "advantage": "grpo", "num_generations": 2}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    assert not (workspace / "models/critic").exists()
    result = _invoke("train_ppo")
    assert result.exit_code == 0, result.output

    metrics = json.loads((workspace / "metrics/full/train_ppo.json").read_text())
    assert metrics["train/steps"] == 3 and metrics["train/skipped_updates"] == 0
    for key in ISSUE_KEYS:
        if key.startswith("val/") or key == "loss/value":
            assert key not in metrics, key
        else:
            assert key in metrics, key
    assert not [k for k in metrics if k.startswith("val/") or k == "loss/value"]
    curves = workspace / "plots/train_ppo/plots/metrics"
    assert not (curves / "val").exists() and not (curves / "loss/value.tsv").exists()
    assert (workspace / "models/ppo/model.safetensors").is_file()
    ckpt = workspace / "checkpoints/train_ppo/step-000003"
    assert (ckpt / "policy/adapter_model.safetensors").is_file()
    assert not (ckpt / "critic").exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["fingerprint"]["ppo.advantage"] == "grpo"
    assert state["fingerprint"]["models/critic"] is None  # not an input of this run

    weights = (workspace / "models/ppo/model.safetensors").read_bytes()
    result = _invoke("train_ppo", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming train_ppo at step 3/3" in result.output
    assert (workspace / "models/ppo/model.safetensors").read_bytes() == weights


@pytest.mark.usefixtures("one_thread")
def test_shared_trunk_after_a_least_squares_critic(workspace):
    """critic.shared_trunk through the CLI: train_critic with epochs 0 (the ridge head on the
    frozen base) writes what train_ppo loads; the checkpoints hold the value head alone, the
    metrics the same critic keys; a checkpoint of one critic layout never resumes the other."""
    critic = {**PARAMS["critic"], "epochs": 0, "shared_trunk": True}
    (workspace / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "critic": critic}))
    result = _invoke("train_critic")
    assert result.exit_code == 0, result.output
    result = _invoke("train_ppo")
    assert result.exit_code == 0, result.output

    _three_clean_steps(workspace)
    ckpt = workspace / "checkpoints/train_ppo/step-000003"
    assert (ckpt / "critic/value_head.safetensors").is_file()
    assert not (ckpt / "critic/adapter").exists()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["fingerprint"]["critic.shared_trunk"] is True
    assert json.loads((workspace / "models/ppo/provenance.json").read_text())["critic"]

    critic["shared_trunk"] = False
    (workspace / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "critic": critic}))
    result = _invoke("train_ppo", "--resume")
    assert result.exit_code == 2
    assert "cannot resume: critic.shared_trunk changed (checkpoint true vs now false)" in (
        result.output
    )
