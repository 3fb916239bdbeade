"""Statistics for comparing two models on the same prompts.

Everything here takes per-prompt scores: ``a[i]`` and ``b[i]`` are the scores of model A
(e.g. PPO) and model B (e.g. the SFT baseline) on prompt ``i``, so every resampling is *paired*
— a bootstrap draw picks prompts, and both models' scores on a drawn prompt travel together.
That is what makes the comparison sensitive: prompt difficulty varies far more than the gap
between two checkpoints, and pairing cancels it out.

Pure numpy/scipy, no I/O; ``evaluate`` writes the results to its metrics file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _paired(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _as_1d(a, "a"), _as_1d(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(
            f"a and b must score the same prompts: got {a_arr.size} and {b_arr.size} scores"
        )
    return a_arr, b_arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``x``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return x[idx].mean(axis=1)


def _percentile_interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def mean_ci(
    x: ArrayLike, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``x`` and its percentile-bootstrap confidence interval.

    Draws ``n_boot`` resamples of ``x`` with replacement and returns ``(mean, lo, hi)`` where
    ``lo``/``hi`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
    the resampled means (Efron & Tibshirani 1993, ch. 13). Deterministic for a fixed ``seed``.
    """
    arr = _as_1d(x, "x")
    _check_confidence(confidence)
    _check_n_boot(n_boot)
    lo, hi = _percentile_interval(_bootstrap_means(arr, n_boot, seed), confidence)
    return float(arr.mean()), lo, hi


def _win_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # 1 for a win, 0.5 for a tie, 0 for a loss: a tie is half a win for each side, so
    # win_rate(a, b) + win_rate(b, a) == 1 and two identical models score exactly 0.5.
    return (a > b).astype(np.float64) + 0.5 * (a == b)


def win_rate(a: ArrayLike, b: ArrayLike) -> float:
    """Fraction of prompts where ``a`` scores higher than ``b``; ties count as 0.5.

    ``win_rate(a, b) + win_rate(b, a) == 1``, and a model compared with itself scores 0.5.
    """
    a_arr, b_arr = _paired(a, b)
    return float(_win_scores(a_arr, b_arr).mean())


