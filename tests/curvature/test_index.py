import math

import pytest
import torch

from surfacekit.curvature import MemoryLimitError, dense_bytes, index, index_method
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
    with pytest.warns(UserWarning, match="not numerically resolvable") as caught:
        res = index(mlp.loss_fn, mlp.theta, threshold=0.0)
    assert sum("not numerically resolvable" in str(w.message) for w in caught) == 1  # once, not per layer
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


def test_dense_limit_follows_memory(mlp):
    p = mlp.theta.numel()
    assert index_method(p, memory_limit=dense_bytes(p)) == "dense"
    assert index_method(p, memory_limit=dense_bytes(p) - 1) == "lanczos"
    assert index_method(p, memory_limit=dense_bytes(p), dense_limit=p - 1) == "lanczos"
    assert index_method(5000, memory_limit=dense_bytes(5000)) == "inertia"  # past DENSE_EIG_LIMIT
    auto = index(mlp.loss_fn, mlp.theta, memory_limit=dense_bytes(p) - 1, cap=100, basis_size=60)
    assert auto.method == "lanczos" and auto.count == int((mlp.eigenvalues < auto.threshold).sum())
    for method in ("dense", "inertia"):
        with pytest.raises(MemoryLimitError, match=rf"index \({method}\): a {p} x {p} float64 Hessian.*needs about"):
            index(mlp.loss_fn, mlp.theta, method=method, memory_limit=dense_bytes(p) - 1)


@pytest.mark.parametrize("relative", [1e-6, 1e-3])
def test_inertia_equals_dense_count(mlp, relative):
    dense = index(mlp.loss_fn, mlp.theta, relative_threshold=relative, method="dense")
    inertia = index(mlp.loss_fn, mlp.theta, relative_threshold=relative, method="inertia")
    assert inertia.method == "inertia" and inertia.count == dense.count
    assert math.isclose(inertia.threshold, dense.threshold, rel_tol=1e-10)
    assert math.isclose(inertia.certificate, dense.certificate, rel_tol=1e-8)


def test_structured_assembly_gives_the_same_index(float64):
    from surfacekit.models import MLPSpec
    from surfacekit.objective import affine_input, objective_fn
    from surfacekit.population import flatten, init_population

    spec = MLPSpec(5, (4,), 3, activation="tanh")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    theta = flatten(init_population(spec, [1]))[0] + 0.5 * torch.randn(spec.in_dim * 4 + 4 + 12 + 3, generator=g)
    loss_fn = objective_fn(spec, x, y, "cross_entropy", objective="data")
    structure = affine_input(spec, x, y, "cross_entropy", objective="data")
    for method in ("dense", "inertia"):
        plain = index(loss_fn, theta, method=method)
        fast = index(loss_fn, theta, method=method, structure=structure)
        assert fast.count == plain.count > 0
        assert abs(fast.certificate - plain.certificate) <= 1e-10 * plain.max_abs_eigenvalue
        assert fast.num_hvps < plain.num_hvps  # passes: 4 + 19 against P = 39 products


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_a_threshold_on_an_eigenvalue_warns_on_every_path(method):
    """Found by a new-user trial: with the threshold equal to an eigenvalue the Lanczos count was one
    above the dense (strict) count, and the promised warning came in 1 of 4 cases."""
    from surfacekit.problems import background, designed

    case = designed("tail", background(120, [-1.0, -0.8, -0.3]), seed=4)
    tau = float(case.eigenvalues[1])  # -0.8, as computed
    with pytest.warns(UserWarning, match="within its residual or rounding of the threshold"):
        res = index(case.loss_fn, case.theta, threshold=tau, method=method)
    assert res.count in (1, 2)  # which one is decided by rounding: hence the warning
