"""Unit tests for rlhf_lab.ppo.core: every helper against hand-computed values or a naive loop."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlhf_lab.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    nonfinite_rows,
    policy_loss,
    reinforce_pp_returns,
    rloo_advantages,
    shape_rewards,
    value_loss,
)


@pytest.fixture(autouse=True)
def _float64():
    """Hand values are checked to ~1e-12, so build tensors in float64 (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def prefix_mask(lengths: list[int], steps: int) -> torch.Tensor:
    """Right-padded float mask: row b has ``lengths[b]`` ones then zeros."""
    return (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]).double()


# ---------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------


def test_masked_mean_hand_values_and_dim():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3.0)
    assert torch.allclose(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    assert torch.allclose(masked_mean(x, mask, dim=0), torch.tensor([2.5, 2.0, 0.0]))
    # bool masks give the same answer as float masks
    assert masked_mean(x, mask.bool()).item() == pytest.approx(7.0 / 3.0)


def test_masked_mean_ignores_nan_in_padding_and_empty_rows_give_zero():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), -float("inf")]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    per_row = masked_mean(x, mask, dim=1)
    assert per_row.tolist() == [1.0, 0.0]
    per_row.sum().backward()
    # gradient is 1/n on valid entries and exactly 0 (not nan) everywhere else
    assert x.grad.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0


def test_masked_var_matches_statistics_module():
    x = torch.tensor([[0.5, -1.0, 2.0, 9.0], [3.0, 4.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    valid = [0.5, -1.0, 2.0, 3.0, 4.0]
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(valid))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(valid))


def test_masked_var_rejects_too_few_entries():
    x = torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(x, torch.zeros(1, 2), unbiased=False)


def test_masked_whiten_moments_on_valid_entries_and_zero_padding():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(6, 9, generator=gen)
    mask = prefix_mask([9, 1, 4, 7, 2, 5], 9)
    x = torch.where(mask.bool(), x, torch.full_like(x, 1e6))  # garbage in padding
    w = masked_whiten(x, mask)
    valid = w[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert valid.var(unbiased=True).item() == pytest.approx(1.0, rel=1e-6)
    assert torch.all(w[~mask.bool()] == 0.0)
    # same as the textbook formula on the flat valid entries
    flat = x[mask.bool()]
    expected = (flat - flat.mean()) / torch.sqrt(flat.var(unbiased=True) + 1e-8)
    assert torch.allclose(valid, expected)


def test_masked_whiten_keep_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 6.0, 7.0, -100.0]])
    mask = prefix_mask([3, 3], 4)
    w = masked_whiten(x, mask, shift_mean=False)
    flat = torch.tensor([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    expected = (flat - 4.0) / math.sqrt(statistics.variance(flat.tolist()) + 1e-8) + 4.0
    assert torch.allclose(w[mask.bool()], expected)
    assert w[:, 3].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# log-probs and entropy
# ---------------------------------------------------------------------------------------------


def test_logprobs_from_logits_matches_log_softmax_gather():
    gen = torch.Generator().manual_seed(1)
    logits = 4.0 * torch.randn(3, 5, 11, generator=gen)
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    got = logprobs_from_logits(logits, tokens)
    for b in range(3):
        for t in range(5):
            naive = logits[b, t, tokens[b, t]] - torch.log(torch.exp(logits[b, t]).sum())
            assert got[b, t].item() == pytest.approx(naive.item(), abs=1e-10)


def test_logprobs_from_logits_low_precision_path():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=gen, dtype=torch.float32)
    tokens = torch.randint(0, 7, (2, 4), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    got = logprobs_from_logits(logits.bfloat16(), tokens)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, atol=5e-2)


def test_entropy_from_logits():
    gen = torch.Generator().manual_seed(3)
    logits = 2.0 * torch.randn(2, 3, 6, generator=gen)
    got = entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            p = torch.softmax(logits[b, t], -1).tolist()
            naive = -sum(pi * math.log(pi) for pi in p)
            assert got[b, t].item() == pytest.approx(naive, abs=1e-10)
    assert entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))


# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------


def test_kl_estimate_hand_values():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    k1 = kl_estimate(logp, ref, "k1")
    k3 = kl_estimate(logp, ref, "k3")
    assert k1.tolist() == pytest.approx([math.log(2), -math.log(2), 0.0])
    # k3 = (r - 1) - log r, r = q / p: r = 0.5, 2, 1
    assert k3.tolist() == pytest.approx([-0.5 + math.log(2), 1.0 - math.log(2), 0.0])


