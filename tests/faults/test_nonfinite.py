"""nan/inf injected into PPO (a reward component, the KL) and into the supervised loops (a loss):
the bad replies or steps are dropped and counted, training goes on, nan never reaches saved
weights, and a run that keeps producing them aborts with one line."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import rlhf_lab.training.critic as critic_mod
import rlhf_lab.training.dpo as dpo_mod
import rlhf_lab.training.reward_model as reward_mod
import rlhf_lab.training.sft as sft_mod
from rlhf_lab.config import CriticConfig, DpoConfig, PpoConfig, RewardTrainConfig, SftConfig
from rlhf_lab.errors import NonFiniteLossError
from rlhf_lab.ppo import advantages
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer
from rlhf_lab.training.critic import ScoredReply, train_critic
from rlhf_lab.training.dpo import train_dpo_model
from rlhf_lab.training.reward_model import PreferencePair, train_reward_model
from rlhf_lab.training.sft import SftExample, train_sft_model

from ..ppo_helpers import (  # noqa: F401
    BAD,
    GOOD,
    TINY_LORA,
    copy_policy,
    make_critic,
    one_thread,
    prompt_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-nan")
    sft = copy_policy(tiny_models["policy"], root / "sft", embed_scale=4.0)
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _ppo(dirs, component, **over):
    cfg = PpoConfig(
        **{
            "steps": 3,
            "batch_size": 4,
            "minibatches": 2,
            "epochs": 1,
            "max_new_tokens": 6,
            "lora": TINY_LORA,
            "lr": 1e-3,
            "kl_target": 0.5,
            "kl_horizon": 100,
            **over,
        }
    )
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(dirs["sft"], dirs["critic"], cfg.lora, cfg.temperature)
    scorer = CompositeScorer({"len": component}, {"len": 1.0}, total_steps=cfg.steps)
    return PpoTrainer(model, prompt_rows(6), scorer, cfg, progress=False)


def test_ppo_drops_a_non_finite_reply_instead_of_the_batch(ppo_dirs):
    calls = {"n": 0}

    def one_bad_reply(replies, rows):
        # nan in one reply at step 0, +inf (which score_clip would hide) at step 1, none at 2
        calls["n"] += 1
        values = [len(r) / 20 for r in replies]
        bad = {1: math.nan, 2: math.inf}.get(calls["n"])
        if bad is not None:
            values[calls["n"]] = bad
        return values

    trainer = _ppo(ppo_dirs, one_bad_reply)
    metrics = trainer.train()
    assert [h["objective/nonfinite_replies"] for h in trainer.history] == [1.0, 1.0, 0.0]
    assert metrics["train/nonfinite_replies"] == 2
    # 3 finite replies in minibatches of 2 → 2 updates; nothing skipped, nothing nan
    assert [h["train/updates"] for h in trainer.history] == [2.0, 2.0, 2.0]
    assert metrics["train/skipped_updates"] == 0
    for h in trainer.history:
        for key in ("objective/score", "loss/policy", "loss/value", "objective/kl_coef"):
            assert math.isfinite(h[key]), (key, h)
        assert math.isfinite(h["reward/len"])  # logged over the kept replies only
    assert all(torch.isfinite(p).all() for p in trainer.model.trainable_parameters())


def test_ppo_kl_controller_ignores_a_non_finite_kl(ppo_dirs, monkeypatch):
    real = advantages.shape_rewards

    def inf_kl(*args, **kwargs):
        rewards, kl = real(*args, **kwargs)
        return rewards, kl + math.inf  # the controller's input only; the rewards stay finite

    monkeypatch.setattr(advantages, "shape_rewards", inf_kl)
    trainer = _ppo(ppo_dirs, lambda replies, rows: [len(r) / 20 for r in replies], steps=2)
    metrics = trainer.train()
    assert [h["objective/nonfinite_kl"] for h in trainer.history] == [1.0, 1.0]
    assert metrics["train/nonfinite_kl"] == 2
    assert trainer.kl_ctl.value == PpoConfig().kl_coef  # β never moved, never nan
    assert metrics["train/skipped_updates"] == 0


# ---------------------------------------------------------------------------------------------
# supervised loops: a nan loss at one training step, then at every step
# ---------------------------------------------------------------------------------------------


def _nan_at(real, which):
    """``real`` with its first output made nan on the training calls listed in ``which``
    (``"all"``: every one); evaluation (no grad) is left alone."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return out
        calls["n"] += 1
        if which == "all" or calls["n"] in which:
            first = out[0] if isinstance(out, tuple) else out
            first = first * math.nan
            return (first, *out[1:]) if isinstance(out, tuple) else first
        return out

    return wrapped


