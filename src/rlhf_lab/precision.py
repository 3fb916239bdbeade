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
def _cpuinfo_field(name: str) -> str:
    """The first ``name : value`` line of Linux /proc/cpuinfo ("" where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    line = next((line for line in text.splitlines() if line.startswith(name)), "")
    return line.partition(":")[2].strip()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (Linux /proc/cpuinfo flags)."""
    return any(flag in _cpuinfo_field("flags").split() for flag in CPU_BF16_FLAGS)


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


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Float32 for the block even inside an autocast region (the caller upcasts its inputs)."""
    kind = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(kind, enabled=False)