def test_k3_nonnegative_and_both_estimators_unbiased():
    gen = torch.Generator().manual_seed(4)
    k3 = kl_estimate(torch.randn(1000, generator=gen), torch.randn(1000, generator=gen), "k3")
    assert torch.all(k3 >= 0)
    # Monte Carlo: E_{x~p}[k] = KL(p || q) for both estimators.
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[x], q.log()[x], kind).mean().item()
        assert est == pytest.approx(true_kl, abs=0.01), kind


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k2")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# reward shaping
# ---------------------------------------------------------------------------------------------


def test_shape_rewards_places_score_on_last_valid_token_with_eos_penalty():
    logprobs = torch.tensor(
        [[-1.0, -2.0, -0.5, -9.0], [-0.1, -0.2, -0.3, -0.4], [-1.0, -1.0, -1.0, -1.0]]
    )
    ref = torch.tensor(
        [[-1.5, -1.0, -0.5, 5.0], [-0.1, -0.4, -0.1, -0.9], [-2.0, -2.0, -2.0, -2.0]]
    )
    mask = prefix_mask([3, 4, 0], 4)  # row 2 is an empty reply
    scores = torch.tensor([1.0, 2.0, 3.0])
    scores_before = scores.clone()
    eos_found = torch.tensor([True, False, False])

    rewards, kl = shape_rewards(
        scores, logprobs, ref, mask, 0.1, "k1", eos_found=eos_found, missing_eos_penalty=0.5
    )
    expected_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.2, -0.2, 0.5], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(kl, expected_kl)
    expected_rewards = torch.tensor(
        [
            [-0.05, 0.1, 0.0 + 1.0, 0.0],  # score 1 at t=2, EOS found: no penalty
            [0.0, -0.02, 0.02, -0.05 + (2.0 - 0.5)],  # no EOS: score - penalty at t=3
            [0.0, 0.0, 0.0, 0.0],  # empty reply: nothing, no crash
        ]
    )
    assert torch.allclose(rewards, expected_rewards)
    assert torch.equal(scores, scores_before)  # the caller's scores are not modified

    # Without a penalty configured, eos_found changes nothing.
    rewards_np, _ = shape_rewards(scores, logprobs, ref, mask, 0.1, "k1", eos_found, None)
    assert rewards_np[1, 3].item() == pytest.approx(-0.05 + 2.0)


def test_shape_rewards_matches_naive_loop_k3():
    gen = torch.Generator().manual_seed(5)
    lengths = [5, 1, 3, 0, 2]
    mask = prefix_mask(lengths, 5)
    logprobs, ref = -torch.rand(5, 5, generator=gen), -torch.rand(5, 5, generator=gen)
    scores = torch.randn(5, generator=gen)
    eos = torch.tensor([True, False, True, False, False])
    rewards, kl = shape_rewards(scores, logprobs, ref, mask, 0.05, "k3", eos, 1.0)
    for b, n in enumerate(lengths):
        for t in range(5):
            if t < n:
                r = math.exp(ref[b, t].item() - logprobs[b, t].item())
                k = (r - 1.0) - math.log(r)
                want = -0.05 * k
                if t == n - 1:
                    want += scores[b].item() - (0.0 if eos[b] else 1.0)
            else:
                k, want = 0.0, 0.0
            assert kl[b, t].item() == pytest.approx(k, abs=1e-12)
            assert rewards[b, t].item() == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------


def naive_gae(rewards, values, lengths, gamma, lam):
    """Per-row reverse loop over the valid tokens only; padding left at 0."""
    batch, steps = len(rewards), len(rewards[0])
    adv = [[0.0] * steps for _ in range(batch)]
    ret = [[0.0] * steps for _ in range(batch)]
    for b in range(batch):
        last = 0.0
        for t in reversed(range(lengths[b])):
            next_v = values[b][t + 1] if t + 1 < lengths[b] else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
            ret[b][t] = last + values[b][t]
    return adv, ret


def test_gae_hand_computed():
    # Row: mask [1, 1, 0], rewards [0, 1, junk], values [0.5, 0.2, junk], gamma=1, lam=0.5
    # t=1: delta = 1 + 0 - 0.2 = 0.8             -> A1 = 0.8, R1 = 1.0
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3          -> A0 = -0.3 + 0.5 * 0.8 = 0.1, R0 = 0.6
    rewards = torch.tensor([[0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 42.0]])
    adv, ret = gae(rewards, values, prefix_mask([2], 3), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.1, 0.8, 0.0])
    assert ret[0].tolist() == pytest.approx([0.6, 1.0, 0.0])


