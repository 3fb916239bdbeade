"""train_sft: truncation and label masking, the per-sequence loss against a naive loop, the
chat-template format, and the stage through the real CLI on a tiny random Llama."""

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
from rlhf_lab.generation import chat_prompt_text
from rlhf_lab.io import write_jsonl
from rlhf_lab.training.common import LengthGroupedBatches, length_grouped_batches
from rlhf_lab.training.sft import (
    IGNORE_INDEX,
    SftCollator,
    SftExample,
    batch_nll,
    reply_window,
    sequence_nll,
    sft_examples,
    sft_features,
    tokenize_example,
)

DIALOGUES = [
    ("hello how are you doing today", "i am fine thanks and you"),
    ("what is your favorite movie", "you should watch the matrix it is great"),
    ("def add(a, b): return a + b", "returns the sum of the two numbers"),
    ("i feel sick today", "sorry to hear that, i hope you feel better soon"),
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed torch threads run 10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------


def test_sft_features_masks_the_prompt():
    ids, labels = sft_features([1, 2, 3], [7, 8, 9], max_length=10)
    assert ids == [1, 2, 3, 7, 8, 9]
    assert labels == [IGNORE_INDEX] * 3 + [7, 8, 9]


def test_sft_features_cuts_the_prompt_from_the_left():
    ids, labels = sft_features(list(range(10)), [70, 71], max_length=6)
    assert ids == [6, 7, 8, 9, 70, 71]  # the most recent prompt tokens survive
    assert labels == [IGNORE_INDEX] * 4 + [70, 71]


def test_sft_features_long_reply_leaves_the_prompt_half_the_budget():
    ids, labels = sft_features(list(range(10)), list(range(100, 120)), max_length=8)
    # prompt keeps max_length // 2 = 4 (its end), the reply its first 4 tokens (no EOS)
    assert ids == [6, 7, 8, 9, 100, 101, 102, 103]
    assert labels == [IGNORE_INDEX] * 4 + [100, 101, 102, 103]
    # a short prompt leaves the rest to the reply
    ids, labels = sft_features([1], list(range(100, 120)), max_length=8)
    assert ids == [1, *range(100, 107)] and labels[0] == IGNORE_INDEX


def test_sequence_nll_matches_a_naive_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    nll, count = sequence_nll(logits, labels)
    for b in range(2):
        total, n = 0.0, 0
        for t in range(4):  # position t predicts token t + 1
            target = labels[b, t + 1].item()
            if target == IGNORE_INDEX:
                continue
            total -= torch.log_softmax(logits[b, t], -1)[target].item()
            n += 1
        assert nll[b].item() == pytest.approx(total, rel=1e-9)
        assert count[b].item() == n


def test_collator_pads_left_with_pad_and_ignore():
    batch = SftCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [9], "labels": [9]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_reply_window_covers_every_label_and_its_predecessor():
    labels = torch.tensor([[-100, -100, -100, 4, 5], [-100, -100, -100, -100, 6]])
    assert reply_window(labels) == 3  # position 2 predicts the first label at 3
    assert reply_window(torch.full((2, 4), IGNORE_INDEX)) == 2


def test_batch_nll_with_the_reply_window_equals_the_full_unpadded_loss(tiny_models):
    tok = models.load_tokenizer(tiny_models["policy"])
    model = models.load_causal_lm(tiny_models["policy"]).eval()
    feats = [
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]},
        {"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
    ]
    with torch.no_grad():
        nll, count = batch_nll(model, SftCollator(tok.pad_token_id)(feats))
        for i, f in enumerate(feats):
            ids = torch.tensor([f["input_ids"]])
            ref, n = sequence_nll(model(input_ids=ids).logits, torch.tensor([f["labels"]]))
            assert nll[i].item() == pytest.approx(ref.item(), rel=1e-5)
            assert count[i].item() == n.item()


