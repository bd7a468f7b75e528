"""Small statistics used by the analyses: bootstrap confidence intervals and correlations."""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_ci(
    statistic: Callable[..., float], *samples: np.ndarray, n_boot: int = 2000, level: float = 0.90, seed: int = 0
) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap of ``statistic`` over independent samples.

    Each sample is resampled on its own with replacement (paired columns must be passed as one 2-D
    array whose rows are resampled together).
    """
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*samples))
    draws = np.empty(n_boot)
    for b in range(n_boot):
        draws[b] = statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples))
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [alpha, 1.0 - alpha])
    return estimate, float(low), float(high)


def pearson(pairs: np.ndarray) -> float:
    """Pearson correlation of the two columns of ``pairs`` [n, 2]."""
    return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])


def std(x: np.ndarray) -> float:
    """Sample standard deviation (ddof = 1)."""
    return float(np.std(x, ddof=1))


def spearman_permutation(x: np.ndarray, y: np.ndarray, n_perm: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(rho, p): Spearman rank correlation and its two-sided permutation p-value.

    p = (1 + #{|rho_perm| >= |rho|}) / (1 + n_perm) over ``n_perm`` shuffles of y (nan if n_perm = 0
    or fewer than 3 points; rho is nan when either variable is constant).
    """
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    if len(x) < 3:
        return float("nan"), float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan"), float("nan")
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if n_perm <= 0:
        return rho, float("nan")
    rng = np.random.default_rng(seed)
    rx_c = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    ry_c = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    perms = np.stack([rng.permutation(ry_c) for _ in range(n_perm)])
    null = perms @ rx_c
    return rho, float((1 + np.sum(np.abs(null) >= abs(rho) - 1e-12)) / (1 + n_perm))
