"""Mixed precision: bf16 autocast around a whole stage, where the hardware runs bf16 natively.

``models.mixed_precision`` (``no`` | ``bf16`` | ``auto``) is applied once, by the CLI, around a
stage's ``main``: every matmul of every model the stage runs (generation, SFT, critic, PPO,
the local judge, evaluation) then runs in bfloat16 while the weights, optimiser states and
LoRA matrices stay float32 (``torch.autocast``'s mixed precision, as ``accelerate``'s
``mixed_precision="bf16"`` does on a GPU). ``auto`` turns it on only where bf16 is native:
a CUDA device that supports it, or a CPU with AMX / AVX512-BF16 (Intel Sapphire Rapids and
later, AMD Zen 4+), where oneDNN's bf16 kernels run the 135M policy 2-3x faster than float32;
on other CPUs bf16 is emulated and slower, so ``auto`` stays in float32.

Places where precision matters opt out locally with :func:`full_precision` (PPO's
log-probabilities and values: the policy-ratio and KL terms are differences of log-probs,
which bf16 logits would blur).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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
    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(setting: str) -> bool:
    """Resolve ``models.mixed_precision`` on this machine."""
    if setting == "no":
        return False
    if setting == "bf16":
        return True
    if device_type() == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


@contextlib.contextmanager
def autocast(setting: str) -> Iterator[bool]:
    """bf16 autocast for the block when ``setting`` resolves to it; yields whether it is on."""
    on = use_bf16(setting)
    with torch.autocast(device_type(), dtype=torch.bfloat16, enabled=on):
        yield on


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Float32 for the block even inside :func:`autocast` (the caller upcasts its inputs)."""
    kind = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(kind, enabled=False)
