"""PPO must learn: a synthetic reward on a tiny model rises well above its start, KL finite.

The reward is the fraction of the reply's tokens that are whole-word tokens (``Ġ`` + letters,
44 of the tiny vocabulary's 400; ~8% of a random reply), counted on the decoded reply
re-tokenised, since every real component sees text. Test-only choices that make 12 steps
enough on a random 2-layer model, all fixtures rather than trainer changes:

- the policy adapter also covers ``lm_head``: a random model's residual stream is dominated by
  the current token's embedding, so adapters on the blocks alone barely move its outputs;
- the critic's value head starts at 0, so the first advantages are returns, not a random
  critic's noise (what train_critic's warm start is for in real runs);
- a small fixed β: the −β·KL penalty must not swamp a reward that lives in [0, 1].

Measured on seeds 0-3: the last three steps average 0.47-0.98, from 0.05-0.10 at the start.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lab.config import LoraConfig, PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import load_policy_critic
from rlhf_lab.ppo.trainer import PpoTrainer

from .ppo_helpers import copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

BLOCKS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.usefixtures("one_thread")
def test_ppo_raises_a_synthetic_reward(tiny_models, tmp_path):
    sft = copy_policy(tiny_models["policy"], tmp_path / "sft")
    critic = make_critic(sft, tmp_path / "critic", zero_head=True)
    cfg = PpoConfig(
        steps=12,
        batch_size=16,
        minibatches=2,
        epochs=4,
        lr=2e-2,
        max_new_tokens=12,
        temperature=1.0,
        missing_eos_penalty=None,
        adaptive_kl=False,
        kl_coef=0.001,
        vf_coef=0.5,
        lora=LoraConfig(r=8, alpha=16, target_modules=[*BLOCKS, "lm_head"]),
        save_every=100,
    )
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(sft, critic, cfg.lora, cfg.temperature)
    tok = model.tok
    words = {
        i
        for i in range(len(tok))
        if (t := tok.convert_ids_to_tokens(i)).startswith("Ġ") and t[1:].isalpha()
    }

    def word_fraction(replies, rows):
        out = []
        for reply in replies:
            ids = tok(reply, add_special_tokens=False)["input_ids"]
            out.append(sum(i in words for i in ids) / max(len(ids), 1))
        return out

    scorer = CompositeScorer({"words": word_fraction}, {"words": 1.0}, total_steps=cfg.steps)
    trainer = PpoTrainer(model, prompt_rows(8), scorer, cfg, progress=False)
    metrics = trainer.train()

    curve = [round(h["reward/words"], 3) for h in trainer.history]
    start, end = curve[0], sum(curve[-3:]) / 3  # step 0 is before any update
    assert start < 0.15, curve
    assert end > max(0.35, 4 * start), curve
    assert trainer.history[0]["objective/kl"] == 0.0  # policy == reference at step 0
    assert all(math.isfinite(h["objective/kl"]) for h in trainer.history), curve
    assert metrics["train/skipped_updates"] == 0
