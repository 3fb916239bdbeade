"""params.yaml loading: strict types, unknown keys, one-line errors naming the key."""

from __future__ import annotations

import pytest
import yaml

from rlhf_lab.config import CriticLayout, Params, documented_yaml, load_params, parse_params
from rlhf_lab.errors import ConfigError

from .conftest import REPO


def test_committed_params_are_the_code_defaults_byte_for_byte():
    """One set of defaults: ``rlhf-lab params`` prints the committed params.yaml exactly.

    Tests, presets and the tiny profile start from ``Params()``; if params.yaml could differ,
    they would start from values the real run never uses.
    """
    from typer.testing import CliRunner

    from rlhf_lab.cli import app

    result = CliRunner().invoke(app, ["params"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (REPO / "params.yaml").read_text(encoding="utf-8")
    assert load_params(REPO / "params.yaml") == Params()
    assert Params().ppo.minibatch_size == Params().ppo.batch_size // Params().ppo.minibatches


def test_documented_yaml_round_trips():
    assert parse_params(yaml.safe_load(documented_yaml())) == Params()
    assert "# PPO" in documented_yaml() or "# Policy ratio clip range" in documented_yaml()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ppo": {"clipp": 0.1}}, "params.yaml: ppo.clipp: unknown key"),
        ({"ppo": {"clip": "wide"}}, "params.yaml: ppo.clip: expected a number, got 'wide'"),
        ({"sft": {"epochs": 1.5}}, "params.yaml: sft.epochs: expected an integer, got 1.5"),
        ({"bogus": {}}, "params.yaml: bogus: unknown key"),
        ({"sft": {"lora": {"r": "8"}}}, "params.yaml: sft.lora.r: expected an integer, got '8'"),
        ({"task": {"name": "poetry"}}, "params.yaml: task.name:"),
        ({"ppo": {"batch_size": 10, "minibatches": 4}}, "must be divisible by ppo.minibatches"),
        (
            {"ppo": {"batch_size": 3, "num_generations": 2, "minibatches": 4}},
            "ppo.batch_size * ppo.num_generations (6) must be divisible by ppo.minibatches (4)",
        ),
        (
            {"ppo": {"advantage": "grpo"}},
            "params.yaml: ppo.num_generations must be at least 2 for ppo.advantage: grpo",
        ),
        ({"ppo": {"advantage": "rloo", "num_generations": 1}}, "2 for ppo.advantage: rloo"),
        (
            {"ppo": {"advantage": "reinforce_pp", "critic_warmup_steps": 2}},
            "ppo.critic_warmup_steps applies only to ppo.advantage: gae",
        ),
        (
            {"critic": {"shared_trunk": True, "epochs": 2}},
            "params.yaml: critic.shared_trunk needs critic.epochs 0 (got 2)",
        ),
        (
            {"critic": {"shared_trunk": True, "head_init": "random"}},
            "critic.epochs 0 with critic.head_init random would hand PPO an untrained critic",
        ),
        ({"critic": {"shared_trunk": "yes"}}, "critic.shared_trunk: expected true or false"),
        ({"ppo": {"advantage": "a2c"}}, "params.yaml: ppo.advantage:"),
        ({"ppo": {"loss_agg": "sum"}}, "params.yaml: ppo.loss_agg:"),
        ({"data": {"valid_fraction": 0.6, "test_fraction": 0.5}}, "must be below 1"),
        ({"judge": {"base_url": "http://u:pw@h/v1"}}, "base_url must not hold credentials"),
        ({"judge": {"base_url": "h:8000/v1"}}, "base_url must be an http:// or https:// URL"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_group_estimators_size_the_rollout_by_num_generations():
    ppo = parse_params({"ppo": {"advantage": "rloo", "batch_size": 4, "num_generations": 3}}).ppo
    assert (ppo.rollout_size, ppo.minibatch_size, ppo.critic_free) == (12, 6, True)
    assert (Params().ppo.advantage, Params().ppo.critic_free) == ("gae", False)


def test_shared_trunk_is_the_default_and_valid_with_the_least_squares_head():
    critic = Params().critic
    assert (critic.shared_trunk, critic.epochs, critic.head_init) == (True, 0, "least_squares")
    assert Params().critic_layout is CriticLayout.SHARED_TRUNK
    # a trained critic adapter is the separate layout: the error says which key to change
    with pytest.raises(ConfigError, match=r"set critic\.shared_trunk false"):
        parse_params({"critic": {"epochs": 2}})
    separate = parse_params({"critic": {"epochs": 2, "shared_trunk": False}})
    assert separate.critic_layout is CriticLayout.SEPARATE
    # a critic-free estimator ignores it (no critic is loaded), so it is not an error there
    assert parse_params(
        {"critic": {"shared_trunk": True}, "ppo": {"advantage": "rloo", "num_generations": 2}}
    ).critic.shared_trunk


def test_frozen():
    params = Params()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        params.ppo.clip = 0.3  # type: ignore[misc]


def test_invalid_yaml_names_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  clip: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_params(bad)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
