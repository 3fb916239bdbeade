"""train_critic through the real CLI on a tiny random policy: loss falls, weights change,
the critic is saved in the format train_ppo loads, and bad inputs fail in one line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.config import LoraConfig
from rlhf_lab.io import write_jsonl
from rlhf_lab.ppo.model import load_policy_critic, new_critic

from .ppo_helpers import (  # noqa: F401
    TINY_LORA,
    copy_policy,
    make_reward_model,
    one_thread,
    scored_rows,
)

PARAMS = {
    "critic": {
        "target": "judge",
        "epochs": 4,
        "shared_trunk": False,  # a trained critic adapter is the separate layout
        "batch_size": 8,
        "max_length": 64,
        "lr": 5e-3,
        "warmup_ratio": 0.0,
        "lora": {"r": 4, "alpha": 8},
    }
}


@pytest.fixture
def workspace(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_policy(tiny_models["policy"], tmp_path / "models/sft")
    write_jsonl(tmp_path / "data/scored/train.jsonl", scored_rows(32, null_every=8))
    write_jsonl(tmp_path / "data/scored/valid.jsonl", scored_rows(12))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return tmp_path


@pytest.mark.usefixtures("one_thread")
def test_train_critic_learns_and_saves_what_ppo_loads(workspace):
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    out = workspace / "models/critic"
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "value_head.safetensors",
        "critic.json",
        "provenance.json",
    ):
        assert (out / name).is_file(), name
    info = json.loads((out / "critic.json").read_text())
    assert info["format"] == 1 and info["score_std"] > 0
    metrics = json.loads((workspace / "metrics/full/train_critic.json").read_text())
    for key in (
        "valid/mse",
        "valid/pearson",
        "valid/spearman",
        "valid/untrained/mse",
        "valid/untrained/pearson",
        "valid/untrained/spearman",
        "train/loss",
    ):
        assert key in metrics, key
    assert metrics["train/skipped_rows"] == 4 and metrics["train/replies"] == 56
    # loss falls: epoch means, and the held-out MSE against the untrained critic
    assert metrics["train/loss"] < 0.8 * metrics["train/loss_first_epoch"], metrics
    assert metrics["valid/mse"] < metrics["valid/untrained/mse"], metrics
    curve = (workspace / "plots/train_critic/plots/metrics/train/loss.tsv").read_text()
    assert len(curve.splitlines()) == 1 + metrics["train/steps"]

    # parameters changed: LoRA B left 0, the value head left its (seeded) init
    adapter = load_file(out / "adapter/adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    torch.manual_seed(0)
    init = new_critic(workspace / "models/sft", LoraConfig(r=4, alpha=8))
    head = load_file(out / "value_head.safetensors")
    assert not torch.equal(head["weight"], init.value_head.linear.weight.detach())

    # ...and PPO loads it as its critic
    model = load_policy_critic(workspace / "models/sft", out, TINY_LORA, temperature=0.7)
    assert torch.equal(model.value_head.linear.weight.detach(), head["weight"])


def test_all_null_scores_fail_in_one_line(workspace):
    write_jsonl(workspace / "data/scored/train.jsonl", scored_rows(6, null_every=1))
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no row has judge scores" in lines[0], result.output
    assert not (workspace / "models/critic").exists()


@pytest.mark.usefixtures("one_thread")
def test_reward_model_target_regresses_on_the_rm_scores(workspace, tiny_models):
    """critic.target reward_model: every reply is scored by models/reward (the rows' judge
    scores are ignored, null ones included), and the critic learns those targets."""
    from rlhf_lab.reward_scorer import RewardModel
    from rlhf_lab.training.critic import candidate_replies

    make_reward_model(tiny_models["encoder"], workspace / "models/reward")
    params = {"critic": {**PARAMS["critic"], "target": "reward_model"}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "metrics/full/train_critic.json").read_text())
    rows = [json.loads(line) for line in (workspace / "data/scored/train.jsonl").open()]
    replies = candidate_replies(rows)
    assert metrics["critic/target"] == "reward_model"
    assert metrics["train/replies"] == len(replies) == 64 and metrics["train/skipped_rows"] == 0
    rm = RewardModel(workspace / "models/reward")
    raw = rm.score([p for p, _ in replies], [r for _, r in replies])
    assert metrics["score/mean"] == pytest.approx(raw.mean().item(), abs=1e-5)
    assert metrics["valid/mse"] < metrics["valid/untrained/mse"], metrics


def test_reward_model_target_without_a_reward_model_is_one_line(workspace):
    params = {"critic": {**PARAMS["critic"], "target": "reward_model"}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "models/reward" in lines[0], result.output


@pytest.mark.usefixtures("one_thread")
def test_ppo_score_target_is_the_clipped_composite_in_ppo_units(workspace, tiny_models):
    """critic.target ppo_score (the default): each reply's target is PPO's step-0 composite
    (reward model + length band here), clipped to ±ppo.score_clip and not z-scored, since PPO
    adds the values to its rewards as they are; the head starts from the least-squares fit."""
    from rlhf_lab.reward_scorer import RewardModel
    from rlhf_lab.tasks.text import length_reward
    from rlhf_lab.training.critic import candidate_replies

    make_reward_model(tiny_models["encoder"], workspace / "models/reward")
    params = {
        "critic": {**PARAMS["critic"], "target": "ppo_score", "epochs": 1},
        "reward": {"weights": {"reward_model": 1.0, "text/length": 0.5}, "length_band": [1, 3]},
        "ppo": {"score_clip": 0.8},
    }
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "metrics/full/train_critic.json").read_text())
    rows = [json.loads(line) for line in (workspace / "data/scored/train.jsonl").open()]
    replies = candidate_replies(rows)
    rm = RewardModel(workspace / "models/reward")
    by_hand = rm.score([p for p, _ in replies], [r for _, r in replies]) + 0.5 * torch.tensor(
        length_reward(1, 3)([r for _, r in replies], [{"prompt": p} for p, _ in replies])
    )
    by_hand = by_hand.clamp(-0.8, 0.8)
    assert metrics["critic/target"] == "ppo_score" and metrics["train/replies"] == 64
    assert metrics["score/mean"] == pytest.approx(by_hand.mean().item(), abs=1e-5)
    info = json.loads((workspace / "models/critic/critic.json").read_text())
    assert (info["score_mean"], info["score_std"], info["target"]) == (0.0, 1.0, "ppo_score")
    # the least-squares head already beats the untrained one on held-out replies
    assert 0.0 < metrics["head/r2"] <= 1.0
    assert metrics["valid/least_squares/mse"] < metrics["valid/untrained/mse"], metrics


@pytest.mark.usefixtures("one_thread")
def test_zero_epochs_is_the_least_squares_head_alone(workspace):
    """critic.epochs 0 (the default): the warm start is the fitted head on the frozen SFT
    features; the saved critic scores valid exactly as the fit did, and no training step ran."""
    params = {"critic": {**PARAMS["critic"], "epochs": 0}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["train_critic", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workspace / "metrics/full/train_critic.json").read_text())
    assert metrics["train/steps"] == 0 and metrics["train/loss"] is None
    for key in ("mse", "pearson"):
        assert metrics[f"valid/{key}"] == metrics[f"valid/least_squares/{key}"]
    assert metrics["valid/mse"] < metrics["valid/untrained/mse"]
    assert (workspace / "models/critic/critic.json").is_file()


def test_zero_epochs_with_a_random_head_is_rejected():
    from pydantic import ValidationError

    from rlhf_lab.config import CriticConfig

    with pytest.raises(ValidationError, match="untrained critic"):
        CriticConfig(epochs=0, head_init="random")
