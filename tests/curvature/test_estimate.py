"""The SLQ count estimate: labelled an estimate, its interval covers the exact count, and a threshold
inside the quadrature's resolution is refused."""

import math

import numpy as np
import pytest
import torch

from surfacekit import problems
from surfacekit.curvature import SpectralDensity, count_estimate, spectral_density


def negative_tail(p: int = 300) -> problems.Problem:
    """A bulk of 200 near-zero eigenvalues (|lambda| <= 1e-3), 60 negatives in [-1, -0.05], positives up to 5."""
    values = list(np.linspace(-1.0, -0.05, 60)) + list(np.linspace(-1e-3, 1e-3, 200)) + list(np.linspace(0.1, 5, p - 260))
    return problems.designed("negative tail", values, seed=4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interval_covers_the_exact_count(seed):
    c = negative_tail()
    eig = c.eigenvalues
    density = spectral_density(c.loss_fn, c.theta, num_probes=20, num_steps=40, seed=seed)
    tau = -0.5  # inside the negative tail, far from the bulk: resolvable
    est = count_estimate(density, len(eig), tau)
    exact = int((eig < tau).sum())
    assert est.resolved and est.low <= exact <= est.high, (est, exact)
    assert est.low <= est.estimate <= est.high and abs(est.estimate - exact) < 0.25 * exact
    assert est.resolution < abs(tau) and est.threshold == tau and (est.probes, est.steps) == (20, 40)


def test_threshold_inside_the_resolution_is_refused():
    c = negative_tail()
    eig = c.eigenvalues
    density = spectral_density(c.loss_fn, c.theta, num_probes=10, num_steps=30)
    tau = -1e-5 * float(eig.abs().max())  # inside the near-zero bulk: the nodes around it straddle 0
    est = count_estimate(density, len(eig), tau)
    assert not est.resolved and math.isnan(est.estimate)
    assert est.resolution > abs(tau)
    assert est.low <= int((eig < tau).sum()) <= est.high  # the interval still holds, and is wide
    assert est.high - est.low > 50


def test_brackets_on_an_exact_quadrature():
    """Two probes that each see the whole (3-point) spectrum: the brackets are sums of node weights."""
    nodes = torch.tensor([[-3.0, -2.5, 2.0], [-3.0, -2.5, 2.0]])
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    est = count_estimate(SpectralDensity(nodes, weights, 0), 10, -2.7)
    # one node below -2.7 (j = 1): lower bound sum_{i<1} = 0, upper sum_{i<=2} = w1 + w2, estimate w1
    assert est.resolved and est.estimate == pytest.approx(10 * 0.3)
    se_upper = float(torch.tensor([0.5, 0.8]).std()) / math.sqrt(2)
    assert est.low == 0.0 and est.high == pytest.approx(min(10 * (0.65 + 1.959963984540054 * se_upper), 10))
    assert est.resolution == pytest.approx(0.5)


def test_needs_two_probes():
    d = SpectralDensity(torch.zeros(1, 3), torch.full((1, 3), 1 / 3), 0)
    with pytest.raises(ValueError, match="at least 2 probes"):
        count_estimate(d, 3, -1.0)
