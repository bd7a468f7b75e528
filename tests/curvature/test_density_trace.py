import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from surfacekit.curvature import density_on_grid, hutchinson_trace, spectral_density


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_slq_matches_exact_distribution(problem, distribution):
    d = spectral_density(problem.loss_fn, problem.theta, num_probes=10, num_steps=60, distribution=distribution)
    assert d.nodes.shape == d.weights.shape == (10, 60)
    torch.testing.assert_close(d.weights.sum(dim=1), torch.ones(10))
    eig = problem.eigenvalues.numpy()
    w1 = wasserstein_distance(d.nodes.flatten().numpy(), eig, d.weights.flatten().numpy())
    assert w1 / (eig[-1] - eig[0]) < 0.01
    # extreme Ritz nodes converge to the extreme eigenvalues
    assert abs(d.nodes.max() - eig[-1]) < 1e-8 * abs(eig[-1])


def test_density_on_grid_integrates_to_one(mlp):
    d = spectral_density(mlp.loss_fn, mlp.theta, num_probes=4, num_steps=40)
    grid, values = density_on_grid(d, num_points=20001)
    assert grid.shape == values.shape == (20001,)
    assert abs(float(torch.trapezoid(values, grid)) - 1) < 1e-3


def test_hutchinson_trace(problem):
    exact = float(problem.eigenvalues.sum())
    est = hutchinson_trace(problem.loss_fn, problem.theta, num_probes=200)
    assert est.num_hvps == 200 and len(est.samples) == 200
    assert abs(est.estimate - exact) < 4 * est.stderr


def test_trace_negative_does_not_stop_early():
    a = -torch.diag(torch.arange(1.0, 21.0))
    est = hutchinson_trace(lambda t: 0.5 * t @ a @ t, torch.zeros(20), num_probes=50, batch_size=7)
    assert est.num_hvps == 50
    assert np.isclose(est.estimate, float(a.trace()))  # Rademacher is exact on a diagonal matrix
