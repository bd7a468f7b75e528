"""A library of hard Hessian spectra, as data: repeated and clustered eigenvalues, zero blocks and
networks at symmetric points. Shared by tests/curvature and benchmarks/curvature.py.

Every case is a ``loss_fn(theta) -> scalar`` in float64 with a point ``theta``; the reference is
always ``eigvalsh`` of the Hessian assembled from Hessian-vector products (:func:`reference`), never
the designed values. Designed spectra are realised as quadratics ``0.5 theta^T A theta`` with ``A =
Q diag(values) Q^T`` for a random orthogonal Q, so repeated eigenvalues are exact up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.datasets import load_digits

from surfacekit.curvature import dense_hessian

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Case:
    """A loss and a point; ``k`` is how many extreme eigenvalues the tests ask for at each end."""

    name: str
    loss_fn: LossFn
    theta: torch.Tensor
    k: int = 5


def reference(case: Case) -> torch.Tensor:
    """Ascending eigenvalues [P] of the HVP-assembled dense Hessian of ``case`` (the reference)."""
    return torch.linalg.eigvalsh(dense_hessian(case.loss_fn, case.theta))


def designed(name: str, values: list[float] | np.ndarray, seed: int = 0, k: int = 5) -> Case:
    """The quadratic whose Hessian has exactly ``values`` (in a random orthonormal basis)."""
    lam = torch.as_tensor(np.asarray(values, dtype=np.float64))
    p = len(lam)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    a = (q * lam) @ q.T
    a = 0.5 * (a + a.T)
    return Case(name, lambda t: 0.5 * t @ (a @ t), torch.randn(p, generator=g, dtype=torch.float64), k)


def _base(p: int, negatives: list[float]) -> list[float]:
    """A background spectrum of order p: top outliers 4 and 3.5, a bulk in [0.05, 3] and ``negatives``."""
    rest = p - 2 - len(negatives)
    return [4.0, 3.5] + list(np.linspace(0.05, 3.0, rest)) + negatives


def multiplicity_cases(p: int = 160) -> list[Case]:
    """Multiplicities 2, 3, 8, 20 and 30 at the top, at the bottom and inside the negative tail."""
    cases = []
    for m in (2, 3, 8, 20, 30):
        tail = [-0.3, -0.2, -0.1]
        cases.append(designed(f"top x{m}", _base(p - m, tail) + [5.0] * m, seed=m, k=min(m + 2, 12)))
        cases.append(designed(f"bottom x{m}", _base(p - m, tail) + [-1.0] * m, seed=100 + m, k=min(m + 2, 12)))
        cases.append(designed(f"tail x{m}", _base(p - m, [-1.0, -0.8] + tail) + [-0.5] * m, seed=200 + m,
                              k=min(m + 4, 12)))
    return cases


def cluster_cases(p: int = 160) -> list[Case]:
    """Clusters split by 1e-10 (at the top and inside the negative tail), and a zero block of P/2."""
    split = 1e-10
    top = _base(p - 6, [-0.3, -0.2]) + [5.0] * 3 + [5.0 - split] * 3
    tail = _base(p - 8, [-1.0, -0.2]) + [-0.5] * 4 + [-0.5 + split] * 4
    half = p // 2
    zero = [0.0] * half + list(np.linspace(-1.0, -0.05, 10)) + list(np.linspace(0.1, 4.0, p - half - 10))
    return [designed("top split 1e-10", top, seed=7, k=8), designed("tail split 1e-10", tail, seed=8, k=12),
            designed("zero block P/2", zero, seed=9, k=12)]


# ---- networks at symmetric points ---------------------------------------------------------------


def _digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    idx = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.tensor(digits.data, dtype=torch.float64)[idx] / 16.0, torch.tensor(digits.target)[idx]


def mlp_loss(x: torch.Tensor, y: torch.Tensor, hidden: int) -> tuple[LossFn, list[tuple[int, ...]]]:
    """Mean squared error against one-hot targets of a one-hidden-layer tanh MLP on (x, y), as a
    function of its flat parameters (w1 [h, d], b1 [h], w2 [c, h], b2 [c]). A narrow net cannot fit
    the targets, so its minima are at finite weights (no regularizer needed, which would break the
    function-preserving split below)."""
    d, c = x.shape[1], int(y.max()) + 1
    shapes = [(hidden, d), (hidden,), (c, hidden), (c,)]
    sizes = [int(np.prod(s)) for s in shapes]
    target = torch.nn.functional.one_hot(y, c).to(x.dtype)

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        return 0.5 * ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - target) ** 2).sum(dim=1).mean()

    return loss_fn, shapes


def _unflatten(theta: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    sizes = [int(np.prod(s)) for s in shapes]
    return [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]


def trained_narrow(hidden: int = 3, n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, theta) of a 64-hidden-10 tanh MLP trained to a critical point: L-BFGS, then Newton
    steps on the dense Hessian (|g|^2 at rounding level)."""
    x, y = _digits(n, seed)
    loss_fn, shapes = mlp_loss(x, y, hidden)
    p = sum(int(np.prod(s)) for s in shapes)
    g = torch.Generator().manual_seed(seed)
    theta = (0.5 * torch.randn(p, generator=g, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=400, tolerance_grad=1e-12, tolerance_change=0,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss_fn(theta)
        value.backward()
        return value

    opt.step(closure)
    theta = theta.detach()
    for _ in range(4):  # least squares: always-blank pixels give exact zero directions
        step = torch.linalg.lstsq(dense_hessian(loss_fn, theta), torch.func.grad(loss_fn)(theta)[:, None],
                                  rcond=1e-12, driver="gelsd").solution[:, 0]
        theta = theta - step
    return x, y, theta


def split_unit(theta: torch.Tensor, shapes: list[tuple[int, ...]], unit: int, fractions: list[float]) -> tuple[torch.Tensor, list]:
    """Split hidden ``unit`` into ``len(fractions)`` copies (same incoming weights and bias, outgoing
    weights ``fraction_i x`` the original's, fractions summing to 1): the same function, and a critical
    point of the wider network if ``theta`` was one of the narrow (Fukumizu and Amari 2000)."""
    w1, b1, w2, b2 = _unflatten(theta, shapes)
    copies = len(fractions)
    w1n = torch.cat([w1, w1[unit : unit + 1].expand(copies - 1, -1)])
    b1n = torch.cat([b1, b1[unit : unit + 1].expand(copies - 1)])
    out = w2[:, unit : unit + 1] * torch.tensor(fractions, dtype=theta.dtype)
    w2n = torch.cat([w2[:, :unit], out[:, :1], w2[:, unit + 1 :], out[:, 1:]], dim=1)
    hidden = w1n.shape[0]
    new_shapes = [(hidden, shapes[0][1]), (hidden,), (shapes[2][0], hidden), shapes[3]]
    return torch.cat([w1n.flatten(), b1n, w2n.flatten(), b2]), new_shapes


def split_network(copies: int = 4) -> Case:
    """A trained 64-3-10 MLP with one hidden unit split into ``copies`` (64-(2+copies)-10, P = 75 +
    75 copies): a symmetric critical point with degenerate, negative Hessian directions."""
    x, y, theta = trained_narrow()
    _, shapes = mlp_loss(x, y, 3)
    wide, new_shapes = split_unit(theta, shapes, 0, [1.0 / copies] * copies)
    loss_fn, check = mlp_loss(x, y, new_shapes[0][0])
    assert check == new_shapes
    return Case(f"split unit x{copies}", loss_fn, wide, k=8)


def identical_units_network(hidden: int = 6, n: int = 60, seed: int = 3) -> Case:
    """A 64-hidden-10 tanh MLP whose hidden units are all identical (same incoming weights, bias and
    outgoing weights): every permutation of units is a symmetry of the point."""
    x, y = _digits(n, seed)
    loss_fn, shapes = mlp_loss(x, y, hidden)
    g = torch.Generator().manual_seed(seed)
    w1 = (0.3 * torch.randn(1, 64, generator=g, dtype=torch.float64)).expand(hidden, -1)
    b1 = torch.full((hidden,), 0.1, dtype=torch.float64)
    w2 = (0.5 * torch.randn(10, 1, generator=g, dtype=torch.float64)).expand(-1, hidden)
    b2 = 0.1 * torch.randn(10, generator=g, dtype=torch.float64)
    theta = torch.cat([w1.flatten(), b1, w2.flatten(), b2])
    return Case(f"identical units x{hidden}", loss_fn, theta, k=8)