def win_rate_ci(
    a: ArrayLike,
    b: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Win rate of ``a`` over ``b`` (ties 0.5) with a paired percentile-bootstrap CI.

    Prompts are resampled with replacement, each drawn prompt keeping both models' scores,
    so the interval reflects prompt-sampling noise. Returns ``(rate, lo, hi)``.
    """
    a_arr, b_arr = _paired(a, b)
    _check_confidence(confidence)
    _check_n_boot(n_boot)
    wins = _win_scores(a_arr, b_arr)
    lo, hi = _percentile_interval(_bootstrap_means(wins, n_boot, seed), confidence)
    return float(wins.mean()), lo, hi


def paired_test(a: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """Paired significance tests of ``a`` against ``b`` (both two-sided).

    Returns a dict with

    - ``mean_diff``: ``mean(a - b)``;
    - ``wilcoxon_p``: Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``,
      ``zero_method="wilcox"``: prompts where ``a == b`` are dropped before ranking, the
      textbook test and scipy's default);
    - ``ttest_p``: paired t-test p-value (``scipy.stats.ttest_rel``);
    - ``n``: the number of pairs.

    Degenerate inputs are handled without warnings: when every difference is zero both
    p-values are 1.0 (no evidence of a difference); when the differences are a nonzero
    constant the t-test p-value is 0.0 (infinite t statistic); with a single pair the t-test
    is undefined and its p-value is NaN.
    """
    a_arr, b_arr = _paired(a, b)
    diff = a_arr - b_arr
    n = diff.size
    mean_diff = float(diff.mean())
    if not np.any(diff):
        return {"mean_diff": 0.0, "wilcoxon_p": 1.0, "ttest_p": 1.0, "n": n}

    with warnings.catch_warnings():
        # scipy warns about ties/zeros switching to the normal approximation; that is expected.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        wilcoxon_p = float(sps.wilcoxon(a_arr, b_arr, zero_method="wilcox").pvalue)

    if n < 2:
        ttest_p = float("nan")
    elif np.all(diff == diff[0]):
        ttest_p = 0.0
    else:
        ttest_p = float(sps.ttest_rel(a_arr, b_arr).pvalue)
    return {"mean_diff": mean_diff, "wilcoxon_p": wilcoxon_p, "ttest_p": ttest_p, "n": n}


def paired_bootstrap_pvalue(a: ArrayLike, b: ArrayLike, n_boot: int = 2000, seed: int = 0) -> float:
    """Two-sided paired-bootstrap p-value for ``mean(a) != mean(b)``.

    Koehn (2004) "Statistical Significance Tests for Machine Translation Evaluation" resamples
    the test prompts with replacement and looks at how often the sign of the difference
    survives. We use the two-sided form that sacrebleu's ``--paired-bs`` follows (after
    Berg-Kirkpatrick et al. 2012 and multeval): the bootstrap distribution of the mean
    difference ``d*`` is shifted to mean zero to simulate the null, and

        p = (1 + #{|d* - mean(d*)| >= |d|}) / (1 + n_boot)

    where ``d = mean(a - b)`` on the real data. The +1 keeps the test from rejecting more often
    than its level (Davison & Hinkley 1997); identical systems get p = 1.0.
    """
    a_arr, b_arr = _paired(a, b)
    _check_n_boot(n_boot)
    diff = a_arr - b_arr
    observed = abs(float(diff.mean()))
    boot = _bootstrap_means(diff, n_boot, seed)
    centred = np.abs(boot - boot.mean())
    # A tiny tolerance so that float round-off in the resampled means does not decide ties
    # (e.g. identical systems, where every |d*| and |d| are 0 up to ~1e-17).
    exceed = int(np.sum(centred >= observed - 1e-12))
    return (exceed + 1) / (n_boot + 1)


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 100) -> np.ndarray:
    """``(intercept, slope)`` of ``P(y = 1) = sigmoid(w0 + w1 x)``, by Newton's method (IRLS).

    ``y`` may be fractional (a tie is 0.5): the Bernoulli log-likelihood ``y log p +
    (1 - y) log(1 - p)`` is defined for any ``y`` in [0, 1], and its maximiser is the same as
    with every tie split into half a win and half a loss. ``l2`` is a ridge penalty
    ``l2 / 2 * w1**2`` on the slope only (the intercept is the quantity reported, so it is
    not shrunk); it keeps the slope finite when length separates wins from losses exactly
    (then no intercept is "right" and the result says little; with ~60 noisy prompts that
    is rare).
    """
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.diag([0.0, l2])
    w = np.zeros(2)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (y - p) - penalty @ w
        hess = design.T @ (design * (p * (1.0 - p))[:, None]) + penalty
        # a tiny jitter: with every y equal the intercept runs off and p(1-p) underflows
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        w = w + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def length_controlled_win_rate(
    a: ArrayLike, b: ArrayLike, len_a: ArrayLike, len_b: ArrayLike, *, l2: float = 0.01
) -> float:
    """Win rate of ``a`` over ``b`` had both replies been equally long (ties count 0.5).

    A simplified AlpacaEval 2 length-controlled win rate (Dubois et al. 2024, "Length-
    Controlled AlpacaEval", arXiv:2404.04475, eq. 2 without the instruction-difficulty term):
    a logistic regression of the per-prompt preference (1 when ``a[i] > b[i]``, 0.5 on a tie,
    0 otherwise) on the standardised length difference ``len_a[i] - len_b[i]`` with an
    intercept; the LC win rate is ``sigmoid(intercept)``, the predicted win probability at
    zero length difference. When wins are fully explained by length it is near 0.5 while the
    raw win rate is not; without a length effect it matches the raw win rate.

    The fit is a few Newton steps in numpy rather than scikit-learn's ``LogisticRegression``:
    that takes class labels (a tie would have to be two half-weighted rows), penalises
    through ``C`` in the original units, and costs an import of seconds for 20 lines of math.
    With no spread in the length difference the intercept alone is fitted (LC = raw).
    """
    a_arr, b_arr = _paired(a, b)
    la, lb = _paired(len_a, len_b)
    if la.shape != a_arr.shape:
        raise ValueError(f"lengths for {la.size} replies, scores for {a_arr.size}")
    y = _win_scores(a_arr, b_arr)
    diff = la - lb
    sd = float(diff.std())
    # Scaled, not centred: zero length difference must stay at x = 0, where the intercept is read.
    x = diff / sd if sd > 0 else np.zeros_like(diff)
    w = _logistic_fit(x, y, l2)
    return float(1.0 / (1.0 + np.exp(-w[0])))


def t_interval(x: ArrayLike, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean of ``x`` and its Student-t confidence interval, ``(mean, lo, hi)``.

    For a handful of independent runs (seeds), where a bootstrap of 3 values is meaningless:
    ``mean ± t_{(1+confidence)/2, n-1} · s / sqrt(n)`` with ``s`` the sample standard
    deviation. With one value there is no spread to estimate: ``lo`` and ``hi`` are None.
    """
    arr = _as_1d(x, "x")
    _check_confidence(confidence)
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None, None
    half = float(sps.t.ppf((1 + confidence) / 2, arr.size - 1)) * float(
        arr.std(ddof=1) / np.sqrt(arr.size)
    )
    return mean, mean - half, mean + half
