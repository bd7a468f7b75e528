"""Finders on networks with known critical points: the deep linear autoencoder (Baldi and Hornik's
closed form), gradient-flat endpoints of a tanh memorization net, quadratic convergence near a minimum."""

import itertools

import numpy as np
import torch

from surfacekit.critical import find, sample_uniform_in_loss
from surfacekit.curvature import dense_hessian, index
from surfacekit.models import MLPSpec
from surfacekit.population import member_loss_fn
from surfacekit.problems import F64, gd_trajectory, linear_autoencoder, memorization_minimum, memorization_net


def test_linear_autoencoder_newton_mr_finds_exact_critical_points():
    d, p = 5, 2
    ae = linear_autoencoder(d, p)
    loss, critical_point, lam, gen = ae.loss_fn, ae.critical_point, ae.eigenvalues, ae.generator
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
    ae = linear_autoencoder(d, p)
    loss, lam, gen, q = ae.loss_fn, ae.eigenvalues, ae.generator, ae.q
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
        evals, _ = torch.linalg.eigh(0.5 * (m + m.T))
        assert torch.allclose(m, m.T, atol=1e-6) and torch.allclose(m @ m, m, atol=1e-6)  # a projection
        kept = [i for i in range(d) if float(q[:, i] @ m @ q[:, i]) > 0.5]
        assert len(kept) == int((evals > 0.5).sum())
        assert abs(point.loss - 0.5 * float(sum(lam[j] for j in range(d) if j not in kept))) < 1e-8
        if len(kept) == p:
            expected = sum(1 for i in kept for j in range(d) if j not in kept and lam[j] > lam[i])
            assert point.index.count == expected
        form = ae.closed_form(point.theta)  # the library's classifier agrees with the checks above
        assert form is not None and list(form[0]) == kept and abs(form[1] - point.loss) < 1e-8
        assert form[2] == (point.index.count if len(kept) == p else None)
    assert accepted >= 2


def test_gradient_flat_endpoints_of_a_memorization_net_are_not_critical():
    loss_fn, theta0, _ = memorization_net()
    thetas, losses = gd_trajectory(loss_fn, theta0, steps=1500)
    assert thetas.shape[1] == 71
    starts = np.unique(sample_uniform_in_loss(np.asarray(losses), 4, seed=1))
    assert len(starts) == 3
    points = [find(loss_fn, thetas[i], "gradnorm", max_iter=300, compute_index=False) for i in starts]
    flat = [p for p in points if p.gradient_flat]
    # The gradient-norm minimizer creeps towards points where g is nearly in the kernel of H (after
    # 100 steps the flatness ratios were 0.06 to 0.14, after 300 steps 0.015 to 0.034).
    assert len(flat) >= 2, [(p.grad_norm2, p.flat_ratio) for p in points]
    for p in flat:
        assert not p.accepted and p.status == "gradient_flat"
        assert p.acceptance_ratio > 1 and p.flat_ratio < 0.05
        assert p.grad_norm2_relative < 1  # it did reduce ||g||^2, and still is not a critical point
    for p in points:  # every endpoint is kept and labelled, and the ratio decides
        assert p.status in ("critical", "gradient_flat", "rejected")
        assert p.accepted == (p.acceptance_ratio <= 1)
        assert p.accepted_absolute == (p.grad_norm2 < 1e-10)


def test_newton_mr_converges_quadratically_near_a_trained_minimum():
    loss_fn, theta_min = memorization_minimum()
    # Start at the final trained point itself: accepted at once, index 0, the same minimum.
    point = find(loss_fn, theta_min, "newton_mr", max_iter=10)
    assert point.accepted and point.iterations <= 2 and point.index.count == 0
    assert (point.theta - theta_min).norm() < 1e-5
    # Start 0.1 away: a handful of Newton steps with quadratic convergence. With Frye et al.'s
    # inner budget (25 MINRES iterations for P = 71) the solves left relative residuals of order
    # 0.1 to 1 and the same start needed about 18 linearly converging steps.
    u = torch.randn(71, generator=torch.Generator().manual_seed(1), **F64)
    start = theta_min + 0.1 * u / u.norm()
    point = find(loss_fn, start, "newton_mr", max_iter=30)
    assert point.accepted and point.iterations <= 10, point.history
    assert (point.theta - theta_min).norm() < 1e-6 and point.index.count == 0
    h = np.asarray(point.history)
    last = np.flatnonzero(h < 1e-6)[:2]  # two consecutive steps once inside the basin
    assert len(last) == 2 and h[last[1]] < 1e-3 * h[last[0]], h  # superlinear: >= 1000x per step
    assert point.solve_residuals[0] < 1e-8  # the inner solve is (nearly) exact by default
    assert max(point.kernel_dims) == 0  # a nondegenerate minimum: no kernel
    capped = find(loss_fn, start, "newton_mr", max_iter=30, minres_maxiter=25, compute_index=False)
    assert max(capped.solve_residuals) > 1e-3  # Frye et al.'s cap: inexact steps
    assert capped.iterations > point.iterations


def test_finders_return_to_a_degenerate_zero_unit_saddle():
    # A 3-4-2 tanh net whose hidden units are all zero (incoming, bias, outgoing) with the output
    # bias at its optimum is critical (tanh(0) = 0; Fukumizu and Amari 2000): a degenerate saddle,
    # dense index 8 of 26 (two 4-fold multiplets) and 8 zero eigenvalues. From 1e-3 away the
    # least-squares finders return to a critical point of the same loss and index: Levenberg-Marquardt
    # and the gradient-norm minimizer within 1e-3, Newton-MR and Krylov Newton along the degenerate
    # critical set (measured 0.3 to 5 away).
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, generator=gen, **F64), torch.randn(30, 2, generator=gen, **F64)
    spec = MLPSpec(3, (4,), 2, activation="tanh", init="xavier")
    loss_fn = member_loss_fn(spec, x, y, "mse")
    theta = torch.zeros(26, **F64)
    g, h = torch.func.grad(loss_fn)(theta), dense_hessian(loss_fn, theta)
    theta[-2:] -= torch.linalg.solve(h[-2:, -2:], g[-2:])  # the output bias: a quadratic in it
    assert torch.func.grad(loss_fn)(theta).norm() < 1e-14
    eigenvalues = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta))
    assert int((eigenvalues < -1e-8).sum()) == 8 and int((eigenvalues.abs() < 1e-12).sum()) == 8
    u = torch.randn(26, generator=torch.Generator().manual_seed(0), **F64)
    start = theta + 1e-3 * u / u.norm()
    for method in ("newton_mr", "levenberg_marquardt", "newton", "gradnorm"):
        point = find(loss_fn, start, method, max_iter=100)
        assert point.accepted and point.index.count == 8, method
        assert abs(point.loss - float(loss_fn(theta))) < 1e-12, method
        if method in ("levenberg_marquardt", "gradnorm"):
            assert (point.theta - theta).norm() < 1e-3, method
