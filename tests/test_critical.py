"""Critical-point finders: toy saddles, the deep linear autoencoder, gradient-flat endpoints, the task."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from surfacekit.critical import (
    classify,
    find,
    flatness_ratio,
    gradnorm,
    newton,
    sample_uniform_in_loss,
    saddle_free,
)
from surfacekit.curvature import index
from surfacekit.models import MLPSpec, init_member
from surfacekit.population import flatten, member_loss_fn
from surfacekit.store import load_group

F64 = dict(dtype=torch.float64)

# ----------------------------------------------------------------------------- toy surfaces (inline)


def saddle(t):  # x^2 - y^2: a non-degenerate saddle of index 1 at the origin
    return t[0] ** 2 - t[1] ** 2


def monkey(t):  # x^3 - 3 x y^2: a degenerate saddle (H = 0) at the origin
    return t[0] ** 3 - 3 * t[0] * t[1] ** 2


def two_weight(t):  # (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2): saddle at 0 (H eigenvalues 3.08, -2.92), minima off it
    return (t[0] * t[1] - 1.5) ** 2 + 0.04 * (t[0] ** 2 + t[1] ** 2)


SURFACES = {"saddle": saddle, "monkey": monkey, "two_weight": two_weight}
NEAR = [(0.1, -0.07), (-0.05, 0.12), (0.08, 0.09)]


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("method", ["newton", "newton_mr", "levenberg_marquardt"])
@pytest.mark.parametrize("start", NEAR)
def test_newton_converges_to_the_saddle(name, method, start):
    fn = SURFACES[name]
    point = find(fn, torch.tensor(start, **F64), method, max_iter=60)
    assert point.accepted and point.status == "critical"
    assert point.grad_norm2 < 1e-10
    assert point.theta.norm() < 0.02  # the saddle at the origin, not a minimum
    if name != "monkey":  # non-degenerate quadratic saddles: index 1 of 2
        assert point.theta.norm() < 1e-8
        assert point.index.count == 1 and point.index.fraction == 0.5 and point.index.method == "dense"


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("start", NEAR)
def test_saddle_free_newton_escapes_and_decreases_f(name, start):
    fn = SURFACES[name]
    run = saddle_free(fn, torch.tensor(start, **F64), max_iter=20, damping=1e-3)
    losses = np.asarray(run.losses)
    assert np.all(np.diff(losses) < 0), losses  # strictly decreasing at every accepted step
    assert losses[-1] < fn(torch.zeros(2, **F64)).item() - 0.1  # well below the saddle's value
    assert run.theta.norm() > 10 * torch.tensor(start).norm()  # moved away from the saddle
    if name == "two_weight":  # bounded below: it reaches a minimum (index 0)
        point = find(fn, torch.tensor(start, **F64), "saddle_free", max_iter=60)
        assert point.accepted and point.index.count == 0
        assert abs(point.loss - 0.1184) < 1e-10  # min over w1 = w2 = s of (s^2 - 1.5)^2 + 0.08 s^2


def test_gradient_flat_toy_point_is_classified():
    # f = x + y^2: g = (1, 2y), H = diag(0, 2). At y = 0, g lies in the kernel of H: ||g||^2 = 1 is
    # stationary for the gradient-norm minimizer, which ends there; not a critical point.
    fn = lambda t: t[0] + t[1] ** 2  # noqa: E731
    point = find(fn, torch.tensor([0.3, 0.4], **F64), "gradnorm", max_iter=50)
    assert point.status == "gradient_flat" and point.gradient_flat and not point.accepted
    assert abs(point.grad_norm2 - 1.0) < 1e-8 and point.flat_ratio < 1e-6
    assert classify(1e-11, 0.5) == "critical" and classify(1e-3, 0.01) == "gradient_flat"
    assert classify(1e-3, 0.5) == "rejected" and classify(1e-3, float("nan")) == "rejected"


def test_flatness_ratio_of_a_quadratic():
    a = torch.diag(torch.tensor([4.0, 1.0, -2.0], **F64))
    fn = lambda t: 0.5 * t @ a @ t  # noqa: E731
    theta = torch.tensor([0.0, 1.0, 0.0], **F64)  # g = (0, 1, 0), H g = g: ratio 1 / 4
    ratio, norm = flatness_ratio(fn, theta)
    assert abs(norm - 4.0) < 1e-10 and abs(ratio - 0.25) < 1e-10


# ----------------------------------------------------------------------------- deep linear autoencoder

def linear_autoencoder(d=5, p=2, n=40, eigenvalues=(5.0, 3.0, 2.0, 1.2, 0.5)):
    """Loss 0.5/n ||X - X W1^T W2^T||^2 over theta = (W1 [p, d], W2 [d, p]), whose data covariance
    X^T X / n is exactly Q diag(eigenvalues) Q^T (distinct eigenvalues)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, **F64))
    lam = torch.tensor(eigenvalues, **F64)
    z = torch.randn(n, d, generator=gen, **F64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    x = torch.linalg.solve_triangular(chol, z.T, upper=False).T @ (q * lam.sqrt()).T

    def loss(t):
        w1, w2 = t[: p * d].reshape(p, d), t[p * d :].reshape(d, p)
        return 0.5 * ((x - x @ w1.T @ w2.T) ** 2).sum() / n

    def critical_point(subset, c):  # Baldi & Hornik: W2 = U_I C, W1 = C^{-1} U_I^T
        u = q[:, list(subset)]
        return torch.cat([(torch.linalg.inv(c) @ u.T).reshape(-1), (u @ c).reshape(-1)])

    return loss, critical_point, lam, gen


def test_linear_autoencoder_newton_mr_finds_exact_critical_points():
    d, p = 5, 2
    loss, critical_point, lam, gen = linear_autoencoder(d, p)
    results = []
    for subset in itertools.combinations(range(d), p):
        # Expected index from the closed form: every pair (i in I, j not in I) with lambda_j > lambda_i
        # gives one descent direction (rotate eigenvector i towards j); nothing else is negative.
        # Cross-checked against the dense Hessian at the exact critical point (C = identity), whose
        # gradient vanishes to rounding; the index is invariant along the orbit C (Sylvester).
        expected = sum(1 for i in subset for j in range(d) if j not in subset and lam[j] > lam[i])
        exact = critical_point(subset, torch.eye(p, **F64))
        assert torch.func.grad(loss)(exact).norm() < 1e-12
        assert index(loss, exact).count == expected
        for _ in range(2):
            c = torch.eye(p, **F64) + 0.3 * torch.randn(p, p, generator=gen, **F64)
            u = torch.randn(2 * d * p, generator=gen, **F64)
            start = critical_point(subset, c) + 0.1 * u / u.norm()  # within 0.1 of a critical point
            point = find(loss, start, "newton_mr", max_iter=50)
            results.append(point.grad_norm2 < 1e-12 and point.index.count == expected and point.accepted)
    assert np.mean(results) >= 0.9, results


def test_levenberg_marquardt_from_random_starts_reaches_baldi_hornik_points():
    # Starts N(0, 1) per weight, not near any critical point. Every accepted endpoint must be one of
    # Baldi-Hornik's: W2 W1 the projection onto span(Q_I), loss = half the left-out eigenvalue sum,
    # and (|I| = p) the index equal to the pair count.
    d, p = 5, 2
    loss, _, lam, gen = linear_autoencoder(d, p)
    x_cov_q = None
    accepted = 0
    for _ in range(3):
        start = torch.randn(2 * d * p, generator=gen, **F64)
        point = find(loss, start, "levenberg_marquardt", max_iter=100)
        if not point.accepted:
            continue
        accepted += 1
        assert point.grad_norm2 < 1e-10 and point.stop == "tolerance"
        w1, w2 = point.theta[: p * d].reshape(p, d), point.theta[p * d :].reshape(d, p)
        m = w2 @ w1
        evals, evecs = torch.linalg.eigh(0.5 * (m + m.T))
        assert torch.allclose(m, m.T, atol=1e-6) and torch.allclose(m @ m, m, atol=1e-6)  # a projection
        rank = int((evals > 0.5).sum())
        # recover the kept eigenvalues: the covariance restricted to range(m)
        if x_cov_q is None:
            gen2 = torch.Generator().manual_seed(0)
            x_cov_q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen2, **F64))
        kept = [i for i in range(d) if float(x_cov_q[:, i] @ m @ x_cov_q[:, i]) > 0.5]
        assert len(kept) == rank
        assert abs(point.loss - 0.5 * float(sum(lam[j] for j in range(d) if j not in kept))) < 1e-8
        if rank == p:
            expected = sum(1 for i in kept for j in range(d) if j not in kept and lam[j] > lam[i])
            assert point.index.count == expected
    assert accepted >= 2


