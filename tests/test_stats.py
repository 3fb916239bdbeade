"""Unit tests for rlhf_lab.evaluation.stats: hand-computed values and known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_lab.evaluation.stats import (
    length_controlled_win_rate,
    mean_ci,
    paired_bootstrap_pvalue,
    paired_test,
    t_interval,
    win_rate,
    win_rate_ci,
)

# ---------------------------------------------------------------- mean_ci


def test_mean_ci_hand_case() -> None:
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0], n_boot=500)
    assert mean == 2.0
    # Every resampled mean of {1, 2, 3} lies in [1, 3].
    assert 1.0 <= lo <= mean <= hi <= 3.0


def test_mean_ci_constant_sample_has_zero_width() -> None:
    assert mean_ci([0.7] * 10, n_boot=100) == pytest.approx((0.7, 0.7, 0.7))


def test_mean_ci_is_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(1).normal(size=50)
    assert mean_ci(x, seed=3, n_boot=300) == mean_ci(x, seed=3, n_boot=300)
    assert mean_ci(x, seed=3, n_boot=300) != mean_ci(x, seed=4, n_boot=300)


def test_mean_ci_wider_at_higher_confidence() -> None:
    x = np.random.default_rng(2).normal(size=80)
    _, lo90, hi90 = mean_ci(x, confidence=0.90, n_boot=1000)
    _, lo99, hi99 = mean_ci(x, confidence=0.99, n_boot=1000)
    assert lo99 < lo90 < hi90 < hi99


def test_mean_ci_coverage_on_normal_samples() -> None:
    # 200 samples of size 100 from N(0.3, 1): a 95% interval should cover 0.3 about 95% of the
    # time. Percentile bootstrap undercovers slightly at n=100, hence the 90-99% band.
    rng = np.random.default_rng(1234)
    covered = 0
    for rep in range(200):
        x = rng.normal(0.3, 1.0, size=100)
        _, lo, hi = mean_ci(x, confidence=0.95, n_boot=1000, seed=rep)
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / 200 <= 0.99


@pytest.mark.parametrize(
    "kwargs",
    [{"x": []}, {"x": [[1.0, 2.0]]}, {"x": [1.0, float("nan")]}, {"x": [1.0], "confidence": 1.0}],
)
def test_mean_ci_rejects_bad_input(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        mean_ci(**kwargs)


# ---------------------------------------------------------------- win rate


def test_win_rate_counts_ties_as_half() -> None:
    a = [3.0, 1.0, 2.0, 2.0]
    b = [1.0, 2.0, 2.0, 0.0]
    # win, loss, tie, win -> (1 + 0 + 0.5 + 1) / 4
    assert win_rate(a, b) == 0.625
    assert win_rate(b, a) == 0.375


def test_win_rate_of_a_model_against_itself_is_half() -> None:
    a = [0.1, 0.5, 0.9]
    assert win_rate(a, a) == 0.5


def test_win_rate_ci_contains_rate_and_matches_win_rate() -> None:
    rng = np.random.default_rng(5)
    b = rng.normal(size=120)
    a = b + rng.normal(0.2, 1.0, size=120)
    rate, lo, hi = win_rate_ci(a, b, n_boot=500, seed=0)
    assert rate == win_rate(a, b)
    assert 0.0 <= lo <= rate <= hi <= 1.0


def test_win_rate_ci_all_wins_is_degenerate() -> None:
    assert win_rate_ci([2.0, 3.0, 4.0], [1.0, 1.0, 1.0], n_boot=100) == (1.0, 1.0, 1.0)


def test_win_rate_requires_paired_scores() -> None:
    with pytest.raises(ValueError, match="same prompts"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="same prompts"):
        win_rate_ci([1.0, 2.0], [1.0], n_boot=10)


# ---------------------------------------------------------------- paired tests


def test_paired_test_hand_values() -> None:
    b = [0.0, 0.0, 0.0, 0.0, 0.0]
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    out = paired_test(a, b)
    assert out["mean_diff"] == 3.0
    assert out["n"] == 5
    # Exact signed-rank test, all 5 differences positive: two-sided p = 2 / 2**5.
    assert out["wilcoxon_p"] == pytest.approx(2 / 32)


def test_paired_ttest_hand_value() -> None:
    # Differences 1, 2, 3: mean 2, sd 1, t = 2 * sqrt(3), df = 2. Student-t CDF with df = 2
    # is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - t / sqrt(2 + t^2).
    out = paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t = 2 * math.sqrt(3)
    assert out["ttest_p"] == pytest.approx(1 - t / math.sqrt(2 + t**2))


def test_paired_test_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(0.0, 1.0, size=200)
    a = rng.normal(0.5, 1.0, size=200)
    out = paired_test(a, b)
    assert out["wilcoxon_p"] < 0.01
    assert out["ttest_p"] < 0.01
    assert out["mean_diff"] == pytest.approx(float(np.mean(a - b)))


def test_paired_test_does_not_flag_a_null() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=200)
    b = rng.normal(0.0, 1.0, size=200)
    out = paired_test(a, b)
    assert out["wilcoxon_p"] > 0.05
    assert out["ttest_p"] > 0.05


def test_paired_test_all_zero_differences() -> None:
    a = [0.2, 0.4, 0.4]
    out = paired_test(a, list(a))
    assert out == {"mean_diff": 0.0, "wilcoxon_p": 1.0, "ttest_p": 1.0, "n": 3}


def test_paired_test_constant_nonzero_difference() -> None:
    out = paired_test([1.5, 2.5, 3.5, 4.5], [1.0, 2.0, 3.0, 4.0])
    assert out["mean_diff"] == 0.5
    assert out["ttest_p"] == 0.0  # infinite t statistic


def test_paired_test_single_pair() -> None:
    out = paired_test([1.0], [0.0])
    assert out["wilcoxon_p"] == 1.0
    assert math.isnan(out["ttest_p"])


def test_paired_bootstrap_identical_systems() -> None:
    a = np.random.default_rng(3).normal(size=50)
    assert paired_bootstrap_pvalue(a, a.copy(), n_boot=200) == 1.0


def test_paired_bootstrap_detects_a_shift() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(0.0, 1.0, size=200)
    a = rng.normal(0.5, 1.0, size=200)
    p = paired_bootstrap_pvalue(a, b, n_boot=1000, seed=0)
    assert p < 0.01
    # Nothing in the null distribution reaches |d| ~ 0.5 (se ~ 0.1): the smallest possible p.
    assert p == 1 / 1001


def test_paired_bootstrap_null_and_symmetry() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=200)
    b = rng.normal(0.0, 1.0, size=200)
    p = paired_bootstrap_pvalue(a, b, n_boot=1000, seed=0)
    assert p > 0.05
    # Two-sided: swapping the systems flips every difference and leaves p unchanged.
    assert paired_bootstrap_pvalue(b, a, n_boot=1000, seed=0) == pytest.approx(p)
    # ... and it agrees with the t-test to within bootstrap noise.
    assert p == pytest.approx(paired_test(a, b)["ttest_p"], abs=0.1)


# ---------------------------------------------------------------- length-controlled win rate


def test_lc_win_rate_removes_a_pure_length_effect() -> None:
    # a's reply is longer on most prompts, and whether it wins depends on nothing but the
    # length difference (P(win) = sigmoid(diff / 5), exactly 0.5 at equal length): the raw
    # win rate is far above 0.5, the length-controlled one is not
    rng = np.random.default_rng(0)
    n = 2000
    diff = rng.normal(8.0, 6.0, n)
    wins = rng.random(n) < 1 / (1 + np.exp(-diff / 5))
    a, b = wins.astype(float), np.full(n, 0.5)
    len_b = np.full(n, 30.0)
    assert win_rate(a, b) > 0.75
    lc = length_controlled_win_rate(a, b, len_b + diff, len_b)
    assert lc == pytest.approx(0.5, abs=0.04)


def test_lc_win_rate_equals_raw_without_a_length_effect() -> None:
    # lengths independent of the outcome: LC is the raw rate up to sampling noise
    rng = np.random.default_rng(1)
    n = 400
    a, b = rng.normal(0.3, 1.0, n), rng.normal(0.0, 1.0, n)
    len_a, len_b = rng.integers(5, 40, n).astype(float), rng.integers(5, 40, n).astype(float)
    assert length_controlled_win_rate(a, b, len_a, len_b) == pytest.approx(win_rate(a, b), abs=0.02)
    # no spread in the length difference: intercept only, exactly the raw rate (ties 0.5)
    same = np.full(4, 10.0)
    rate = length_controlled_win_rate([1, 1, 0, 2], [0, 1, 1, 1], same, same)
    assert rate == pytest.approx(win_rate([1, 1, 0, 2], [0, 1, 1, 1])) == pytest.approx(0.625)


def test_lc_win_rate_matches_a_hand_fitted_logistic_regression() -> None:
    # 6 prompts, fitted without penalty by brute force over a grid: the Newton fit agrees
    y = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.0])
    diff = np.array([3.0, 1.0, 0.0, -2.0, -1.0, 2.0])
    x = diff / diff.std()
    w0, w1 = np.meshgrid(np.linspace(-3, 3, 601), np.linspace(-3, 3, 601))
    z = w0[..., None] + w1[..., None] * x
    loglik = (y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z)).sum(-1)
    best = np.unravel_index(np.argmax(loglik), loglik.shape)
    a, b = y, np.full(6, 0.5)  # a > b exactly where y is 1, tie where 0.5
    got = length_controlled_win_rate(a, b, diff + 10, np.full(6, 10.0), l2=0.0)
    assert got == pytest.approx(1 / (1 + math.exp(-w0[best])), abs=2e-3)


def test_lc_win_rate_all_wins_is_one() -> None:
    lc = length_controlled_win_rate([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5, 9, 2], [4, 4, 4])
    assert lc > 0.99


# ---------------------------------------------------------------- t_interval


def test_t_interval_by_hand() -> None:
    # mean 2, s = 1, n = 3: half-width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - lo == pytest.approx(hi - mean)
    assert t_interval([5.0]) == (5.0, None, None)
    assert t_interval([0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