def test_gae_matches_naive_loop_and_ignores_padding_values():
    gen = torch.Generator().manual_seed(6)
    lengths = [6, 1, 4, 0, 3]
    mask = prefix_mask(lengths, 6)
    rewards = torch.randn(5, 6, generator=gen)
    values = torch.randn(5, 6, generator=gen)
    # whatever sits in padding must not matter
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))
    values = torch.where(mask.bool(), values, torch.full_like(values, -1e3))
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    want_adv, want_ret = naive_gae(rewards.tolist(), values.tolist(), lengths, 0.9, 0.8)
    assert torch.allclose(adv, torch.tensor(want_adv))
    assert torch.allclose(ret, torch.tensor(want_ret))


def test_gae_gamma_lam_one_gives_reward_to_go():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    values = torch.tensor([[0.3, -0.1, 0.7, 9.0]])
    _, ret = gae(rewards, values, prefix_mask([3], 4), gamma=1.0, lam=1.0)
    assert ret[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------


def test_policy_loss_clipping_active_and_inactive():
    # ratios 1.5, 0.5, 1.1, 0.5 (+ one padded token with an absurd ratio), clip = 0.2
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.5, 50.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0]])
    new = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0, 100.0]])
    mask = prefix_mask([4], 5)
    loss, clipfrac, approxkl = policy_loss(new, old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)):
    #   t0: max(-1.5, -1.2) = -1.2  clipped (ratio above 1 + eps with A > 0)
    #   t1: max( 0.5,  0.8) =  0.8  clipped (ratio below 1 - eps with A < 0)
    #   t2: max(-1.1, -1.1) = -1.1  inside the trust region
    #   t3: max(-0.5, -0.8) = -0.5  outside but unclipped: the pessimistic bound is the raw one
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 - 0.5) / 4)
    assert clipfrac.item() == 0.5
    logs = [math.log(r) for r in (1.5, 0.5, 1.1, 0.5)]
    assert approxkl.item() == pytest.approx(0.5 * sum(v * v for v in logs) / 4)
    assert not clipfrac.requires_grad and not approxkl.requires_grad
    loss.backward()
    # d/d new of (-A * r) / 4 = -A r / 4 where unclipped; 0 where clipped or padded
    assert new.grad[0].tolist() == pytest.approx([0.0, 0.0, -1.1 / 4, -0.5 / 4, 0.0])


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    adv = torch.tensor([[1.0, -2.0, 4.0], [0.5, 3.0, -8.0]])
    mask = prefix_mask([3, 2], 3)
    loss, clipfrac, approxkl = policy_loss(old.clone(), old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 4.0 + 0.5 + 3.0) / 5)
    assert clipfrac.item() == 0.0
    assert approxkl.item() == 0.0


