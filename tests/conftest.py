"""Shared fixtures: tiny random models (seconds) and, once per test run, the embedded models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlhf_lab.testing import build_tiny_encoder, build_tiny_policy

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests must never reach a model hub, and tokenizers' thread pool fights with pytest forks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def worker_threads(cpus: int | None, workers: str | None) -> int | None:
    """Torch threads for one pytest-xdist worker (``make test`` runs ``-n auto``): the cores
    split between the workers, so two busy workers on 2 cores do not oversubscribe them (each
    would be 5-10x slower). None outside xdist: torch's own default."""
    if not workers:
        return None
    return max(1, (cpus or 1) // int(workers))


_THREADS = worker_threads(os.cpu_count(), os.environ.get("PYTEST_XDIST_WORKER_COUNT"))
if _THREADS is not None:
    # this process is set directly; the stage subprocesses a test starts inherit the variable
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    import torch

    torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer Llama policy and a 2-layer BERT encoder saved with save_pretrained."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "policy": build_tiny_policy(root / "policy"),
        "encoder": build_tiny_encoder(root / "encoder"),
    }


@pytest.fixture(scope="session")
def embedded_models(tmp_path_factory) -> dict[str, Path]:
    """The real embedded defaults materialised once per test run (about 30 s)."""
    from rlhf_lab import models

    root = tmp_path_factory.mktemp("embedded-models")
    models.materialise_policy("embedded:smollm2-135m-instruct", root / "policy", "float32", None)
    models.materialise_encoder("embedded:all-minilm-l6-v2", root / "encoder", None)
    return {"policy": root / "policy", "encoder": root / "encoder"}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real public data); tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _precision_back_to_fp32():
    """A stage run through the CLI sets models.mixed_precision process-wide (``auto``: bf16 on
    an AMX / AVX512-BF16 CPU); reset it so the next test's training math starts in float32."""
    yield
    from rlhf_lab import precision

    precision.configure("fp32")
