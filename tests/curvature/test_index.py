import math

import pytest
import torch

from surfacekit.curvature import index
from surfacekit.problems import two_weight as toy_loss


@pytest.mark.parametrize("relative", [1e-6, 1e-5, 1e-3])
def test_index_equals_dense_count(mlp, relative):
    scale = mlp.eigenvalues.abs().max()
    res = index(mlp.loss_fn, mlp.theta, relative_threshold=relative)
    expected = int((mlp.eigenvalues < -relative * scale).sum())
    assert res.method == "dense" and not res.at_least
    assert res.count == expected and res.fraction == expected / mlp.theta.numel()
    assert math.isclose(res.threshold, -relative * float(scale), rel_tol=1e-12)
    assert math.isclose(res.relative_threshold, -relative, rel_tol=1e-12)
    # the problem is meant to be hard: many near-zero eigenvalues around the threshold
    assert (mlp.eigenvalues.abs() < 1e-4 * scale).sum() > 100 and 0 < expected < 100


@pytest.mark.parametrize("block", [1, 4, 8])
@pytest.mark.parametrize("threshold", [None, -1e-3, -1e-6])
def test_lanczos_path_agrees_with_dense(small_mlp, threshold, block):
    dense = index(small_mlp.loss_fn, small_mlp.theta, threshold, method="dense")
    lanc = index(small_mlp.loss_fn, small_mlp.theta, threshold, method="lanczos", block=block)
    assert lanc.method == "lanczos"
    assert lanc.count == dense.count == int((small_mlp.eigenvalues < dense.threshold).sum())
    assert math.isclose(lanc.threshold, dense.threshold, rel_tol=1e-10)


def test_cap_gives_at_least(small_mlp):
    res = index(small_mlp.loss_fn, small_mlp.theta, method="lanczos", cap=5, block=4)
    assert res.count == 5 and res.at_least
    exact = index(small_mlp.loss_fn, small_mlp.theta, method="lanczos", cap=1000)
    assert exact.count > 5 and not exact.at_least


def test_threshold_zero_warns(mlp):
    with pytest.warns(UserWarning, match="not numerically resolvable"):
        res = index(mlp.loss_fn, mlp.theta, threshold=0.0)
    # The signs of the rounding-level eigenvalues are noise (two exact ways of computing the Hessian,
    # e.g. the graph and jvp products, disagree on them), which is why 0 is not a usable threshold.
    tiny = int((mlp.eigenvalues.abs() < 1e-10 * mlp.eigenvalues.abs().max()).sum())
    assert tiny > 0
    assert abs(res.count - int((mlp.eigenvalues < 0).sum())) <= tiny


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_toy_surface(method):
    origin = torch.zeros(2)
    w = math.sqrt(1.46)
    for point, expected in [(origin, 1), (torch.tensor([w, w]), 0), (torch.tensor([-w, -w]), 0)]:
        grad = torch.func.grad(toy_loss)(point)
        assert grad.norm() < 1e-12
        assert index(toy_loss, point, method=method).count == expected


def test_rejects_unknown_method(mlp):
    with pytest.raises(ValueError):
        index(mlp.loss_fn, mlp.theta, method="density")


@pytest.mark.parametrize("relative", [1e-6, 1e-5, 1e-3])
def test_locking_lanczos_equals_dense_on_crowded_tail(mlp, relative):
    """P = 610 with >100 eigenvalues within 1e-4 max|lambda| of zero: the hard case for Lanczos."""
    scale = mlp.eigenvalues.abs().max()
    res = index(mlp.loss_fn, mlp.theta, relative_threshold=relative, method="lanczos")
    assert res.method == "lanczos" and not res.at_least
    assert res.count == int((mlp.eigenvalues < -relative * scale).sum())
    assert math.isclose(res.max_abs_eigenvalue, float(scale), rel_tol=1e-9)


@pytest.mark.parametrize("seed", [1, 2])
def test_locking_lanczos_exact_for_other_starts(mlp, seed):
    res = index(mlp.loss_fn, mlp.theta, method="lanczos", seed=seed)
    assert res.count == int((mlp.eigenvalues < res.threshold).sum())


def test_locking_lanczos_small_basis_restarts_and_stays_exact(mlp):
    res = index(mlp.loss_fn, mlp.theta, method="lanczos", basis_size=60)
    assert res.count == int((mlp.eigenvalues < res.threshold).sum())


def test_locking_lanczos_hvp_budget(mlp):
    """Measured: 461 products for the 41 eigenvalues below -1e-5 max|lambda|, 90 of them the completion
    certificate (the single-vector path without a certificate took 375; the fresh-start block path
    it replaced, 3110). Budget with margin: 600, about 15 per eigenvalue."""
    res = index(mlp.loss_fn, mlp.theta, method="lanczos")
    assert res.count == 41
    assert res.num_hvps <= 600 and 0 < res.certificate_hvps < res.num_hvps
    assert res.threshold <= res.certificate  # the first eigenvalue not counted


def test_locking_cap_gives_at_least(mlp):
    res = index(mlp.loss_fn, mlp.theta, method="lanczos", cap=10)
    assert res.count == 10 and res.at_least


@pytest.mark.parametrize("strategy", ["density", "blocks"])
def test_rejects_unknown_strategy(small_mlp, strategy):
    with pytest.raises(ValueError, match="strategy"):
        index(small_mlp.loss_fn, small_mlp.theta, method="lanczos", strategy=strategy)
