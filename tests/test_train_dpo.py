"""train_dpo: the DPO/IPO/hinge losses against hand-computed values, a learning test on a toy
preference rule with a tiny random Llama, and the stage through the real CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import DpoConfig, LoraConfig
from rlhf_lab.io import write_jsonl
from rlhf_lab.training.dpo import (
    PairCollator,
    dpo_loss,
    pair_logps,
    preference_metrics,
    reply_tokens,
    tokenize_pair,
    train_dpo_model,
)
from rlhf_lab.training.reward_model import PreferencePair
from rlhf_lab.training.sft import SftCollator, SftExample, batch_nll, tokenize_example

# A learnable rule: the chosen reply always opens with "thanks", the rejected one never does.
QUESTIONS = [
    "hello how are you doing today",
    "what is your favorite movie",
    "def add(a, b): return a + b",
    "i feel sick today",
    "tell me about star wars",
    "count the positive items",
]
REPLIES = [
    "i am fine and you",
    "you should watch the matrix",
    "returns the sum of the two numbers",
    "sorry to hear that",
    "i really like science fiction films",
    "for each item in the list",
    "raises ValueError if the input is empty",
    "the quick brown fox jumps over the lazy dog",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads (see tests/test_train_sft.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_pairs(replies: list[str], questions: list[str] = QUESTIONS) -> list[PreferencePair]:
    return [
        PreferencePair([{"role": "user", "content": q}], f"thanks {r}", r)
        for q in questions
        for r in replies
    ]


# ---------------------------------------------------------------------------------------------
# pure math
# ---------------------------------------------------------------------------------------------

# π_c = -1, π_r = -3, ref_c = ref_r = -2: log-ratios +1 and -1, Δ = 2; β = 0.1.
LOGPS = [torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-3.0], dtype=torch.float64)]
REF = [torch.tensor([-2.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)]


def test_sigmoid_loss_and_rewards_match_hand_computation():
    losses, rc, rr = dpo_loss(*LOGPS, *REF, beta=0.1, loss_type="sigmoid")
    # -log σ(0.1 * 2) = log(1 + e^-0.2)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-12)
    assert losses.item() == pytest.approx(0.598138869381592, rel=1e-12)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)


def test_ipo_and_hinge_losses_match_hand_computation():
    losses, rc, rr = dpo_loss(*LOGPS, *REF, beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx((2 - 1 / 0.2) ** 2)  # (Δ - 1/(2β))² = 9
    assert losses.item() == pytest.approx(9.0)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.1)
    # TRL's length normalisation: log-ratios per reply token, 1/2 - (-1/4) = 0.75
    lens = torch.tensor([2.0]), torch.tensor([4.0])
    losses, _, _ = dpo_loss(*LOGPS, *REF, beta=0.1, loss_type="ipo", chosen_lengths=lens[0],
                            rejected_lengths=lens[1])  # fmt: skip
    assert losses.item() == pytest.approx((0.75 - 5.0) ** 2)  # 18.0625
    losses, _, _ = dpo_loss(*LOGPS, *REF, beta=0.1, loss_type="hinge")
    assert losses.item() == pytest.approx(0.8)  # relu(1 - 0.1 * 2)
    losses, _, _ = dpo_loss(*LOGPS, *REF, beta=1.0, loss_type="hinge")
    assert losses.item() == 0.0  # margin beyond 1/β: no loss


def test_dpo_loss_matches_trl_formula_on_a_batch():
    """trl 1.16 dpo_trainer.py _compute_loss, restated term by term on random log-probs."""
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-10 * torch.rand(16, generator=gen, dtype=torch.float64) for _ in range(4))
    nc, nr = torch.randint(1, 20, (2, 16), generator=gen).double()
    beta = 0.3
    delta = (pc - rc) - (pr - rr)
    losses, cr, rr_ = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(beta * delta))
    torch.testing.assert_close(cr, beta * (pc - rc))
    torch.testing.assert_close(rr_, beta * (pr - rr))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo", nc, nr)
    ipo_delta = (pc - rc) / nc - (pr - rr) / nr
    torch.testing.assert_close(losses, (ipo_delta - 1 / (2 * beta)) ** 2)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_loss(pc, pr, rc, rr, beta, "kto")


def test_log_probs_and_metrics_match_trl_dpo_trainer(tiny_models, tmp_path):
    """TRL's own DPOTrainer.evaluate on the same pairs, policy and reference: the summed reply
    log-probs agree to float precision (same tokens scored: our chat rendering + EOS is TRL's
    prompt/completion split), and the loss and implicit rewards agree to 1e-3. Not tighter:
    TRL's reference pass differs from its own policy pass on identical weights by ~1e-3 nats
    per reply (its fused LM head), so rewards carry that noise."""
    from datasets import Dataset
    from trl import DPOConfig as TrlDpoConfig
    from trl import DPOTrainer

    from rlhf_lab.generation import chat_prompt_text
    from rlhf_lab.testing import build_tiny_policy

    ref_dir = tiny_models["policy"]
    policy_dir = build_tiny_policy(tmp_path / "other", seed=1)  # same tokenizer, other weights
    tok = models.load_tokenizer(ref_dir)
    pairs = toy_pairs(REPLIES[:3], QUESTIONS[:2])
    rows = [
        {"prompt": chat_prompt_text(tok, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
        for p in pairs
    ]
    args = TrlDpoConfig(
        output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], use_cpu=True,
        per_device_eval_batch_size=len(pairs), max_length=None, report_to="none",
        logging_strategy="no", save_strategy="no",
    )  # fmt: skip
    trainer = DPOTrainer(
        model=models.load_causal_lm(policy_dir), ref_model=models.load_causal_lm(ref_dir),
        args=args, train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )  # fmt: skip
    trl = trainer.evaluate()

    batch = PairCollator(tok.pad_token_id)([tokenize_pair(tok, p, 1024) for p in pairs])
    with torch.no_grad():
        pc, pr, _, _ = pair_logps(models.load_causal_lm(policy_dir).eval(), batch)
        rc, rr, _, _ = pair_logps(models.load_causal_lm(ref_dir).eval(), batch)
    ours = preference_metrics(*dpo_loss(pc, pr, rc, rr, 0.1, "sigmoid"), pc, pr)
    assert ours["logps/chosen"] == pytest.approx(trl["eval_logps/chosen"], rel=1e-6)
    assert ours["logps/rejected"] == pytest.approx(trl["eval_logps/rejected"], rel=1e-6)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert ours[key] == pytest.approx(trl[f"eval_{key}"], abs=1e-3), key
    assert ours["rewards/accuracies"] == trl["eval_rewards/accuracies"]
    assert (pc - rc).abs().mean() > 0.1  # the two models really differ


def test_preference_metrics_are_trl_means():
    losses = torch.tensor([1.0, 3.0])
    m = preference_metrics(
        losses, torch.tensor([0.5, 0.0]), torch.tensor([0.1, 0.0]),
        torch.tensor([-4.0, -6.0]), torch.tensor([-8.0, -2.0]),
    )  # fmt: skip
    assert m == {
        "loss": 2.0,
        "rewards/chosen": 0.25,
        "rewards/rejected": pytest.approx(0.05),
        "rewards/accuracies": 0.5,  # a tie (0 vs 0) is not a win, as in TRL
        "rewards/margins": pytest.approx(0.2),
        "logps/chosen": -5.0,
        "logps/rejected": -5.0,
    }


def test_pair_logps_are_the_sft_log_likelihoods_of_each_side(tiny_models):
    tok = models.load_tokenizer(tiny_models["policy"])
    model = models.load_causal_lm(tiny_models["policy"]).eval()
    pairs = toy_pairs(REPLIES[:2], QUESTIONS[:2])
    feats = [tokenize_pair(tok, p, 64) for p in pairs]
    with torch.no_grad():
        pc, pr, nc, nr = pair_logps(model, PairCollator(tok.pad_token_id)(feats))
        for i, p in enumerate(pairs):
            for side, logp, n in (("chosen", pc, nc), ("rejected", pr, nr)):
                f = tokenize_example(tok, SftExample(p.prompt, getattr(p, side)), 64)
                nll, count = batch_nll(model, SftCollator(tok.pad_token_id)([f]))
                assert logp[i].item() == pytest.approx(-nll.item(), rel=1e-5)
                assert n[i].item() == count.item() == reply_tokens(f)


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------


def test_dpo_learns_a_toy_preference_rule(tiny_models, tmp_path):
    cfg = DpoConfig(
        beta=0.5, lr=2e-2, epochs=3, batch_size=8, max_length=64, warmup_ratio=0.0,
        lora=LoraConfig(r=4, alpha=8),
    )  # fmt: skip
    train, valid = toy_pairs(REPLIES[:6]), toy_pairs(REPLIES[6:])
    out = train_dpo_model(tiny_models["policy"], train, valid, cfg, out_dir=tmp_path / "dpo")
    m = out.metrics
    # before training the policy is the reference: zero rewards, loss log 2, accuracy 0
    assert m["valid_start/loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert m["valid_start/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    # unseen replies: the rule ("thanks" first) generalises
    assert m["valid/rewards/accuracies"] >= 0.8
    assert m["valid/rewards/margins"] > 0.5
    assert m["valid/loss"] < math.log(2) - 0.2
    assert m["valid/rewards/chosen"] > m["valid/rewards/rejected"]
    losses = [h["train/loss"] for h in out.history]
    assert len(losses) == 3 * 5 and sum(losses[-3:]) / 3 < losses[0] - 0.2
    assert m["train/skipped_nonfinite"] == 0
    # the LoRA update is merged into the saved weights
    state = load_file(tmp_path / "dpo/model.safetensors")
    base = load_file(tiny_models["policy"] / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(state[key], base[key])
    assert not [k for k in state if "lora" in k]


# ---------------------------------------------------------------------------------------------
# the stage through the CLI
# ---------------------------------------------------------------------------------------------


def _rows(pairs: list[PreferencePair], split: str) -> list[dict]:
    return [
        {"id": f"{split}-{i}", "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
         "label_source": "human", "meta": {}}
        for i, p in enumerate(pairs)
    ]  # fmt: skip


def make_dpo_workdir(root: Path, policy: Path, **dpo: object) -> Path:
    train = _rows(toy_pairs(REPLIES[:4], QUESTIONS[:4]), "train")
    train.append({**train[0], "id": "tie", "chosen": None})  # a judge tie: dropped
    write_jsonl(root / "data/preference/train.jsonl", train)
    write_jsonl(root / "data/preference/valid.jsonl", _rows(toy_pairs(REPLIES[6:]), "valid"))
    shutil.copytree(policy, root / "models/sft")
    cfg = {"lr": 2e-2, "epochs": 1, "batch_size": 8, "max_length": 64, "lora": {"r": 4, "alpha": 8}}
    cfg.update(dpo)
    (root / "params.yaml").write_text(yaml.safe_dump({"dpo": cfg}))
    return root / "params.yaml"


def test_train_dpo_stage_smoke(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_dpo_workdir(tmp_path, tiny_models["policy"])
    result = CliRunner().invoke(app, ["train_dpo", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "train_dpo" in result.output and "valid reward accuracy" in result.output

    m = json.loads((tmp_path / "metrics/full/train_dpo.json").read_text())
    assert m["train/pairs"] == 16 and m["valid/pairs"] == 12 and m["data/dropped_train"] == 1
    assert m["train/steps"] == 2 and m["train/skipped_nonfinite"] == 0
    assert m["valid_start/loss"] == pytest.approx(math.log(2), rel=1e-6)
    for split in ("train", "valid"):
        assert 0.0 <= m[f"{split}/rewards/accuracies"] <= 1.0
        assert 0.0 < m[f"{split}/loss"] < 5.0
        assert m[f"{split}/logps/chosen"] < 0 and m[f"{split}/logps/rejected"] < 0
        assert m[f"{split}/rewards/margins"] == pytest.approx(
            m[f"{split}/rewards/chosen"] - m[f"{split}/rewards/rejected"], abs=1e-6
        )
    # training moved the policy away from the reference
    assert m["valid/rewards/margins"] != pytest.approx(0.0, abs=1e-4)
    curves = tmp_path / "plots/train_dpo/plots/metrics"
    assert (curves / "train/rewards/accuracies.tsv").is_file()
    assert len((curves / "valid/loss.tsv").read_text().splitlines()) == 1 + 2  # start + epoch

    out = tmp_path / "models/dpo"
    assert not (out / "adapter_config.json").exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "train_dpo" and prov["role"] == "dpo"
    assert prov["base"] == "models/sft" and prov["params"]["dpo"]["beta"] == 0.1
    model = models.load_causal_lm(out)
    assert model.config.num_hidden_layers == 2
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_no_dpo_pairs_is_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_dpo_workdir(tmp_path, tiny_models["policy"])
    (tmp_path / "data/preference/train.jsonl").unlink()
    result = CliRunner().invoke(app, ["train_dpo", "--params", str(params)])
    assert result.exit_code == 2
    assert "no preference pairs" in result.output
    assert not (tmp_path / "models/dpo").exists()
