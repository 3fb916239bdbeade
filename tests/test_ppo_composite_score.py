"""The composite PPO score: weights, schedule, components, and the reward model's normalisation."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab import reward_components
from rlhf_lab.config import JudgeConfig, Params
from rlhf_lab.errors import ConfigError
from rlhf_lab.ppo.composite_score import (
    CompositeScorer,
    active_components,
    build_scorer,
    scheduled_weights,
)

from .ppo_helpers import make_reward_model, prompt_rows


def test_schedule_is_constant_without_an_end():
    assert scheduled_weights({"a": 1.0}, None, 7, 10) == {"a": 1.0}


def test_schedule_is_linear_from_start_to_end():
    start, end = {"a": 1.0, "b": 0.0}, {"a": 0.0, "c": 2.0}
    assert scheduled_weights(start, end, 0, 5) == {"a": 1.0, "b": 0.0, "c": 0.0}
    mid = scheduled_weights(start, end, 2, 5)
    assert mid == pytest.approx({"a": 0.5, "b": 0.0, "c": 1.0})
    assert scheduled_weights(start, end, 4, 5) == {"a": 0.0, "b": 0.0, "c": 2.0}
    assert scheduled_weights(start, end, 99, 5)["c"] == 2.0  # clamped past the end
    assert scheduled_weights(start, end, 0, 1) == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert active_components(start, end) == ["a", "c"]


def test_composite_is_the_weighted_sum_and_skips_zero_weights():
    def never(replies, rows):
        raise AssertionError("a zero-weight component must not be computed")

    scorer = CompositeScorer(
        {
            "one": lambda r, rows: [1.0] * len(r),
            "len": lambda r, rows: [len(x) for x in r],
            "zero": never,
        },
        weights={"one": 2.0, "len": 0.5, "zero": 0.0},
    )
    out = scorer(["ab", "abcd"], [{}, {}], step=0)
    assert out.total.tolist() == [3.0, 4.0]
    assert out.means() == {"reward/one": 1.0, "reward/len": 3.0}
    assert out.weights == {"one": 2.0, "len": 0.5}


def test_scheduled_composite_changes_weight_over_steps():
    scorer = CompositeScorer(
        {"a": lambda r, rows: [1.0] * len(r), "b": lambda r, rows: [10.0] * len(r)},
        weights={"a": 1.0},
        weights_end={"b": 1.0},
        total_steps=3,
    )
    assert [scorer([""], [{}], s).total.item() for s in range(3)] == [1.0, 5.5, 10.0]


def test_unknown_component_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown component 'text/bleuu'.*text/bleu"):
        reward_components.build(["text/bleuu"], Params())
    with pytest.raises(ConfigError, match="every weight is 0"):
        CompositeScorer({}, {"a": 0.0})


def test_rule_components_and_length_band_from_params():
    params = Params(
        reward={
            "weights": {"text/length": 1.0, "text/bleu": 1.0, "judge": 0.0},
            "length_band": [2, 3],
        }
    )
    # judge has weight 0: never built (its module is not even needed)
    scorer = build_scorer(params, total_steps=1)
    assert set(scorer.components) == {"text/length", "text/bleu"}
    rows = prompt_rows(2)
    replies = ["a b", rows[1]["reference"]]
    out = scorer(replies, rows)
    # "a b": 2 words, inside [2, 3]; the reference itself: BLEU 1, 8 words → 1 - (8-3)/3 < 0 → 0
    assert out.components["text/length"].tolist() == [1.0, 0.0]
    assert out.components["text/bleu"][1].item() == pytest.approx(1.0)
    assert out.components["text/bleu"][0].item() < 0.5


def test_judge_is_built_only_when_weighted(monkeypatch):
    built = []

    def fake_judge(cfg, task, catalogue):
        built.append(task)
        return lambda replies, rows: [0.25] * len(replies)

    monkeypatch.setattr(reward_components, "_judge_component", fake_judge)
    build_scorer(Params(reward={"weights": {"text/distinct": 1.0, "judge": 0.0}}), 1)
    assert built == []
    params = Params(task={"name": "crs"}, reward={"weights": {"judge": 2.0}})
    scorer = build_scorer(params, 1)
    assert built == ["crs"]
    assert scorer(["x"], prompt_rows(1)).total.tolist() == [0.5]
    with pytest.raises(ConfigError, match=r"judge\.backend is 'none'"):
        reward_components.build(["judge"], Params(judge=JudgeConfig(backend="none")))


def test_reward_model_component_is_normalised(tiny_models, tmp_path):
    from rlhf_lab.reward_scorer import RewardModel

    rm_dir = make_reward_model(tiny_models["encoder"], tmp_path / "reward")
    rows = prompt_rows(3)
    replies = ["thank you", "no", "you should watch the matrix"]
    params = Params(reward={"weights": {"reward_model": 1.0}})
    scorer = build_scorer(params, 1, reward_model_dir=rm_dir)
    got = scorer(replies, rows).components["reward_model"]
    raw = RewardModel(rm_dir).score([r["prompt"] for r in rows], replies, normalize=False)
    torch.testing.assert_close(got, (raw - 0.1) / 0.5)
    with pytest.raises(ConfigError, match="train_reward"):
        reward_components.build(["reward_model"], Params(), reward_model_dir=tmp_path / "nothing")