def _finite_safetensors(directory):
    files = sorted(directory.glob("*.safetensors"))
    assert files
    for f in files:
        for name, t in load_file(f).items():
            assert torch.isfinite(t).all(), (f.name, name)


def _sft(tiny_models, out_dir, **over):
    examples = [SftExample(r["prompt"], r["reference"]) for r in prompt_rows(8)]
    cfg = SftConfig(
        **{"epochs": 2, "batch_size": 4, "max_length": 48, "lr": 1e-3, "lora": TINY_LORA, **over}
    )
    return train_sft_model(tiny_models["policy"], examples, examples[:2], cfg, out_dir=out_dir)


def _reward(tiny_models, out_dir, **over):
    pairs = [
        PreferencePair(r["prompt"], GOOD[i % 2], BAD[i % 2]) for i, r in enumerate(prompt_rows(8))
    ]
    cfg = RewardTrainConfig(**{"epochs": 2, "batch_size": 4, "max_length": 32, **over})
    return train_reward_model(
        tiny_models["encoder"], pairs, {"valid": pairs[:2]}, cfg, out_dir=out_dir
    )


def _critic(tiny_models, out_dir, **over):
    replies = [
        ScoredReply(r["prompt"], (GOOD + BAD)[i % 4], float(i % 4))
        for i, r in enumerate(prompt_rows(8))
    ]
    cfg = CriticConfig(
        # epochs > 0 train the critic's own adapter: the separate layout
        **{"epochs": 2, "shared_trunk": False, "batch_size": 4, "max_length": 48, "lora": TINY_LORA}
        | over
    )
    return train_critic(tiny_models["policy"], replies, replies[:2], cfg, out_dir=out_dir)


def _dpo(tiny_models, out_dir, **over):
    pairs = [
        PreferencePair(r["prompt"], GOOD[i % 2], BAD[i % 2]) for i, r in enumerate(prompt_rows(8))
    ]
    cfg = DpoConfig(
        **{"epochs": 2, "batch_size": 4, "max_length": 48, "lr": 1e-3, "lora": TINY_LORA, **over}
    )
    return train_dpo_model(tiny_models["policy"], pairs, pairs[:2], cfg, out_dir=out_dir)


LOOPS = {
    # stage: (module attribute holding the loss, runner, limit key); 2 epochs x 2 steps each
    "train_sft": (sft_mod, "batch_nll", _sft, "sft.max_bad_steps"),
    "train_reward": (reward_mod, "bradley_terry_loss", _reward, "reward.train.max_bad_steps"),
    "train_critic": (critic_mod, "per_reply_mse", _critic, "critic.max_bad_steps"),
    "train_dpo": (dpo_mod, "pair_logps", _dpo, "dpo.max_bad_steps"),
}


@pytest.mark.parametrize("stage", list(LOOPS))
def test_supervised_loop_skips_a_nan_step_and_saves_finite_weights(
    stage, tiny_models, tmp_path, monkeypatch
):
    module, attr, run, _ = LOOPS[stage]
    monkeypatch.setattr(module, attr, _nan_at(getattr(module, attr), {2}))
    outcome = run(tiny_models, tmp_path / "out")
    assert outcome.metrics["train/skipped_nonfinite"] == 1
    assert outcome.metrics["train/steps"] == 4  # batches; the optimiser stepped on 3
    assert [h["step"] for h in outcome.history] == [1, 3, 4]
    assert all(math.isfinite(h["train/loss"]) for h in outcome.history)
    _finite_safetensors(tmp_path / "out")


@pytest.mark.parametrize("stage", list(LOOPS))
def test_supervised_loop_aborts_in_one_line_and_saves_nothing(
    stage, tiny_models, tmp_path, monkeypatch
):
    module, attr, run, key = LOOPS[stage]
    monkeypatch.setattr(module, attr, _nan_at(getattr(module, attr), "all"))
    with pytest.raises(NonFiniteLossError) as err:
        run(tiny_models, tmp_path / "out", max_bad_steps=2)
    assert str(err.value).startswith(
        f"{stage}: 2 updates skipped for a non-finite loss, gradient or score ({key}=2), "
        "last at step 2; lower "
    )
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
