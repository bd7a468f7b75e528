"""Test problems for the curvature tools: small float64 losses over a flat vector, with dense references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from surfacekit.curvature import dense_hessian

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # tiny float64 products: threading overhead dominates on small machines


@dataclass
class Problem:
    name: str
    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    theta: torch.Tensor
    hessian: torch.Tensor  # dense reference [P, P], assembled from Hessian-vector products
    eigenvalues: torch.Tensor  # ascending [P], torch.linalg.eigvalsh


def mlp_loss(x: torch.Tensor, y: torch.Tensor, hidden: int) -> tuple[Callable, int]:
    """Cross-entropy of a one-hidden-layer tanh MLP as a function of its flat parameters."""
    d, c = x.shape[1], int(y.max()) + 1
    shapes = [(hidden, d), (hidden,), (c, hidden), (c,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(logits, y)

    return loss_fn, sum(sizes)


def trained_mlp(n_samples: int, hidden: int, steps: int, seed: int = 0) -> tuple[Callable, torch.Tensor]:
    """Digits MLP (64-hidden-10, float64) trained with full-batch Adam on ``n_samples`` examples."""
    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(digits.target), generator=g)[:n_samples]
    x = torch.tensor(digits.data, dtype=torch.float64)[idx] / 16.0
    y = torch.tensor(digits.target)[idx]
    loss_fn, p = mlp_loss(x, y, hidden)
    theta = (torch.randn(p, generator=g) * 0.3).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(theta).backward()
        opt.step()
    return loss_fn, theta.detach()


def toy_loss(w: torch.Tensor) -> torch.Tensor:
    """C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2): a saddle at 0, minima at w1 = w2 = +-sqrt(1.46)."""
    return (w[0] * w[1] - 1.5) ** 2 + 0.04 * (w[0] ** 2 + w[1] ** 2)


def make_problem(name: str, loss_fn: Callable, theta: torch.Tensor) -> Problem:
    hess = dense_hessian(loss_fn, theta)
    return Problem(name, loss_fn, theta, hess, torch.linalg.eigvalsh(hess))


def quadratic(p: int, seed: int) -> Problem:
    """0.5 theta^T A theta + cos(sum theta) with a random indefinite A: a non-quadratic test function."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g))
    lam = torch.cat([torch.linspace(-1.0, -0.1, 5), torch.linspace(0.0, 2.0, p - 10), torch.linspace(3, 10, 5)])
    a = q @ torch.diag(lam) @ q.T
    a = 0.5 * (a + a.T)
    loss_fn = lambda t: 0.5 * t @ a @ t + 0.1 * torch.cos(t.sum())  # noqa: E731
    return make_problem(f"quadratic{p}", loss_fn, torch.randn(p, generator=g))


@pytest.fixture(scope="session")
def mlp() -> Problem:
    """Over-parameterized trained digits MLP: P = 610 on 60 examples, many near-zero eigenvalues."""
    loss_fn, theta = trained_mlp(n_samples=60, hidden=8, steps=300)
    return make_problem("mlp610", loss_fn, theta)


@pytest.fixture(scope="session")
def small_mlp() -> Problem:
    """Small MLP (P = 142) for forcing the Lanczos index path against the dense one."""
    loss_fn, theta = trained_mlp(n_samples=30, hidden=2, steps=200, seed=1)
    return make_problem("mlp142", loss_fn, theta)


@pytest.fixture(scope="session", params=["quadratic", "mlp"])
def problem(request, mlp) -> Problem:
    return quadratic(120, seed=3) if request.param == "quadratic" else mlp