def test_value_loss_clipping():
    new = torch.tensor([[1.0, 0.0, 0.5, 123.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, -50.0]])
    mask = prefix_mask([3], 4)
    loss, clipfrac = value_loss(new, old, returns, mask, clip_value=0.2)
    # t0: clip(1.0) = 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69  clipped term wins
    # t1: clip(0.0) = 0.3 -> max(0, 0.09)             = 0.09  clipped term wins
    # t2: inside the band -> 0.25 both                         unclipped
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 0.25) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    loss.backward()
    # only t2 gets gradient: 0.5 * 2 (v - R) / 3
    assert new.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.5 / 3, 0.0])


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 0.0, 0.0]])
    mask = prefix_mask([3, 2], 4)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    mean = torch.full_like(returns, 3.0)  # the mean of the valid returns
    assert explained_variance(mean, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    values = torch.tensor([[1.5, 2.0, 2.0, -7.0], [4.0, 6.0, 0.0, 0.0]])
    vr = [1.0, 2.0, 3.0, 4.0, 5.0]
    vv = [1.5, 2.0, 2.0, 4.0, 6.0]
    diff = [r - v for r, v in zip(vr, vv, strict=True)]
    want = 1.0 - statistics.pvariance(diff) / statistics.pvariance(vr)
    assert explained_variance(values, returns, mask).item() == pytest.approx(want)
    assert math.isnan(explained_variance(values, torch.ones(2, 4), mask).item())


# ---------------------------------------------------------------------------------------------
# critic-free estimators (grpo, rloo, reinforce_pp) and loss aggregation
# ---------------------------------------------------------------------------------------------

# Two prompts of 3 and 2 replies, interleaved (groups need not be adjacent), and a singleton.
SCORES = [1.0, 4.0, 0.0, 2.0, 3.0, 7.0]
GROUPS = [0, 1, 0, 0, 1, 2]


def _naive_group_stats(scores, groups, i):
    mine = [s for s, g in zip(scores, groups, strict=True) if g == groups[i]]
    return mine, statistics.mean(mine), (statistics.stdev(mine) if len(mine) > 1 else None)


def test_grpo_advantages_match_a_naive_loop_for_each_scale():
    scores, groups = torch.tensor(SCORES), torch.tensor(GROUPS)
    batch_std = statistics.stdev(SCORES)
    for scale in ("group", "batch", "none"):
        naive = []
        for i, r in enumerate(SCORES):
            mine, mean, std = _naive_group_stats(SCORES, GROUPS, i)
            if len(mine) < 2:
                naive.append(0.0)  # a reply alone in its group has no baseline
            elif scale == "group":
                naive.append((r - mean) / (std + 1e-4))
            elif scale == "batch":
                naive.append((r - mean) / (batch_std + 1e-4))
            else:
                naive.append(r - mean)
        got = grpo_advantages(scores, groups, scale)
        assert got.tolist() == pytest.approx(naive, abs=1e-12), scale
    # hand values, group 0 = {1, 0, 2}: mean 1, std 1; group 1 = {4, 3}: mean 3.5, std √0.5
    got = grpo_advantages(scores, groups, "group")
    assert got[[0, 2, 3]].tolist() == pytest.approx([0.0, -1 / 1.0001, 1 / 1.0001])
    assert got[1].item() == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4))
    assert grpo_advantages(scores, groups, "none")[[1, 4]].tolist() == [0.5, -0.5]


def test_rloo_advantages_match_a_naive_leave_one_out_loop():
    naive = []
    for i, r in enumerate(SCORES):
        others = [
            s
            for j, (s, g) in enumerate(zip(SCORES, GROUPS, strict=True))
            if g == GROUPS[i] and j != i
        ]
        naive.append(r - statistics.mean(others) if others else 0.0)
    got = rloo_advantages(torch.tensor(SCORES), torch.tensor(GROUPS))
    assert got.tolist() == pytest.approx(naive, abs=1e-12)
    # hand values: reply 0 (1.0) against the mean of {0, 2} = 1 → 0; reply 1 (4) − 3 = 1
    assert got.tolist() == pytest.approx([0.0, 1.0, -1.5, 1.5, -1.0, 0.0])
    # = n/(n-1) × the group-centred score (Ahmadian et al. 2024)
    centred = grpo_advantages(torch.tensor(SCORES), torch.tensor(GROUPS), "none")
    assert got[[0, 2, 3]].tolist() == pytest.approx((1.5 * centred[[0, 2, 3]]).tolist())


def test_discounted_returns_match_a_naive_loop_and_zero_padding():
    torch.manual_seed(0)
    rewards = torch.randn(3, 5)
    mask = prefix_mask([5, 2, 0], 5)
    rewards[1, 3] = math.nan  # on padding: never read
    got = discounted_returns(rewards, mask, gamma=0.9)
    for b, n in enumerate([5, 2, 0]):
        for t in range(5):
            want = sum(0.9 ** (k - t) * float(rewards[b, k]) for k in range(t, n)) if t < n else 0.0
            assert float(got[b, t]) == pytest.approx(want, abs=1e-12), (b, t)


def test_reinforce_pp_returns_are_batch_whitened_discounted_returns():
    torch.manual_seed(1)
    rewards = torch.randn(3, 4)
    lengths = [4, 2, 3]
    mask = prefix_mask(lengths, 4)
    got = reinforce_pp_returns(rewards, mask, gamma=0.5)
    # naive: every valid token's return, whitened with the statistics of all valid tokens
    flat = []
    for b, n in enumerate(lengths):
        for t in range(n):
            flat.append(sum(0.5 ** (k - t) * float(rewards[b, k]) for k in range(t, n)))
    mean, std = statistics.mean(flat), statistics.stdev(flat)
    i = 0
    for b, n in enumerate(lengths):
        for t in range(4):
            want = (flat[i] - mean) / math.sqrt(std**2 + 1e-8) if t < n else 0.0
            i += t < n
            assert float(got[b, t]) == pytest.approx(want, abs=1e-9), (b, t)
    assert float(masked_mean(got, mask)) == pytest.approx(0.0, abs=1e-12)