def test_length_grouped_batches_are_a_partition_of_similar_lengths():
    lengths = [(i * 37) % 101 for i in range(100)]
    batches = length_grouped_batches(lengths, batch_size=4, seed=0, group=5)
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert all(len(b) == 4 for b in batches)

    # padding waste (batch max - mean) is far below random batching's
    def waste(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    random_batches = [list(range(i, i + 4)) for i in range(0, 100, 4)]
    assert waste(batches) < 0.5 * waste(random_batches)
    assert batches != length_grouped_batches(lengths, batch_size=4, seed=1, group=5)
    sampler = LengthGroupedBatches(lengths, 4, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(sampler) == 25 and first != second  # regrouped every epoch


def test_sft_examples_prefer_references_then_chosen():
    prompt = [{"role": "user", "content": "q"}]
    prompts = [{"prompt": prompt, "reference": "ref"}, {"prompt": prompt, "reference": None}]
    prefs = [{"prompt": prompt, "chosen": "c", "rejected": "r"}]
    assert sft_examples(prompts, prefs) == [SftExample(prompt, "ref")]
    # HH-style data: no references, so the preferred replies (judge ties have chosen null)
    prefs.append({"prompt": prompt, "chosen": None, "rejected": "r"})
    assert sft_examples([{"prompt": prompt, "reference": None}], prefs) == [SftExample(prompt, "c")]


def test_tokenize_example_uses_the_generation_prompt_and_ends_with_eos(tiny_models):
    tok = models.load_tokenizer(tiny_models["policy"])
    assert tok.pad_token_id != tok.eos_token_id
    messages = [{"role": "user", "content": "what is your favorite movie"}]
    example = SftExample(messages, "you should watch the matrix")
    feats = tokenize_example(tok, example, max_length=128, system_prompt="Be brief.")
    prompt = chat_prompt_text(tok, messages, "Be brief.")
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert tok.decode(feats["input_ids"][:n_prompt]) == prompt
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt
    assert feats["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    reply_labels = feats["labels"][n_prompt:]
    assert reply_labels[-1] == tok.eos_token_id  # EOS is trained, never masked
    assert tok.decode(reply_labels) == "you should watch the matrix<|im_end|>"


# ---------------------------------------------------------------------------------------------
# the stage through the CLI
# ---------------------------------------------------------------------------------------------


def _prompt_rows(split: str, repeat: int) -> list[dict]:
    return [
        {
            "id": f"{split}-{i}",
            "prompt": [{"role": "user", "content": q}],
            "reference": a,
            "meta": {},
        }
        for i, (q, a) in enumerate(DIALOGUES * repeat)
    ]


def make_sft_workdir(root: Path, policy: Path, **sft: object) -> Path:
    write_jsonl(root / "data/grounded/train.jsonl", _prompt_rows("train", 6))
    write_jsonl(root / "data/grounded/valid.jsonl", _prompt_rows("valid", 1))
    shutil.copytree(policy, root / "models/base/policy")
    cfg = {"lr": 3e-2, "epochs": 3, "batch_size": 8, "max_length": 64, "lora": {"r": 4, "alpha": 8}}
    cfg.update(sft)
    (root / "params.yaml").write_text(yaml.safe_dump({"sft": cfg}))
    return root / "params.yaml"


def test_train_sft_stage_smoke(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_sft_workdir(tmp_path, tiny_models["policy"])
    result = CliRunner().invoke(app, ["train_sft", "--params", str(params)])
    assert result.exit_code == 0, result.output

    m = json.loads((tmp_path / "metrics/full/train_sft.json").read_text())
    assert m["train/examples"] == 24 and m["valid/examples"] == 4
    assert m["train/steps"] == 3 * 3
    assert m["valid/loss"] < m["valid/loss_base"] - 0.2
    assert m["valid/perplexity"] == pytest.approx(math.exp(m["valid/loss"]))
    assert m["lora/trainable_parameters"] > 0

    loss_tsv = tmp_path / "plots/train_sft/plots/metrics/train/loss.tsv"
    losses = [float(line.split("\t")[-1]) for line in loss_tsv.read_text().splitlines()[1:]]
    assert len(losses) == 9
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2

    # models/sft is a plain causal LM: adapters merged, no peft files, weights changed
    out = tmp_path / "models/sft"
    assert not (out / "adapter_config.json").exists()
    state = load_file(out / "model.safetensors")
    assert not [k for k in state if "lora" in k]
    base = load_file(tmp_path / "models/base/policy/model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(state[key], base[key])
    assert torch.equal(state["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "train_sft" and prov["role"] == "sft"
    assert prov["params"]["sft"]["lora"]["r"] == 4 and "task" in prov["params"]
    assert prov["pad_token"] != prov["eos_token"]

    # the merged model reproduces the valid loss the trainer measured with the adapters on
    tok = models.load_tokenizer(out)
    model = models.load_causal_lm(out).eval()
    valid = [SftExample(r["prompt"], r["reference"]) for r in _prompt_rows("valid", 1)]
    batch = SftCollator(tok.pad_token_id)([tokenize_example(tok, e, 64) for e in valid])
    with torch.no_grad():
        nll, count = batch_nll(model, batch)
    assert (nll.sum() / count.sum()).item() == pytest.approx(m["valid/loss"], rel=1e-4)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_no_sft_data_is_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_sft_workdir(tmp_path, tiny_models["policy"])
    (tmp_path / "data/grounded/train.jsonl").unlink()
    result = CliRunner().invoke(app, ["train_sft", "--params", str(params)])
    assert result.exit_code == 2
    assert "no SFT examples" in result.output
    assert not (tmp_path / "models/sft").exists()


def _sft_run(policy: Path, out: Path, setting: str) -> tuple[list[float], float, dict]:
    """8 SFT steps on one fixed batch of 4 dialogues under ``models.mixed_precision=setting``:
    the train losses, the relative change of the merged weights, the metrics."""
    from rlhf_lab import precision
    from rlhf_lab.config import SftConfig
    from rlhf_lab.training.sft import train_sft_model

    examples = [SftExample([{"role": "user", "content": q}], a) for q, a in DIALOGUES]
    cfg = SftConfig(
        lr=1e-2, epochs=8, batch_size=4, max_length=64, warmup_ratio=0.0, lora={"r": 4, "alpha": 8}
    )
    precision.configure(setting)
    try:
        outcome = train_sft_model(policy, examples, examples[:1], cfg, out_dir=out)
    finally:
        precision.configure("fp32")
    base, merged = load_file(policy / "model.safetensors"), load_file(out / "model.safetensors")
    delta = sum(float((merged[k] - base[k]).norm() ** 2) for k in base) ** 0.5
    norm = sum(float(base[k].norm() ** 2) for k in base) ** 0.5
    return [h["train/loss"] for h in outcome.history], delta / norm, outcome.metrics


def test_sft_learns_under_bf16_autocast_as_much_as_in_float32(tiny_models, tmp_path):
    """bf16-autocast SFT (one autocast context per forward pass) learns; with one context
    around the loop the loss did not move. Same seed and batch in both precisions."""
    fp32, moved_fp32, m_fp32 = _sft_run(tiny_models["policy"], tmp_path / "fp32", "fp32")
    bf16, moved_bf16, m_bf16 = _sft_run(tiny_models["policy"], tmp_path / "bf16", "bf16")
    assert (m_fp32["perf/bf16"], m_bf16["perf/bf16"]) == (0, 1)
    assert len(fp32) == len(bf16) == 8
    assert fp32[-1] < fp32[0] - 0.2  # float32 learns the batch (6.03 -> 5.79 measured)
    assert bf16[0] - bf16[-1] >= 0.5 * (fp32[0] - fp32[-1])
    assert 0.5 < moved_bf16 / moved_fp32 < 2.0 and moved_fp32 > 0
