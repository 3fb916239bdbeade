"""models.mixed_precision: how it resolves, that sampling runs in bf16 under it while the
rest stays float32, and that log-probs keep a float32 head even inside autocast."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab import precision
from rlhf_lab.generation import next_token_logits
from rlhf_lab.tokens import position_ids


@pytest.mark.parametrize(("native", "expected"), [(True, True), (False, False)])
def test_auto_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "device_type", lambda: "cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.use_bf16("auto") is expected
    assert precision.use_bf16("fp32") is False
    assert precision.use_bf16("bf16") is True


def test_inference_autocast_follows_configure_and_full_precision_opts_out():
    a = torch.randn(4, 8)
    try:
        precision.configure("bf16")
        with precision.inference() as on:
            assert on
            assert (a @ a.T).dtype == torch.bfloat16
            with precision.full_precision("cpu"):
                assert (a @ a.T).dtype == torch.float32
        assert (a @ a.T).dtype == torch.float32  # training code outside inference(): fp32
        precision.configure("fp32")
        with precision.inference() as on:
            assert not on and (a @ a.T).dtype == torch.float32
        with pytest.raises(ValueError):
            precision.configure("fp8")
    finally:
        precision.configure("fp32")


def test_generate_samples_under_bf16_and_leaves_training_in_float32(tiny_models):
    from rlhf_lab import models
    from rlhf_lab.generation import generate

    lm = models.load_causal_lm(tiny_models["policy"])
    tok = models.load_tokenizer(tiny_models["policy"])
    seen = []
    hook = lm.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    prompts = [[{"role": "user", "content": "hi"}]]
    kw = {"max_new_tokens": 3, "temperature": 1.0, "batch_size": 1, "seed": 0}
    try:
        precision.configure("bf16")
        generate(lm, tok, prompts, **kw)
        assert set(seen) == {torch.bfloat16}
        seen.clear()
        lm(input_ids=torch.tensor([[1, 2, 3]]))  # a training-style forward: untouched
        assert seen == [torch.float32]
    finally:
        precision.configure("fp32")
        hook.remove()


def test_next_token_logits_head_is_float32_and_close_under_bf16(tiny_models):
    from rlhf_lab import models

    lm = models.load_causal_lm(tiny_models["policy"]).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).long()
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}
    with torch.no_grad():
        full = lm(**inputs).logits[:, -4:-1]
        exact = next_token_logits(lm, inputs, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = next_token_logits(lm, inputs, 3)
    torch.testing.assert_close(exact, full, rtol=1e-5, atol=1e-5)
    assert mixed.dtype == torch.float32
    # bf16 backbone: close to float32, not equal
    assert (mixed - exact).abs().max() < 0.1 * exact.abs().max()


@pytest.mark.parametrize(
    ("fields", "model", "native"),
    [
        (
            {"model name": "AMD EPYC", "cpu family": "25", "model\t": "1", "flags": "fpu avx2"},
            "AMD EPYC, family 25 model 1 (no bf16 instructions)",
            False,
        ),
        (
            {"model name": "Intel Xeon", "flags": "avx512f amx_bf16 avx512_bf16"},
            "Intel Xeon (amx_bf16, avx512_bf16)",
            True,
        ),
        (
            # AVX512-BF16 without AMX on Intel: measured slower than float32 (bf16_training.json)
            {"model name": "Intel Xeon", "vendor_id": "GenuineIntel", "flags": "avx512_bf16"},
            "Intel Xeon (avx512_bf16)",
            False,
        ),
        (
            {"model name": "AMD EPYC", "vendor_id": "AuthenticAMD", "flags": "avx512_bf16"},
            "AMD EPYC (avx512_bf16)",
            True,
        ),
        ({}, "unknown CPU (no bf16 instructions)", False),
    ],
)
def test_cpu_model_and_native_bf16_read_cpuinfo(monkeypatch, fields, model, native):
    monkeypatch.setattr(precision, "_cpuinfo_field", lambda name: fields.get(name, ""))
    assert precision.cpu_model() == model
    assert precision.cpu_has_native_bf16() is native


# ---------------------------------------------------------------------------------------------
# training under bf16 autocast: the autocast weight cache, and loops that learn
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def bf16_then_fp32():
    """Tests that switch models.mixed_precision leave it at the test default (fp32)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a shared 2-core machine
    try:
        yield
    finally:
        precision.configure("fp32")
        torch.set_num_threads(before)


def _lora_steps(policy_dir, steps: int, around_loop, per_pass) -> list[float]:
    """``steps`` AdamW steps of a LoRA-wrapped tiny policy on one fixed batch; the losses.

    ``around_loop`` is a context opened around the whole loop, ``per_pass`` one opened around
    each forward pass (``contextlib.nullcontext`` for none)."""
    from rlhf_lab import models
    from rlhf_lab.config import LoraConfig
    from rlhf_lab.training.common import apply_lora

    torch.manual_seed(0)
    model = apply_lora(models.load_causal_lm(policy_dir), LoraConfig(r=4, alpha=8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.arange(5, 37).reshape(2, 16)
    losses = []
    with around_loop():
        for _ in range(steps):
            with per_pass():
                logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    return losses


@pytest.mark.usefixtures("bf16_then_fp32")
def test_one_autocast_context_around_the_loop_trains_on_stale_weights(tiny_models):
    """The bug the issue measured: autocast caches the bf16 cast of each trainable weight until
    its outermost context exits, so inside one context every forward reuses step 1's weights
    and the loss never moves; training_autocast (per pass, no cache) learns."""
    import contextlib

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    none = contextlib.nullcontext
    stale = _lora_steps(tiny_models["policy"], 6, around_loop=bf16, per_pass=none)
    assert stale == [stale[0]] * 6  # the optimiser moved the weights; the forward did not see it

    precision.configure("bf16")
    fresh = _lora_steps(
        tiny_models["policy"], 6, around_loop=none, per_pass=precision.training_autocast
    )
    fp32 = _lora_steps(tiny_models["policy"], 6, around_loop=none, per_pass=none)
    assert fresh[0] == pytest.approx(stale[0], abs=1e-6)  # same first step: same bf16 forward
    assert fresh[-1] < fresh[0] - 0.5 * (fp32[0] - fp32[-1])
    # even misplaced around the loop, the helper does not cache (cache_enabled=False)
    misplaced = _lora_steps(
        tiny_models["policy"], 6, around_loop=precision.training_autocast, per_pass=none
    )
    assert misplaced == pytest.approx(fresh, rel=1e-6)


@pytest.mark.usefixtures("bf16_then_fp32")
def test_training_autocast_is_per_pass_bf16_and_nothing_under_fp32():
    a = torch.randn(4, 8)
    precision.configure("fp32")
    assert not precision.bf16_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16), precision.training_autocast():
        assert (a @ a.T).dtype == torch.bfloat16  # fp32 leaves a caller's own region alone
    with precision.training_autocast():
        assert (a @ a.T).dtype == torch.float32
    precision.configure("bf16")
    assert precision.bf16_enabled()
    with precision.training_autocast():
        assert (a @ a.T).dtype == torch.bfloat16
        assert not torch.is_autocast_cache_enabled()
    assert (a @ a.T).dtype == torch.float32
