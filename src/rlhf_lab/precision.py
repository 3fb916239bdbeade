"""Mixed precision: bf16 autocast for sampling, judging and training, where it is native.

``models.mixed_precision`` (``fp32`` | ``bf16`` | ``auto``), set once per stage by the CLI
(:func:`configure`), puts forward passes under bfloat16 autocast:

* inference-only passes (:func:`inference`): sampling (``prepare_preference``'s base-policy
  replies, PPO rollouts, ``evaluate`` and ``generate``) and the local judge;
* training forward passes (:func:`training_autocast`): SFT, the reward model, the critic, PPO's
  log-probs and values (rollout recompute, reference and update alike) and any other loop
  (DPO) that calls it around its forward pass.

``auto`` turns it on only where bf16 pays: a CUDA device that supports it, or a CPU with AMX
(Intel Sapphire Rapids and later) or a non-Intel CPU with AVX512-BF16 (AMD Zen 4 and later),
where oneDNN's bf16 kernels sample ~2x and train ~1.6x faster than float32. On other CPUs —
including Intel ones that expose AVX512-BF16 without AMX, measured 0.56-0.83x per training
step — ``auto`` stays in float32 (:func:`cpu_has_native_bf16`).

What stays float32 under it: the weights and the optimiser (autocast casts copies for the
matmuls; the master weights and AdamW's moments never leave float32), and every log-softmax,
log-prob, value and loss. The SFT loss upcasts its bf16 logits before the log-softmax; PPO's
log-probs and values run their heads in float32 on the bf16 backbone's hidden states
(:func:`full_precision`), because a log-prob difference of bf16 logits carries noise of the
order of PPO's clip range.

Why each forward pass enters its own autocast context (and never one context around a
training loop): while a context is open, autocast caches the bf16 copy of every trainable leaf
weight it casts, and reuses it until the outermost context exits. Around the whole loop the
forward keeps computing with step 1's weights however far the optimiser moves them: measured
on SmolLM2-135M + LoRA, 12 AdamW steps on one batch went 2.022 -> 2.022 (nothing learned)
where per-pass autocast went 2.022 -> 0.055 and float32 2.021 -> 0.034. An earlier version of
this module blamed bf16's resolution (updates below 2^-8 of a weight rounded away) for that
"autocast training learns nothing"; the master weights are float32, so the resolution was
never the cause — the stale cache was (``tests/test_precision.py`` reproduces it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from rlhf_lab.tokens import default_device

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

_setting = "fp32"


@functools.cache
def _cpuinfo_field(name: str) -> str:
    """The first ``name : value`` line of Linux /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((line for line in text.splitlines() if line.startswith(name)), "")
    return line.partition(":")[2].strip()


def cpu_has_native_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU (Linux /proc/cpuinfo): AMX anywhere, or
    AVX512-BF16 on a CPU that is not Intel's.

    Measured on 2 threads. On an AMD EPYC with avx512_bf16 (2026-12-02) a LoRA r16 step on
    SmolLM2-135M (8x128 tokens, one batch, 12 AdamW steps) took 1.60 s in bf16 against 2.61 s
    in float32. On an Intel Xeon (family 6 model 207) exposing avx512_bf16 without AMX
    (2026-12-03, ``python bench/bf16_training.py --workspace <finished default run>``) every
    training stage was *slower* in bf16 (0.56-0.83x: SFT 7.10 vs 4.47 s/step, DPO 14.9 vs 12.4;
    ``bench/results/bf16_training.json``) — oneDNN's fast bf16 path on Intel is AMX.
    """
    flags = set(_cpuinfo_field("flags").split())
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and _cpuinfo_field("vendor_id") != "GenuineIntel"


def cpu_model() -> str:
    """This CPU's model name and its bf16 instructions, for benchmark results.

    The machines of this project are not all the same CPU (Intel Sapphire Rapids with AMX, AMD
    EPYC with AVX512-BF16): every timing is only comparable within one run on one of them.
    """
    flags = [f for f in CPU_BF16_FLAGS if f in _cpuinfo_field("flags").split()]
    name = _cpuinfo_field("model name") or "unknown CPU"
    # A virtualised "AMD EPYC" hides the generation; family/model tell Zen 3 (25/1) from Zen 4.
    family, model = _cpuinfo_field("cpu family"), _cpuinfo_field("model\t")
    kind = f", family {family} model {model}" if family and model else ""
    return f"{name}{kind} ({', '.join(flags) or 'no bf16 instructions'})"


def device_type() -> str:
    return default_device().type


def use_bf16(setting: str) -> bool:
    """Resolve a ``models.mixed_precision`` value on this machine."""
    if setting == "fp32":
        return False
    if setting == "bf16":
        return True
    if device_type() == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def configure(setting: str) -> None:
    """Set the process-wide ``models.mixed_precision`` (the CLI calls it before each stage)."""
    global _setting
    if setting not in ("fp32", "bf16", "auto"):
        raise ValueError(f"mixed_precision must be fp32, bf16 or auto, not {setting!r}")
    _setting = setting


@contextlib.contextmanager
def inference() -> Iterator[bool]:
    """bf16 autocast for an inference-only block when configured; yields whether it is on."""
    on = use_bf16(_setting)
    with torch.autocast(device_type(), dtype=torch.bfloat16, enabled=on):
        yield on


def bf16_enabled() -> bool:
    """Whether the configured ``models.mixed_precision`` runs bf16 autocast on this machine
    (what a training stage records as ``perf/bf16``)."""
    return use_bf16(_setting)


def training_autocast() -> contextlib.AbstractContextManager:
    """bf16 autocast for ONE training forward pass when configured, else nothing.

    Enter it around each forward pass (model call to outputs) and compute the loss and call
    ``backward`` after it exits; never open it around a training loop or an epoch: autocast
    caches the bf16 casts of the trainable weights while the context is open, so inside one
    long context every forward after the first computes with the weights of the first (see
    the module docstring). ``cache_enabled=False`` makes a misplaced context harmless too;
    within one pass the cache would only save re-casting a weight used twice. Outputs come back
    in bf16 where the last op was a matmul: upcast logits before a log-softmax, or run the head
    under :func:`full_precision`.

    We use torch.autocast directly rather than ``Accelerator(mixed_precision="bf16")``, which
    wraps ``model.forward`` the same way: PPO's passes call the backbone and the heads
    separately rather than through one ``forward``, and a wrapped forward hands back bf16
    logits where PPO needs a float32 head.
    """
    if not use_bf16(_setting):
        # nullcontext rather than autocast(enabled=False): that would switch OFF an autocast
        # region a caller opened around us.
        return contextlib.nullcontext()
    return torch.autocast(device_type(), dtype=torch.bfloat16, cache_enabled=False)


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Float32 for the block even inside an autocast region (the caller upcasts its inputs)."""
    kind = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(kind, enabled=False)
