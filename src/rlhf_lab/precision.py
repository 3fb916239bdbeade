"""Mixed precision for inference: bf16 autocast for sampling and judging, where it is native.

``models.mixed_precision`` (``fp32`` | ``bf16`` | ``auto``), set once per stage by the CLI
(:func:`configure`), puts every *inference-only* forward pass under bfloat16 autocast: sampling
(``prepare_preference``'s base-policy replies, PPO rollouts, ``evaluate`` and ``generate``)
and the local judge. ``auto`` turns it on only where bf16 is native: a CUDA device that
supports it, or a CPU with AMX / AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and
later), where oneDNN's bf16 kernels sample from the 135M policy ~2x faster than float32; on
other CPUs bf16 is emulated and slower, so ``auto`` stays in float32.

Training stays float32 (SFT, reward model, critic, and every PPO log-prob, value and update):
on the default run, autocast training learned nothing — the SFT valid loss did not move
(3.992 -> 3.992) and the reward model stayed at chance (test accuracy 0.50 vs 0.90) — because
an update below bf16's resolution (2^-8 of the weight, or of the base layer's output for a
LoRA delta) is rounded away in the forward pass, and a CPU-sized run has too few steps for
updates to accumulate past it. PPO recomputes every log-prob it uses in float32 (the
"recompute logprobs" detail), so bf16 sampling changes which tokens are drawn, not the loss.
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
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (Linux /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in CPU_BF16_FLAGS)


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


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Float32 for the block even inside an autocast region (the caller upcasts its inputs)."""
    kind = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(kind, enabled=False)
