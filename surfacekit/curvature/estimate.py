"""An estimate of the number of eigenvalues below a threshold, with its interval: never an index.

Where neither the dense spectrum nor the certified Lanczos count is within reach, stochastic Lanczos
quadrature (SLQ, :func:`~.density.spectral_density`) still estimates the count (Di Napoli, Polizzi
and Saad 2016; Lin, Saad and Yang 2016). For a probe v drawn uniformly from the sphere, the spectral
measure seen from v, mu_v(S) = v^T 1_S(H) v, has expectation (number of eigenvalues in S) / P, so
``P mean_v mu_v((-inf, tau))`` is unbiased; m Lanczos steps give the m-point Gauss quadrature of
mu_v, and the Chebyshev-Markov-Stieltjes inequalities bracket the distribution function of mu_v
between sums of quadrature weights: with nodes theta_1 < ... < theta_m, weights w_i and
theta_j < tau <= theta_{j+1},

    sum_{i < j} w_i  <=  mu_v((-inf, tau))  <=  sum_{i <= j + 1} w_i

(Szego, *Orthogonal Polynomials*, 1939, Theorem 3.41.1; Golub and Meurant, *Matrices, Moments and
Quadrature with Applications*, 2010, ch. 6). The interval averages these per-probe brackets and
widens them by the sampling error, so it covers both the quadrature's resolution bias (which more
probes do not reduce) and the probe noise. The resolution is the gap theta_{j+1} - theta_j around
the threshold: a threshold closer to 0 than that lies inside the near-zero bulk of a trained
network's spectrum, and the point estimate is refused there (nan; the interval is still given).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from scipy.stats import norm

from .density import SpectralDensity


class CountEstimate(NamedTuple):
    """An estimate (not an index) of the eigenvalues below ``threshold``.

    estimate: P times the mean quadrature mass below the threshold (nan when not ``resolved``);
    low, high: the interval (counts) from the per-probe Chebyshev-Markov-Stieltjes brackets, widened
    by ``confidence`` normal quantiles of their standard errors, clipped to [0, P]; resolution: the
    mean gap between the quadrature nodes on either side of the threshold (eigenvalue units);
    resolved: |threshold| > resolution (else the estimate is refused); threshold: absolute
    (eigenvalue units); confidence; probes and steps of the SLQ run.
    """

    estimate: float
    low: float
    high: float
    resolution: float
    resolved: bool
    threshold: float
    confidence: float
    probes: int
    steps: int


def count_estimate(density: SpectralDensity, size: int, threshold: float, confidence: float = 0.95) -> CountEstimate:
    """Estimate, with an interval, the number of eigenvalues of an order-``size`` Hessian below ``threshold``.

    ``density``: SLQ nodes and weights [probes, m] (:func:`~.density.spectral_density`, Gaussian probes;
    at least 2 probes). Cost: none beyond the SLQ run. See the module docstring for the bounds.

    Raises:
        ValueError: fewer than 2 probes, a confidence outside (0, 1), or a threshold that is not finite.
    """
    nodes, weights = density.nodes, density.weights
    probes, steps = nodes.shape
    if probes < 2:
        raise ValueError("count_estimate needs at least 2 probes for its sampling error")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    order = torch.argsort(nodes, dim=1)
    nodes, weights = nodes.gather(1, order), weights.gather(1, order)
    cumulative = torch.cat([weights.new_zeros(probes, 1), weights.cumsum(dim=1)], dim=1)  # [probes, m + 1]
    below = (nodes < threshold).sum(dim=1)  # j: nodes strictly below the threshold
    rows = torch.arange(probes)
    inside = cumulative[rows, below]
    lower = cumulative[rows, (below - 1).clamp(min=0)]
    upper = cumulative[rows, (below + 1).clamp(max=steps)]
    tau = torch.full_like(inside, float(threshold))
    left = torch.where(below > 0, nodes[rows, (below - 1).clamp(min=0)], tau)  # the nodes around the threshold
    right = torch.where(below < steps, nodes[rows, below.clamp(max=steps - 1)], tau)
    resolution = float((right - left).mean())
    z = float(norm.ppf(0.5 + confidence / 2))
    low = size * (float(lower.mean()) - z * float(lower.std()) / probes**0.5)
    high = size * (float(upper.mean()) + z * float(upper.std()) / probes**0.5)
    resolved = abs(threshold) > resolution
    estimate = size * float(inside.mean()) if resolved else float("nan")
    return CountEstimate(estimate, max(low, 0.0), min(high, float(size)), resolution, resolved, float(threshold),
                         confidence, probes, steps)
