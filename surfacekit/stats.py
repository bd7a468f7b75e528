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
