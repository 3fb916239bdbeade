"""training/common's end-of-loop helpers every training loop shares: the perf/* block, the
save of a trained model (merged LoRA, provenance, refusal of non-finite weights) and the
outcome handed back."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab import models
from rlhf_lab.config import LoraConfig
from rlhf_lab.errors import NonFiniteLossError
from rlhf_lab.training.common import (
    Curves,
    NonFiniteGuard,
    apply_lora,
    finish_training,
    make_accelerator,
    perf_metrics,
    save_trained_model,
)


def test_perf_metrics_rates_are_counts_over_seconds_and_nan_without_time():
    acc = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
    m = perf_metrics(acc, 4.0, pairs=10, tokens=6)
    assert m["perf/train_pairs_per_s"] == 2.5 and m["perf/train_tokens_per_s"] == 1.5
    assert m["perf/train_seconds"] == 4.0 and m["perf/num_processes"] == 2
    assert m["perf/bf16"] == 0 and m["perf/peak_memory_mb"] > 0
    assert set(m) == {
        "perf/train_pairs_per_s",
        "perf/train_tokens_per_s",
        "perf/train_seconds",
        "perf/peak_memory_mb",
        "perf/num_processes",
        "perf/bf16",
    }
    assert math.isnan(perf_metrics(acc, 0.0, pairs=10)["perf/train_pairs_per_s"])


def _lora_policy(policy_dir):
    tok = models.load_tokenizer(policy_dir)
    base = models.load_causal_lm(policy_dir)
    models.ensure_pad_token(tok, base)
    torch.manual_seed(0)
    model = apply_lora(base, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # a trained adapter: B is no longer zero, so merging changes weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    return tok, model


def _guard() -> NonFiniteGuard:
    return NonFiniteGuard("train_x", "x.max_bad_steps", 3, "lower x.lr")


def test_save_trained_model_merges_lora_and_writes_provenance(tiny_models, tmp_path):
    tok, model = _lora_policy(tiny_models["policy"])
    accelerator = make_accelerator(0, 1, "x.batch_size")
    extra = []
    save_trained_model(
        accelerator, model, lambda: model, _guard(), tmp_path / "out", tok,
        role="sft", base=tiny_models["policy"],
        metrics={"train/loss": 1.5, "valid/loss": math.nan, "perf/train_seconds": 3.0},
        provenance={"stage": "train_x"}, lora=LoraConfig(r=4, alpha=8),
        write_extra=lambda tmp: extra.append((tmp / "config.json").is_file()),
    )  # fmt: skip
    out = tmp_path / "out"
    assert extra == [True]  # called inside the temp dir, after the weights were written
    state = load_file(out / "model.safetensors")
    assert not [k for k in state if "lora" in k]
    base = load_file(tiny_models["policy"] / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(state[key], base[key])
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["role"] == "sft" and prov["stage"] == "train_x"
    assert prov["base"] == str(tiny_models["policy"]) and prov["dtype"] == "float32"
    assert prov["num_processes"] == 1 and prov["lora"]["r"] == 4
    assert prov["pad_token"] == tok.pad_token and prov["eos_token"] == tok.eos_token
    # perf/* left out (timings would change DVC's hash), nan written as null
    assert prov["metrics"] == {"train/loss": 1.5, "valid/loss": None}
    assert prov["parameters"] == sum(v.numel() for v in state.values())


def test_save_trained_model_refuses_non_finite_weights_and_writes_nothing(tiny_models, tmp_path):
    tok, model = _lora_policy(tiny_models["policy"])
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n)[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match=r"^train_x: 1 trained weight tensors"):
        save_trained_model(
            make_accelerator(0, 1, "x.batch_size"), model, lambda: model, _guard(),
            tmp_path / "out", tok, role="sft", base="b", metrics={}, lora=LoraConfig(r=4),
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_finish_training_closes_the_curves_and_nulls_non_finite_metrics(tmp_path):
    accelerator = make_accelerator(0, 1, "x.batch_size")
    curves = Curves(tmp_path / "plots")
    curves.log(1, {"train/loss": 0.5})
    history = [{"step": 1, "train/loss": 0.5}]
    out = finish_training(accelerator, curves, {"a": math.nan, "b": 2.0, "c": 3}, history)
    assert curves.live is None  # closed: dvclive has flushed the curve files
    assert (tmp_path / "plots/plots/metrics/train/loss.tsv").is_file()
    assert out.metrics == {"a": None, "b": 2.0, "c": 3} and out.history == history
    assert out.is_main_process and out.num_processes == 1
