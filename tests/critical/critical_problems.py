"""Test problems of the critical-point tests, as data: toy saddles, singular quadratics with closed-form
nearest critical points, the deep linear autoencoder, the tanh memorization net."""

from __future__ import annotations

import torch

from surfacekit.critical import value_and_grad
from surfacekit.models import MLPSpec, init_member
from surfacekit.population import flatten, member_loss_fn

F64 = dict(dtype=torch.float64)


def saddle(t):  # x^2 - y^2: a non-degenerate saddle of index 1 at the origin
    return t[0] ** 2 - t[1] ** 2


def monkey(t):  # x^3 - 3 x y^2: a degenerate saddle (H = 0) at the origin
    return t[0] ** 3 - 3 * t[0] * t[1] ** 2


def two_weight(t):  # (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2): saddle at 0 (H eigenvalues 3.08, -2.92), minima off it
    return (t[0] * t[1] - 1.5) ** 2 + 0.04 * (t[0] ** 2 + t[1] ** 2)


SURFACES = {"saddle": saddle, "monkey": monkey, "two_weight": two_weight}
NEAR = [(0.1, -0.07), (-0.05, 0.12), (0.08, 0.09)]


class SingularQuadratic:
    """``f(x) = x^T A x / 2 - b^T x`` with A = Q diag(lam) Q^T singular (trailing ``zeros`` eigenvalues 0).

    ``b = A c + kernel * q_last``: consistent (critical points exist) for ``kernel = 0``,
    inconsistent otherwise (g = A x - b never vanishes; its kernel component is ``-kernel q_last``
    everywhere). The nearest critical point to x0 in the sense of Newton-MR (the least-squares
    solution of g = 0 closest to x0) is ``x0 - A^+ g(x0)``.
    """

    def __init__(self, eigenvalues=(3.0, -2.0, 1.5, -0.7, 1.0, 0.5), zeros=2, kernel=0.0, seed=0, scale=1.0):
        gen = torch.Generator().manual_seed(seed)
        p = len(eigenvalues) + zeros
        self.q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, **F64))
        self.lam = torch.tensor(list(eigenvalues) + [0.0] * zeros, **F64)
        self.a = self.q @ torch.diag(self.lam) @ self.q.T
        self.a = 0.5 * (self.a + self.a.T)
        self.b = self.a @ torch.randn(p, generator=gen, **F64) + kernel * self.q[:, -1]
        self.scale = scale
        self.size = p

    def __call__(self, x):
        return self.scale * (0.5 * x @ self.a @ x - self.b @ x)

    def grad(self, x):
        return self.scale * (self.a @ x - self.b)

    def nearest(self, x0):
        """``x0 - A^+ g(x0)`` [P]: the closest point to x0 where ||g|| is least (critical if consistent)."""
        pinv = torch.linalg.pinv(self.a, hermitian=True, rtol=1e-12)
        return x0 - pinv @ (self.a @ x0 - self.b)

    def kernel_component(self, x):
        """``||P_ker g(x)||``: the part of the gradient no step can remove (constant in x)."""
        null = self.q[:, self.lam == 0]
        return float((null.T @ self.grad(x)).norm())


def start(size, seed=5):
    return torch.randn(size, generator=torch.Generator().manual_seed(seed), **F64)


def linear_autoencoder(d=5, p=2, n=40, eigenvalues=(5.0, 3.0, 2.0, 1.2, 0.5)):
    """Loss 0.5/n ||X - X W1^T W2^T||^2 over theta = (W1 [p, d], W2 [d, p]), whose data covariance
    X^T X / n is exactly Q diag(eigenvalues) Q^T (distinct eigenvalues); returns
    (loss, critical_point(subset, C), eigenvalues, generator)."""
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


def memorization_net(n=20, seed=0):
    """5-6-5 tanh net (P = 71), random N(0, 1) inputs and targets, MSE, float64; and a GD trajectory
    (every 10th of 1500 steps): (loss_fn, thetas [T, P], losses [T])."""
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
    return loss_fn, torch.stack(thetas), losses


def trained_to_a_minimum(weight_decay=1e-2, n=20):
    """A 5-6-5 tanh memorization net (P = 71) plus wd/2 ||theta||^2, which gives it finite,
    non-degenerate minima, trained to one by scipy's L-BFGS: (loss_fn, theta_min) with ||g||^2 < 1e-12."""
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=gen, **F64)
    y = torch.randn(n, 5, generator=gen, **F64)
    spec = MLPSpec(5, (6,), 5, activation="tanh", init="xavier")
    mse = member_loss_fn(spec, x, y, "mse")

    def loss_fn(t):
        return mse(t) + 0.5 * weight_decay * (t @ t)

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
