"""train_reward: Bradley–Terry math against hand values, batching, a learnable toy preference
set, and the stage through the real CLI on a tiny random encoder."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import RewardTrainConfig
from rlhf_lab.io import write_jsonl
from rlhf_lab.reward_scorer import RewardModel
from rlhf_lab.training.reward_model import (
    PairCollator,
    PreferencePair,
    bradley_terry_loss,
    longer_wins_accuracy,
    mean_margin,
    pairs_from_rows,
    pairwise_accuracy,
    score_batch,
    train_reward_model,
)

# ---------------------------------------------------------------------------------------------
# a toy preference set with a learnable rule: the chosen reply carries positive words, the
# rejected one negative words, with the same number of words, so length says nothing
# ---------------------------------------------------------------------------------------------

POSITIVE = ["great", "lovely", "wonderful", "happy", "glad", "nice", "good", "fun"]
NEGATIVE = ["awful", "terrible", "sad", "bad", "angry", "boring", "ugly", "worse"]
NEUTRAL = ["the", "movie", "was", "really", "quite", "today", "and", "very", "it", "so"]
QUESTIONS = [
    "how was your day",
    "what did you think of the film",
    "tell me about your weekend",
    "how is the weather where you are",
]


def _reply(rng: random.Random, words: list[str]) -> str:
    tokens = rng.sample(NEUTRAL, 3) + rng.sample(words, 2)
    rng.shuffle(tokens)
    return " ".join(tokens)


def toy_rows(n: int, seed: int, split: str = "train") -> list[dict]:
    """Preference rows in the data/scored contract (scores/judge are ignored by the stage)."""
    rng = random.Random(seed)
    return [
        {
            "id": f"{split}-{i}",
            "prompt": [{"role": "user", "content": rng.choice(QUESTIONS)}],
            "chosen": _reply(rng, POSITIVE),
            "rejected": _reply(rng, NEGATIVE),
            "label_source": "human",
            "meta": {},
            "scores": None,
            "judge": {},
        }
        for i in range(n)
    ]


def make_reward_workdir(root: Path, encoder: Path, n_train: int = 128, **train: object) -> Path:
    """A working directory as the stage sees it: data/scored, models/base/encoder, params."""
    write_jsonl(root / "data/scored/train.jsonl", toy_rows(n_train, 0, "train"))
    write_jsonl(root / "data/scored/valid.jsonl", toy_rows(32, 1, "valid"))
    write_jsonl(root / "data/scored/test.jsonl", toy_rows(32, 2, "test"))
    shutil.copytree(encoder, root / "models/base/encoder")
    cfg = {"lr": 3e-3, "epochs": 4, "batch_size": 16, "max_length": 32, "warmup_ratio": 0.0}
    cfg.update(train)
    (root / "params.yaml").write_text(yaml.safe_dump({"reward": {"train": cfg}}))
    return root / "params.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed torch threads run 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# pure math
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_loss_hand_values_and_gradient():
    rc = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    rr = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    loss = bradley_terry_loss(rc, rr)
    # -log σ(d) = log(1 + e^-d) for d = 1, 0, -1
    expected = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(1))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # d/dr_c of -log σ(r_c - r_r), averaged over 3 pairs: -(1 - σ(d)) / 3
    sig = torch.sigmoid(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    assert torch.allclose(rc.grad, -(1 - sig) / 3)


def test_bradley_terry_loss_is_finite_for_huge_margins():
    loss = bradley_terry_loss(torch.tensor([1000.0, -1000.0]), torch.tensor([0.0, 0.0]))
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(500.0)  # (0 + 1000) / 2


def test_pairwise_accuracy_counts_ties_half_and_margin():
    rc = torch.tensor([2.0, 1.0, 0.0, 5.0])
    rr = torch.tensor([1.0, 1.0, 3.0, 5.0])
    assert pairwise_accuracy(rc, rr) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert mean_margin(rc, rr) == pytest.approx((1 + 0 - 3 + 0) / 4)
    assert math.isnan(pairwise_accuracy(torch.zeros(0), torch.zeros(0)))


def test_longer_wins_accuracy():
    assert longer_wins_accuracy(["aaa", "a", "bb"], ["a", "aaa", "cc"]) == pytest.approx(0.5)
    assert longer_wins_accuracy(["long reply"], ["no"]) == 1.0


def test_pairs_from_rows_drops_missing_and_identical():
    rows = [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "a"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": None, "rejected": "b"},
    ]
    pairs, dropped = pairs_from_rows(rows)
    assert dropped == 2
    assert pairs == [PreferencePair([{"role": "user", "content": "q"}], "a", "b")]


def test_collator_keeps_pairs_aligned_and_the_reply_when_truncating(tiny_models):
    tok = models.load_tokenizer(tiny_models["encoder"], padding_side="right")
    long_context = [{"role": "user", "content": " ".join(["old words"] * 50) + " latest"}]
    pairs = [
        PreferencePair(long_context, "great fun", "awful day"),
        PreferencePair([{"role": "user", "content": "hi"}], "nice", "a much longer bad reply"),
    ]
    batch = PairCollator(tok, max_length=16)(pairs)
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    assert batch["chosen_input_ids"].shape[0] == 2
    first = tok.decode(batch["chosen_input_ids"][0], skip_special_tokens=True)
    # the reply and the most recent context survive; the oldest context is cut
    assert first.endswith("latest great fun")
    assert batch["chosen_input_ids"].shape[1] <= 16
    assert tok.decode(batch["rejected_input_ids"][1], skip_special_tokens=True).endswith(
        "a much longer bad reply"
    )
    # score_batch returns one reward per side, in pair order
    model = models.load_sequence_classifier(tiny_models["encoder"], num_labels=1).eval()
    rc, rr = score_batch(model, batch)
    assert rc.shape == rr.shape == (2,)


def test_adamw_with_warmup_groups_and_schedule():
    from rlhf_lab.training.common import adamw_with_warmup

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)  # frozen parameters are left out
    optimizer, scheduler = adamw_with_warmup(model, 1.0, 0.1, total_steps=10, warmup_ratio=0.2)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(4, 4)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 2  # two biases
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # 2 warm-up steps from 0, then linear decay to 0 at step 10
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


# ---------------------------------------------------------------------------------------------
# learning: accuracy must rise far above chance on a learnable rule
# ---------------------------------------------------------------------------------------------


def test_reward_model_learns_a_toy_preference_rule(tiny_models):
    train, _ = pairs_from_rows(toy_rows(128, 0))
    held_out, _ = pairs_from_rows(toy_rows(64, 1, "valid"))
    cfg = RewardTrainConfig(lr=3e-3, epochs=4, batch_size=16, max_length=32, warmup_ratio=0.0)
    outcome = train_reward_model(tiny_models["encoder"], train, {"valid": held_out}, cfg)
    m = outcome.metrics
    # length carries no signal here, so everything above 0.5 is the learned word rule
    assert 0.3 <= m["valid/longer_wins_accuracy"] <= 0.7
    assert m["valid/accuracy"] >= 0.95
    assert m["valid/accuracy_chosen_shorter"] >= 0.95
    assert m["valid/margin"] > 0.5
    losses = [h["train/loss"] for h in outcome.history]
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)  # a fresh head: chance
    assert sum(losses[-4:]) / 4 < 0.4
    assert m["train/steps"] == 4 * 128 // 16


# ---------------------------------------------------------------------------------------------
# the stage through the CLI
# ---------------------------------------------------------------------------------------------


def test_train_reward_stage_smoke(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_reward_workdir(tmp_path, tiny_models["encoder"])
    result = CliRunner().invoke(app, ["train_reward", "--params", str(params)])
    assert result.exit_code == 0, result.output

    metrics = json.loads((tmp_path / "metrics/full/train_reward.json").read_text())
    for split in ("valid", "test"):
        for key in ("accuracy", "margin", "longer_wins_accuracy", "accuracy_chosen_shorter"):
            assert metrics[f"{split}/{key}"] is not None
        assert metrics[f"{split}/accuracy"] >= 0.9
        assert metrics[f"{split}/pairs"] == 32
    assert metrics["data/dropped_train"] == 0

    # dvclive curves where dvc.yaml's plots point, and the loss fell
    loss_tsv = tmp_path / "plots/train_reward/plots/metrics/train/loss.tsv"
    losses = [float(line.split("\t")[-1]) for line in loss_tsv.read_text().splitlines()[1:]]
    assert len(losses) == metrics["train/steps"] == 32
    assert losses[0] > 0.6 and sum(losses[-4:]) / 4 < 0.4

    out = tmp_path / "models/reward"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "train_reward" and prov["role"] == "reward"
    assert prov["params"]["reward"]["train"]["lr"] == 3e-3
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["max_length"] == 32 and stats["std"] > 0

    # parameters changed: the encoder body was trained, not only the new head
    base = models.load_encoder(tmp_path / "models/base/encoder")
    trained = models.load_sequence_classifier(out)
    assert trained.config.num_labels == 1
    w0 = base.encoder.layer[0].attention.self.query.weight
    w1 = trained.base_model.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(w0, w1)

    # RewardModel (what PPO and evaluate use) loads it; normalised training scores are ~N(0, 1)
    rm = RewardModel(out)
    rows = toy_rows(128, 0)
    prompts = [r["prompt"] for r in rows] * 2
    replies = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores = rm.score(prompts, replies)
    assert abs(scores.mean().item()) < 1e-3
    assert scores.std().item() == pytest.approx(1.0, abs=1e-2)
    assert (scores[:128] > scores[128:]).float().mean() > 0.9
    # nothing half-written is left behind
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_missing_scored_data_is_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_reward_workdir(tmp_path, tiny_models["encoder"])
    (tmp_path / "data/scored/valid.jsonl").unlink()
    result = CliRunner().invoke(app, ["train_reward", "--params", str(params)])
    assert result.exit_code == 2
    assert "data/scored/valid.jsonl: not found" in result.output
    assert not (tmp_path / "models/reward").exists()
