"""Statistics used by the analyses: bootstrap confidence intervals, correlations and their p-values.

Thin wrappers over ``scipy.stats.bootstrap`` (bias-corrected and accelerated, BCa, by default;
Efron 1987) and ``scipy.stats.permutation_test``, kept so the analyses state their statistic once
and get plain floats back. The statistics take an ``axis`` argument, so scipy evaluates all
resamples in one vectorized call.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Callable

import numpy as np
from scipy import stats


def bootstrap_ci(
    statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 2000, level: float = 0.90, seed: int = 0,
    paired: bool = False, method: str = "BCa",
) -> tuple[float, float, float]:
    """(estimate, low, high): bootstrap confidence interval of ``statistic(*samples)``.

    samples: 1-D arrays. Independent samples are resampled each on its own; ``paired=True`` resamples
    the same indices of every sample (e.g. ``bootstrap_ci(pearson, x, y, paired=True)``).
    ``method``: ``BCa`` (default), ``percentile`` or ``basic``, as in ``scipy.stats.bootstrap``.
    The statistic is called as ``statistic(*samples, axis=-1)`` when it accepts ``axis`` (vectorized),
    else once per resample. Cost: ``n_boot`` statistics (BCa adds one jackknife pass, n statistics).
    A degenerate bootstrap distribution (e.g. a constant sample) gives a NaN interval.

    Raises:
        ValueError: paired samples of different lengths, a level outside (0, 1).
    """
    samples = tuple(np.asarray(s, dtype=float) for s in samples)
    estimate = float(statistic(*samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap(samples, statistic, n_resamples=n_boot, confidence_level=level, paired=paired,
                                 method=method, random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return estimate, float(ci.low), float(ci.high)


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Pearson correlation of x and y along ``axis`` (NaN where either is constant)."""
    xc = x - np.mean(x, axis=axis, keepdims=True)
    yc = y - np.mean(y, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(xc * yc, axis=axis) / np.sqrt(np.sum(xc * xc, axis=axis) * np.sum(yc * yc, axis=axis))


def std(x: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Sample standard deviation (ddof = 1) along ``axis``."""
    return np.std(x, ddof=1, axis=axis)


def std_ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """std(x) / std(y) (ddof = 1), e.g. the narrowing of the loss spread between two widths."""
    return std(x, axis) / std(y, axis)


def _abs_pearson_against(fixed: np.ndarray, x: np.ndarray, axis: int = -1) -> np.ndarray:
    """|r(x, fixed)| along ``axis`` (x [..., n] permuted, ``fixed`` [n])."""
    return np.abs(pearson(x, fixed, axis))


def spearman_permutation(x: np.ndarray, y: np.ndarray, n_perm: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(rho, p): Spearman rank correlation and its two-sided permutation p-value.

    ``scipy.stats.permutation_test`` over pairings with the statistic |rho|: with ``n_perm`` random
    pairings p = (1 + #{|rho_perm| >= |rho|}) / (1 + n_perm); when n! <= n_perm every pairing is
    enumerated and p is exact (e.g. n = 5 and a monotone relation: p = 2/120). rho and p are NaN for
    fewer than 3 points or a constant variable; p is NaN for ``n_perm = 0``.

    Raises:
        ValueError: x and y differ in length.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    rho = float(stats.spearmanr(x, y).statistic)
    if n_perm <= 0:
        return rho, float("nan")
    # Only one sample is permuted (the pairings are what matter): n! distinct permutations, not (n!)^2.
    statistic = partial(_abs_pearson_against, stats.rankdata(y))
    result = stats.permutation_test((stats.rankdata(x),), statistic, permutation_type="pairings", vectorized=True,
                                    n_resamples=n_perm, alternative="greater", random_state=np.random.default_rng(seed))
    return rho, float(result.pvalue)