# ----------------------------------------------------------------------------- tanh memorization net

def memorization_net(n=20, seed=0):
    """5-6-5 tanh net (P = 71), random N(0, 1) inputs and targets, MSE, float64; and a GD trajectory."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, **F64)
    y = torch.randn(n, 5, generator=gen, **F64)
    spec = MLPSpec(5, (6,), 5, activation="tanh", init="xavier")
    loss_fn = member_loss_fn(spec, x, y, "mse")
    theta = flatten({k: v[None] for k, v in init_member(spec, seed, torch.float64).items()})[0].requires_grad_(True)
    thetas, losses = [], []
    for step in range(1501):
        value = loss_fn(theta)
        if step % 10 == 0:
            thetas.append(theta.detach().clone())
            losses.append(float(value.detach()))
        (g,) = torch.autograd.grad(value, theta)
        with torch.no_grad():
            theta -= 0.05 * g
    return loss_fn, torch.stack(thetas), np.asarray(losses)


def test_gradient_flat_endpoints_of_a_memorization_net_are_not_critical():
    loss_fn, thetas, losses = memorization_net()
    assert thetas.shape[1] == 71
    starts = sample_uniform_in_loss(losses, 4, seed=1)
    points = [find(loss_fn, thetas[i], "gradnorm", max_iter=100, compute_index=False) for i in starts]
    flat = [p for p in points if p.gradient_flat]
    # With a 100-step budget the gradient-norm minimizer stalls where g is nearly in the kernel of H.
    assert len(flat) >= 1, [(p.grad_norm2, p.flat_ratio) for p in points]
    for p in flat:
        assert not p.accepted and p.status == "gradient_flat"
        assert p.grad_norm2 >= 1e-10 and p.flat_ratio < 0.05
        assert p.grad_norm2_relative < 1  # it did reduce ||g||^2, and still is not a critical point
    for p in points:  # every endpoint is kept and labelled
        assert p.status in ("critical", "gradient_flat", "rejected")
        assert p.accepted == (p.grad_norm2 < 1e-10)


def trained_to_a_minimum(weight_decay=1e-2, n=20):
    """A 5-6-5 tanh memorization net (P = 71) plus wd/2 ||theta||^2, which gives it finite,
    non-degenerate minima, trained to one by L-BFGS: (loss_fn, theta_min) with ||g||^2 < 1e-12."""
    from scipy.optimize import minimize

    from surfacekit.critical import value_and_grad

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=gen, **F64)
    y = torch.randn(n, 5, generator=gen, **F64)
    spec = MLPSpec(5, (6,), 5, activation="tanh", init="xavier")
    mse = member_loss_fn(spec, x, y, "mse")
    loss_fn = lambda t: mse(t) + 0.5 * weight_decay * (t @ t)  # noqa: E731
    theta0 = flatten({k: v[None] for k, v in init_member(spec, 0, torch.float64).items()})[0]

    def fg(v):
        f, g = value_and_grad(loss_fn, torch.from_numpy(v))
        return f, g.numpy()

    res = minimize(fg, theta0.numpy(), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=3000, gtol=1e-12, ftol=1e-16, maxcor=20))
    theta = torch.from_numpy(res.x)
    _, g = value_and_grad(loss_fn, theta)
    assert float(g @ g) < 1e-12
    return loss_fn, theta


def test_newton_mr_converges_quadratically_near_a_trained_minimum():
    loss_fn, theta_min = trained_to_a_minimum()
    # Start at the final trained point itself: accepted at once, index 0, the same minimum.
    point = find(loss_fn, theta_min, "newton_mr", max_iter=10)
    assert point.accepted and point.iterations <= 2 and point.index.count == 0
    assert (point.theta - theta_min).norm() < 1e-5
    # Start 0.1 away: a handful of (inexact-)Newton steps with quadratic convergence. With the
    # earlier default inner budget (25 MINRES iterations for P = 71) the solves left relative
    # residuals of order 0.1 to 1 and the same start needed about 18 linearly converging steps.
    u = torch.randn(71, generator=torch.Generator().manual_seed(1), **F64)
    start = theta_min + 0.1 * u / u.norm()
    point = find(loss_fn, start, "newton_mr", max_iter=30)
    assert point.accepted and point.stop == "tolerance" and point.iterations <= 10, point.history
    assert (point.theta - theta_min).norm() < 1e-6 and point.index.count == 0
    h = np.asarray(point.history)
    last = np.flatnonzero(h < 1e-6)[:2]  # two consecutive steps once inside the basin
    assert len(last) == 2 and h[last[1]] < 1e-3 * h[last[0]], h  # superlinear: >= 1000x per step
    assert point.solve_residuals[0] < 1e-6  # the inner solve is (nearly) exact by default (later ones
    # are limited by rounding once ||g|| is near 1e-10)
    capped = find(loss_fn, start, "newton_mr", max_iter=30, minres_maxiter=25, compute_index=False)
    assert max(capped.solve_residuals) > 1e-3  # Frye et al.'s cap: inexact steps
    assert capped.iterations > point.iterations


# ----------------------------------------------------------------------------- start points and API

def test_sample_uniform_in_loss_spreads_over_the_loss_range():
    losses = np.exp(-np.linspace(0, 8, 400))  # fast early descent: most points at low loss
    idx = sample_uniform_in_loss(losses, 2000, seed=0)
    assert idx.shape == (2000,) and idx.dtype.kind == "i"
    assert abs(np.mean(losses[idx]) - 0.5) < 0.03  # uniform on [e^-8, 1] has mean ~0.5
    assert np.array_equal(idx, sample_uniform_in_loss(losses, 2000, seed=0))
    with_nan = np.array([np.nan, 1.0, 0.5, np.inf])
    assert set(sample_uniform_in_loss(with_nan, 50)) <= {1, 2}
    with pytest.raises(ValueError):
        sample_uniform_in_loss(np.array([]), 3)


def test_find_rejects_bad_input_and_counts_costs():
    with pytest.raises(ValueError, match="unknown finder"):
        find(saddle, torch.ones(2, **F64), "bfgs")
    with pytest.raises(ValueError, match="1-D"):
        find(saddle, torch.ones(2, 2, **F64))
    run = newton(two_weight, torch.tensor([0.1, -0.07], **F64))
    assert run.num_hvps > 0 and run.num_grads > run.iterations and len(run.history) == run.iterations + 1
    gd = gradnorm(saddle, torch.tensor([0.3, 0.2], **F64), optimizer="gd", step0=0.1, max_iter=200)
    assert gd.history[-1] < 1e-10 and np.all(np.diff(gd.history) <= 0)


# ----------------------------------------------------------------------------- analysis helpers

ROOT = Path(__file__).resolve().parents[1]


def test_bray_dean_curve_and_fit():
    sys.path.insert(0, str(ROOT / "analyses"))
    from index_vs_loss import bray_dean, fit_bray_dean

    t = np.array([0.0, 1.0, 2.0, 3.0])
    assert np.allclose(bray_dean(t, 0.0, 1.0), [0.0, 0.5, 1.0, 1.0])
    small = 1e-3  # near threshold alpha ~ (4 sqrt(2) / (3 pi)) t^{3/2} ~ 0.6 t^{3/2}
    assert abs(bray_dean(np.array([small]), 0.0, 1.0)[0] / small**1.5 - 4 * np.sqrt(2) / (3 * np.pi)) < 1e-3
    eps = np.linspace(0.2, 1.0, 40)
    eps_c, w = fit_bray_dean(eps, bray_dean(eps, 0.1, 2.5))
    assert abs(eps_c - 0.1) < 1e-4 and abs(w - 2.5) < 1e-3


def test_spearman_permutation():
    from surfacekit.stats import spearman_permutation

    x = np.arange(30.0)
    rho, p = spearman_permutation(x, x**3, n_perm=500)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 501)
    rho, p = spearman_permutation(x, np.random.default_rng(0).permutation(x), n_perm=500)
    assert abs(rho) < 0.5 and p > 0.05