def test_aggregate_loss_token_mean_and_seq_mean_by_hand():
    losses = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 9.0, 9.0, 9.0], [2.0, 2.0, 2.0, 2.0]])
    mask = prefix_mask([4, 1, 0], 4)
    # token_mean: (1+1+1+1+5) / 5 tokens; the long reply carries 4/5 of the weight (DAPO)
    assert aggregate_loss(losses, mask, "token_mean").item() == pytest.approx(9 / 5)
    # seq_mean: (1 + 5) / 2 replies; the 1-token reply weighs as much as the 4-token one
    assert aggregate_loss(losses, mask, "seq_mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="seq_mean"):
        aggregate_loss(losses, mask, "sum")  # type: ignore[arg-type]


def test_kl_loss_is_aggregated_k3_with_gradient_through_the_policy_only():
    new = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -9.0, -9.0]], requires_grad=True)
    mask = prefix_mask([3, 1], 3)
    naive = [
        math.exp(r - n) - (r - n) - 1 for n, r in ((-1, -1.5), (-2, -1), (-0.5, -0.5), (-0.3, -0.2))
    ]
    loss = kl_loss(new, ref, mask, "token_mean")
    assert loss.item() == pytest.approx(sum(naive) / 4)
    assert kl_loss(new, ref, mask, "seq_mean").item() == pytest.approx(
        (sum(naive[:3]) / 3 + naive[3]) / 2
    )
    loss.backward()
    assert ref.grad is None
    # d/dn [exp(r - n) - (r - n) - 1] = 1 - exp(r - n), / 4 tokens; 0 on padding
    want = [[(1 - math.exp(-0.5)) / 4, (1 - math.exp(1)) / 4, 0.0], [(1 - math.exp(0.1)) / 4, 0, 0]]
    assert torch.allclose(new.grad, torch.tensor(want))


def test_policy_loss_seq_mean_weights_replies_equally():
    new = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-4.0, 0.0, 0.0]])
    mask = prefix_mask([3, 1], 3)
    # ratio 1: loss = -mean(A); token_mean (-1-1-1+4)/4, seq_mean (-1 + 4)/2
    assert policy_loss(new, new, adv, mask, 0.2)[0].item() == pytest.approx(0.25)
    assert policy_loss(new, new, adv, mask, 0.2, "seq_mean")[0].item() == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_two_updates_by_hand():
    ctl = AdaptiveKLController(init=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=64)  # 9/6 - 1 = 0.5 -> clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10_000))
    ctl.update(current_kl=5.4, n_steps=512)  # 5.4/6 - 1 = -0.1 (inside the clip)
    assert ctl.value == pytest.approx(0.1 * 1.00128 * (1 - 0.1 * 512 / 10_000))
    ctl.update(current_kl=0.0, n_steps=100)  # -1 -> clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.00128 * 0.99488 * (1 - 0.2 * 100 / 10_000))

    restored = AdaptiveKLController(init=0.1, target=6.0, horizon=10_000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    with pytest.raises(ValueError):
        AdaptiveKLController(init=0.1, target=0.0, horizon=10)


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=64)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_adaptive_kl_controller_ignores_a_non_finite_kl():
    ctl = AdaptiveKLController(init=0.1, target=6.0, horizon=10_000)
    for kl in (math.nan, math.inf, -math.inf):
        ctl.update(kl, n_steps=1000)
        assert ctl.value == 0.1
    ctl.update(12.0, n_steps=1000)  # a finite KL still moves β: +20% * 1000 / 10000
    assert ctl.value == pytest.approx(0.1 * 1.02)


def test_nonfinite_rows_checks_scores_and_valid_tokens_only():
    mask = prefix_mask([3, 2, 1, 3], 3)
    logp = torch.zeros(4, 3)
    logp[1, 2] = math.nan  # on padding: ignored
    logp[2, 0] = -math.inf  # on row 2's only token
    values = torch.zeros(4, 3)
    values[3, 1] = math.inf
    scores = torch.tensor([math.nan, 0.5, 0.5, 0.5])
    assert nonfinite_rows(scores, mask, logp, values).tolist() == [True, False, True, True]
    assert nonfinite_rows(torch.zeros(4), mask).tolist() == [False] * 4
    # a naive loop over rows and valid positions agrees
    naive = [
        not math.isfinite(float(scores[b]))
        or any(
            not math.isfinite(float(x[b, t]))
            for x in (logp, values)
            for t in range(3)
            if mask[b, t]
        )
        for b in range(4)
    ]
    assert nonfinite_rows(scores, mask, logp, values).tolist() == naive
