"""The critic's least-squares value head: the ridge math against plain numpy / autograd, and
the head fit on a tiny policy minimising the critic's own training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from rlhf_lab.ppo.model import new_critic
from rlhf_lab.training.critic import (
    Collator,
    RidgeStats,
    ScoredReply,
    encode,
    fit_value_head,
    per_reply_mse,
    ridge_cv,
    ridge_fit,
    ridge_sse,
)

from .ppo_helpers import TINY_LORA, USER_TURNS, one_thread  # noqa: F401


def _data(n: int = 40, h: int = 5, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Features of very different scales, as LM hidden states have.
    x = torch.randn(n, h, generator=g, dtype=torch.float64) * torch.logspace(0, 2, h).double()
    true_w = torch.randn(h, generator=g, dtype=torch.float64) / torch.logspace(0, 2, h).double()
    y = x @ true_w + 0.7 + noise * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return x, y, w


def test_stats_add_up_and_sse_matches_the_direct_sum():
    x, y, w = _data()
    whole = RidgeStats.of(x, y, w)
    parts = RidgeStats.of(x[:13], y[:13], w[:13]) + RidgeStats.of(x[13:], y[13:], w[13:])
    for a, b in zip(whole.tensors(), parts.tensors(), strict=True):
        torch.testing.assert_close(a, b)
    coef, bias = torch.tensor([0.3, -0.2, 0.01, 0.0, 0.002]).double(), torch.tensor(0.4).double()
    direct = (w * (y - x @ coef - bias) ** 2).sum()
    torch.testing.assert_close(ridge_sse(whole, coef, bias), direct)


def test_ridge_fit_without_penalty_is_weighted_least_squares():
    x, y, w = _data()
    coef, bias = ridge_fit(RidgeStats.of(x, y, w), alpha=0.0)
    # numpy: least squares on sqrt(w)-scaled rows with a column of ones for the intercept
    a = np.sqrt(w.numpy())[:, None] * np.hstack([x.numpy(), np.ones((len(x), 1))])
    sol = np.linalg.lstsq(a, np.sqrt(w.numpy()) * y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(coef.numpy(), sol[:-1], rtol=1e-6, atol=1e-9)
    assert float(bias) == pytest.approx(sol[-1], rel=1e-6)


def test_ridge_fit_is_the_minimum_of_the_penalised_objective():
    x, y, w = _data()
    alpha = 0.3
    coef, bias = ridge_fit(RidgeStats.of(x, y, w), alpha)
    var = (w[:, None] * (x - (w[:, None] * x).sum(0) / w.sum()) ** 2).sum(0) / w.sum()
    c, b = coef.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    objective = (w * (y - x @ c - b) ** 2).sum() / w.sum() + alpha * (var * c**2).sum()
    objective.backward()
    assert c.grad.abs().max() < 1e-9 and b.grad.abs() < 1e-9
    # the penalty shrinks the coefficients (in standardised units) towards 0
    free, _ = ridge_fit(RidgeStats.of(x, y, w), 0.0)
    assert (coef * var.sqrt()).norm() < (free * var.sqrt()).norm()


def test_ridge_cv_picks_a_small_penalty_for_a_clean_signal_and_a_large_one_for_noise():
    x, y, w = _data(n=60, noise=0.01)
    folds = [RidgeStats.of(x[k::5], y[k::5], w[k::5]) for k in range(5)]
    assert ridge_cv(folds)[2] <= 1e-3
    noise = torch.randn(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    folds = [RidgeStats.of(x[k::5], noise[k::5], w[k::5]) for k in range(5)]
    assert ridge_cv(folds)[2] >= 10.0


@pytest.mark.usefixtures("one_thread")
def test_fit_value_head_minimises_the_critic_loss_on_its_own_features(tiny_models):
    """The head fit reads exactly the values' inputs at the reply tokens with the loss's
    per-reply weights: the critic's train loss afterwards is the ridge's weighted error."""
    torch.manual_seed(0)
    model = new_critic(tiny_models["policy"], TINY_LORA)
    replies = [
        ScoredReply([{"role": "user", "content": USER_TURNS[i % len(USER_TURNS)]}], r, s)
        for i, (r, s) in enumerate(
            [("yes sure", 1.0), ("no", -1.0), ("maybe later today", 0.5), ("ok", -0.2)] * 3
        )
    ]
    examples = encode(model.tok, replies, 48, None, 0.0, 1.0)
    loader = DataLoader(examples, 4, collate_fn=Collator(model.tok.pad_token_id))
    accelerator = Accelerator(cpu=True)

    def loss() -> torch.Tensor:
        out = []
        for batch in loader:
            values = model(batch["query"], batch["query_mask"], batch["response"],
                           batch["response_mask"])  # fmt: skip
            out.append(per_reply_mse(values, batch["target"], batch["response_mask"]))
        return torch.cat(out).mean()

    with torch.no_grad():
        before = float(loss())
    info = fit_value_head(accelerator, model, loader)
    with torch.no_grad():
        after = float(loss())
    assert after < before
    assert 0.0 < info["head/r2"] <= 1.0
    # the ridge's R² is the loss's: after = (1 - R²) · (loss of the best constant)
    target = torch.tensor([e.target for e in examples])
    assert after == pytest.approx((1 - info["head/r2"]) * float(target.var(unbiased=False)),
                                  rel=1e-4)  # fmt: skip
