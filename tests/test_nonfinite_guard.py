"""NonFiniteGuard (rlhf_lab.training.common), shared by every training loop: which steps it
skips, what it counts, the one-line abort, and the refusal to save nan weights."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lab.errors import NonFiniteLossError
from rlhf_lab.training.common import NonFiniteGuard


def _guard(limit: int = 3) -> NonFiniteGuard:
    return NonFiniteGuard("train_x", "x.max_bad_steps", limit, "lower x.lr")


def test_finite_steps_pass_and_non_finite_ones_are_counted():
    guard = _guard()
    assert guard.ok(1, torch.tensor(0.5), torch.tensor(2.0))
    assert guard.ok(2, torch.tensor(0.5))  # no grad norm (DeepSpeed clips itself)
    assert not guard.ok(3, torch.tensor(math.nan), torch.tensor(1.0))
    assert not guard.ok(4, torch.tensor(0.5), torch.tensor(math.inf))
    assert guard.skipped == 2


def test_the_limit_aborts_with_one_line_naming_the_key():
    guard = _guard(limit=2)
    guard.skip(7, "no reply left")
    with pytest.raises(NonFiniteLossError) as err:
        guard.ok(9, torch.tensor(-math.inf))
    assert str(err.value) == (
        "train_x: 2 updates skipped for a non-finite loss, gradient or score "
        "(x.max_bad_steps=2), last at step 9; lower x.lr"
    )


def test_check_weights_refuses_nan_in_trained_weights_only():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    _guard().check_weights(model)
    model[0].requires_grad_(False)
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan  # frozen: not this stage's doing
    _guard().check_weights(model)
    with torch.no_grad():
        model[1].bias[0] = math.inf
    with pytest.raises(
        NonFiniteLossError,
        match=r"^train_x: 1 trained weight tensors hold nan/inf \(first: 1\.bias\); "
        r"nothing saved; lower x\.lr$",
    ):
        _guard().check_weights(model)
