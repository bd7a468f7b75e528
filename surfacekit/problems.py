"""Test problems with known answers, shared by the tests, the benchmarks and users checking a routine.

Every problem is a ``loss_fn(theta) -> scalar`` over a flat float64 vector, with a point and an
answer that does not come from the routine under test:

- hard Hessian spectra, as data (:func:`designed`, :func:`multiplicity_cases`, :func:`cluster_cases`):
  quadratics ``0.5 theta^T A theta`` with ``A = Q diag(values) Q^T`` for a random orthogonal Q, so
  repeated eigenvalues are exact up to rounding;
- networks at symmetric points (:func:`split_network`, :func:`identical_units_network`) and trained
  digits MLPs (:func:`trained_digits_mlp`);
- toy surfaces with saddles of known index (:data:`SURFACES`), singular quadratics whose nearest
  critical point is closed-form (:class:`SingularQuadratic`), the deep linear autoencoder whose
  critical points, losses and indices are closed-form (:class:`LinearAutoencoder`, Baldi and Hornik
  1989), and the tanh memorization net whose gradient descent endpoints are gradient-flat but not
  critical (:func:`memorization_net`, Frye et al. 2019).

The reference for a spectrum is always ``eigvalsh`` of the Hessian assembled from Hessian-vector
products (:attr:`Problem.eigenvalues`), never the designed values. Every tensor is created with an
explicit dtype, so the problems do not depend on torch's default dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import torch

from surfacekit.curvature import dense_hessian

LossFn = Callable[[torch.Tensor], torch.Tensor]
F64 = dict(dtype=torch.float64)


@dataclass
class Problem:
    """A loss and a point; ``k`` is how many extreme eigenvalues a test asks for at each end.

    ``hessian`` [P, P] (assembled from Hessian-vector products) and ``eigenvalues`` [P] (ascending,
    ``torch.linalg.eigvalsh``) are computed on first use: O(P) products and O(P^3) time.
    """

    name: str
    loss_fn: LossFn
    theta: torch.Tensor
    k: int = 5

    @cached_property
    def hessian(self) -> torch.Tensor:
        return dense_hessian(self.loss_fn, self.theta)

    @cached_property
    def eigenvalues(self) -> torch.Tensor:
        return torch.linalg.eigvalsh(self.hessian)


# ---- designed spectra ----------------------------------------------------------------------------


def designed(name: str, values: Sequence[float] | np.ndarray, seed: int = 0, k: int = 5) -> Problem:
    """The quadratic whose Hessian has exactly ``values`` [P] (in a random orthonormal basis)."""
    lam = torch.as_tensor(np.asarray(values, dtype=np.float64))
    p = len(lam)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, **F64))
    a = (q * lam) @ q.T
    a = 0.5 * (a + a.T)
    return Problem(name, lambda t: 0.5 * t @ (a @ t), torch.randn(p, generator=g, **F64), k)


def background(p: int, negatives: list[float]) -> list[float]:
    """A spectrum of order p: top outliers 4 and 3.5, a bulk in [0.05, 3] and ``negatives``."""
    rest = p - 2 - len(negatives)
    return [4.0, 3.5] + list(np.linspace(0.05, 3.0, rest)) + negatives


def multiplicity_cases(p: int = 160) -> list[Problem]:
    """Multiplicities 2, 3, 8, 20 and 30 at the top, at the bottom and inside the negative tail."""
    cases = []
    for m in (2, 3, 8, 20, 30):
        tail = [-0.3, -0.2, -0.1]
        cases.append(designed(f"top x{m}", background(p - m, tail) + [5.0] * m, seed=m, k=min(m + 2, 12)))
        cases.append(designed(f"bottom x{m}", background(p - m, tail) + [-1.0] * m, seed=100 + m, k=min(m + 2, 12)))
        cases.append(designed(f"tail x{m}", background(p - m, [-1.0, -0.8] + tail) + [-0.5] * m, seed=200 + m,
                              k=min(m + 4, 12)))
    return cases


def cluster_cases(p: int = 160) -> list[Problem]:
    """Clusters split by 1e-10 (at the top and inside the negative tail), and a zero block of P/2."""
    split = 1e-10
    top = background(p - 6, [-0.3, -0.2]) + [5.0] * 3 + [5.0 - split] * 3
    tail = background(p - 8, [-1.0, -0.2]) + [-0.5] * 4 + [-0.5 + split] * 4
    half = p // 2
    zero = [0.0] * half + list(np.linspace(-1.0, -0.05, 10)) + list(np.linspace(0.1, 4.0, p - half - 10))
    return [designed("top split 1e-10", top, seed=7, k=8), designed("tail split 1e-10", tail, seed=8, k=12),
            designed("zero block P/2", zero, seed=9, k=12)]


def perturbed_quadratic(p: int, seed: int) -> Problem:
    """``0.5 theta^T A theta + 0.1 cos(sum theta)`` with a random indefinite A (5 eigenvalues in
    [-1, -0.1], a bulk in [0, 2], 5 in [3, 10]): smooth, not quadratic, at a random point."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, **F64))
    lam = torch.cat([torch.linspace(-1.0, -0.1, 5, **F64), torch.linspace(0.0, 2.0, p - 10, **F64),
                     torch.linspace(3, 10, 5, **F64)])
    a = q @ torch.diag(lam) @ q.T
    a = 0.5 * (a + a.T)
    return Problem(f"quadratic{p}", lambda t: 0.5 * t @ a @ t + 0.1 * torch.cos(t.sum()), torch.randn(p, generator=g, **F64))


# ---- digits MLPs ---------------------------------------------------------------------------------


def digits(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float64 inputs in [0, 1] [n, 64] and labels [n]: all 1797 examples
    in order (``n=None``) or ``n`` drawn at random with ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = torch.tensor(data.data, **F64) / 16.0, torch.tensor(data.target)
    if n is None:
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def mlp_loss(x: torch.Tensor, y: torch.Tensor, hidden: int, loss: str = "cross_entropy") -> tuple[LossFn, list[tuple[int, ...]]]:
    """A one-hidden-layer tanh MLP on (x [N, d], y [N]) as a function of its flat parameters
    (w1 [h, d], b1 [h], w2 [c, h], b2 [c]): cross-entropy, or ``"mse"``, half the squared error
    against one-hot targets summed over outputs (a narrow net cannot fit it, so its minima lie at
    finite weights without a regularizer). Returns ``(loss_fn, shapes)``."""
    d, c = x.shape[1], int(y.max()) + 1
    shapes = [(hidden, d), (hidden,), (c, hidden), (c,)]
    sizes = [int(np.prod(s)) for s in shapes]
    target = torch.nn.functional.one_hot(y, c).to(x.dtype)

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        if loss == "mse":
            return 0.5 * ((out - target) ** 2).sum(dim=1).mean()
        return torch.nn.functional.cross_entropy(out, y)

    return loss_fn, shapes


def trained_digits_mlp(hidden: int, steps: int, n: int | None = None, seed: int = 0, init_scale: float = 0.125,
                       lr: float = 0.01) -> tuple[LossFn, torch.Tensor]:
    """A 64-hidden-10 tanh MLP (cross-entropy, float64) trained with ``steps`` full-batch Adam steps
    from N(0, init_scale^2) weights, on all digits or ``n`` random ones: ``(loss_fn, theta [P])``.
    Not a critical point: a realistic training endpoint with many near-zero eigenvalues."""
    x, y = digits(n, seed)
    loss_fn, shapes = mlp_loss(x, y, hidden)
    g = torch.Generator().manual_seed(seed)
    if n is not None:  # the draw of the subset comes first in this stream
        torch.randperm(1797, generator=g)
    theta = (torch.randn(sum(int(np.prod(s)) for s in shapes), generator=g, **F64) * init_scale).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(theta).backward()
        opt.step()
    return loss_fn, theta.detach()


def _unflatten(theta: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    sizes = [int(np.prod(s)) for s in shapes]
    return [t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes)]


def trained_narrow(hidden: int = 3, n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, theta) of a 64-hidden-10 tanh MLP (mse) trained to a critical point: L-BFGS, then
    least-squares Newton steps on the dense Hessian (|g|^2 at rounding level)."""
    x, y = digits(n, seed)
    loss_fn, shapes = mlp_loss(x, y, hidden, "mse")
    p = sum(int(np.prod(s)) for s in shapes)
    g = torch.Generator().manual_seed(seed)
    theta = (0.5 * torch.randn(p, generator=g, **F64)).requires_grad_(True)
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


def split_unit(theta: torch.Tensor, shapes: list[tuple[int, ...]], unit: int,
               fractions: list[float]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
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


def split_network(copies: int = 4) -> Problem:
    """A 64-3-10 MLP at a critical point with one hidden unit split into ``copies`` (64-(2+copies)-10,
    P = 75 + 75 copies): a symmetric critical point with degenerate, negative Hessian directions."""
    x, y, theta = trained_narrow()
    _, shapes = mlp_loss(x, y, 3, "mse")
    wide, new_shapes = split_unit(theta, shapes, 0, [1.0 / copies] * copies)
    loss_fn, _ = mlp_loss(x, y, new_shapes[0][0], "mse")
    return Problem(f"split unit x{copies}", loss_fn, wide, k=8)


def identical_units_network(hidden: int = 6, n: int = 60, seed: int = 3) -> Problem:
    """A 64-hidden-10 tanh MLP (mse) whose hidden units are all identical (same incoming weights,
    bias and outgoing weights): every permutation of units is a symmetry of the point."""
    x, y = digits(n, seed)
    loss_fn, _ = mlp_loss(x, y, hidden, "mse")
    g = torch.Generator().manual_seed(seed)
    w1 = (0.3 * torch.randn(1, 64, generator=g, **F64)).expand(hidden, -1)
    b1 = torch.full((hidden,), 0.1, **F64)
    w2 = (0.5 * torch.randn(10, 1, generator=g, **F64)).expand(-1, hidden)
    b2 = 0.1 * torch.randn(10, generator=g, **F64)
    return Problem(f"identical units x{hidden}", loss_fn, torch.cat([w1.flatten(), b1, w2.flatten(), b2]), k=8)


# ---- critical points with closed forms -----------------------------------------------------------


def saddle(t: torch.Tensor) -> torch.Tensor:
    """x^2 - y^2: a non-degenerate saddle of index 1 at the origin."""
    return t[0] ** 2 - t[1] ** 2


def monkey(t: torch.Tensor) -> torch.Tensor:
    """x^3 - 3 x y^2: a degenerate saddle (H = 0) at the origin."""
    return t[0] ** 3 - 3 * t[0] * t[1] ** 2


def two_weight(t: torch.Tensor) -> torch.Tensor:
    """(w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2): a saddle at 0 (Hessian eigenvalues 3.08, -2.92), minima
    at w1 = w2 = +-sqrt(1.46) (index 0)."""
    return (t[0] * t[1] - 1.5) ** 2 + 0.04 * (t[0] ** 2 + t[1] ** 2)


SURFACES = {"saddle": saddle, "monkey": monkey, "two_weight": two_weight}
NEAR_ORIGIN = [(0.1, -0.07), (-0.05, 0.12), (0.08, 0.09)]  # starts near the saddles of SURFACES


def random_point(size: int, seed: int = 5) -> torch.Tensor:
    """A standard normal point [size] (float64) from its own generator."""
    return torch.randn(size, generator=torch.Generator().manual_seed(seed), **F64)


class SingularQuadratic:
    """``f(x) = scale (x^T A x / 2 - b^T x)`` with A = Q diag(lam) Q^T singular (``zeros`` trailing
    eigenvalues 0).

    ``b = A c + kernel * q_last``: consistent (critical points exist) for ``kernel = 0``,
    inconsistent otherwise (g = A x - b never vanishes; its kernel component is ``-kernel q_last``
    everywhere). The nearest critical point to x0 in the sense of Newton-MR (the least-squares
    solution of g = 0 closest to x0) is ``x0 - A^+ g(x0)`` (Roosta et al. 2022).
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


@dataclass
class LinearAutoencoder:
    """The deep linear autoencoder ``0.5/n ||X - X W1^T W2^T||^2`` over theta = (W1 [p, d], W2 [d, p]),
    with data whose covariance X^T X / n is exactly Q diag(eigenvalues) Q^T (distinct eigenvalues).

    Baldi and Hornik (1989): at a critical point W2 W1 is the orthogonal projection onto span(Q_I) for
    a subset I of at most p eigenvectors; the loss is half the sum of the eigenvalues left out, and
    for |I| = p the index is #{(i in I, j not in I): lam_j > lam_i}. ``generator`` continues the
    random stream that drew the data (reproducible random starts).
    """

    loss_fn: LossFn
    q: torch.Tensor
    eigenvalues: torch.Tensor
    p: int
    generator: torch.Generator = field(repr=False)

    @property
    def size(self) -> int:
        return 2 * self.p * len(self.eigenvalues)

    def critical_point(self, subset: Sequence[int], c: torch.Tensor) -> torch.Tensor:
        """The critical point W2 = U_I C, W1 = C^{-1} U_I^T [2 d p] for |I| = p and an invertible C [p, p]."""
        u = self.q[:, list(subset)]
        return torch.cat([(torch.linalg.inv(c) @ u.T).reshape(-1), (u @ c).reshape(-1)])

    def closed_form(self, theta: torch.Tensor) -> tuple[tuple[int, ...], float, int | None] | None:
        """``(subset, loss, index or None)`` that Baldi-Hornik assign to ``theta``, or None when W2 W1
        is no projection onto eigenvectors (to 1e-6); the index only for full-rank subsets (|I| = p)."""
        d, p = len(self.eigenvalues), self.p
        w1, w2 = theta[: p * d].reshape(p, d), theta[p * d :].reshape(d, p)
        m = w2 @ w1
        subset = [i for i in range(d) if float(self.q[:, i] @ m @ self.q[:, i]) > 0.5]
        u = self.q[:, subset]
        if float((m - u @ u.T).norm()) > 1e-6:
            return None
        lam = self.eigenvalues
        loss = 0.5 * float(sum(lam[j] for j in range(d) if j not in subset))
        idx = sum(1 for i in subset for j in range(d) if j not in subset and lam[j] > lam[i]) if len(subset) == p else None
        return tuple(subset), loss, idx


def linear_autoencoder(d: int = 5, p: int = 2, n: int = 40, eigenvalues=(5.0, 3.0, 2.0, 1.2, 0.5),
                       seed: int = 0) -> LinearAutoencoder:
    """The :class:`LinearAutoencoder` of input size d = len(eigenvalues), p hidden units, n examples.

    Raises:
        ValueError: ``len(eigenvalues) != d``.
    """
    if len(eigenvalues) != d:
        raise ValueError(f"need d={d} eigenvalues, got {len(eigenvalues)}")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, **F64))
    lam = torch.tensor(eigenvalues, **F64)
    z = torch.randn(n, d, generator=gen, **F64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    x = torch.linalg.solve_triangular(chol, z.T, upper=False).T @ (q * lam.sqrt()).T

    def loss_fn(t):
        w1, w2 = t[: p * d].reshape(p, d), t[p * d :].reshape(d, p)
        return 0.5 * ((x - x @ w1.T @ w2.T) ** 2).sum() / n

    return LinearAutoencoder(loss_fn, q, lam, p, gen)


def memorization_net(n: int = 20, in_dim: int = 5, width: int = 6, out_dim: int = 5, seed: int = 0,
                     weight_decay: float = 0.0):
    """``(loss_fn, theta0 [P], spec)``: a tanh MLP (xavier init) on random N(0, 1) inputs and targets,
    mean squared error plus ``weight_decay/2 ||theta||^2``, float64 (P = 71 at the defaults). Without
    weight decay its loss keeps falling as tanh saturates: gradient descent ends at gradient-flat
    points, not critical ones."""
    from surfacekit.models import MLPSpec, init_member
    from surfacekit.population import flatten, member_loss_fn

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=gen, **F64)
    y = torch.randn(n, out_dim, generator=gen, **F64)
    spec = MLPSpec(in_dim, (width,), out_dim, activation="tanh", init="xavier")
    theta0 = flatten({k: v[None] for k, v in init_member(spec, seed, torch.float64).items()})[0]
    mse = member_loss_fn(spec, x, y, "mse")
    if weight_decay == 0:
        return mse, theta0, spec
    return (lambda theta: mse(theta) + 0.5 * weight_decay * (theta @ theta)), theta0, spec


def gd_trajectory(loss_fn: LossFn, theta0: torch.Tensor, steps: int = 3000, lr: float = 0.05,
                  every: int = 10) -> tuple[torch.Tensor, np.ndarray]:
    """Full-batch gradient descent: ``(thetas [T, P], losses [T])`` at every ``every``-th step."""
    theta = theta0.clone().requires_grad_(True)
    thetas, losses = [], []
    for step in range(steps + 1):
        value = loss_fn(theta)
        if step % every == 0:
            thetas.append(theta.detach().clone())
            losses.append(float(value.detach()))
        (g,) = torch.autograd.grad(value, theta)
        with torch.no_grad():
            theta -= lr * g
    return torch.stack(thetas), np.asarray(losses)


def memorization_minimum(weight_decay: float = 1e-2, n: int = 20) -> tuple[LossFn, torch.Tensor]:
    """The memorization net plus ``weight_decay/2 ||theta||^2`` (finite, non-degenerate minima) trained
    to a minimum by scipy's L-BFGS-B: ``(loss_fn, theta_min)`` with ||g||^2 < 1e-12.

    Raises:
        RuntimeError: L-BFGS-B stopped with ||g||^2 >= 1e-12.
    """
    from scipy.optimize import minimize

    loss_fn, theta0, _ = memorization_net(n=n, weight_decay=weight_decay)

    def value_and_grad(v):
        t = torch.from_numpy(v).requires_grad_(True)
        value = loss_fn(t)
        (g,) = torch.autograd.grad(value, t)
        return float(value.detach()), g.numpy()

    res = minimize(value_and_grad, theta0.numpy(), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=3000, gtol=1e-12, ftol=1e-16, maxcor=20))
    theta = torch.from_numpy(res.x)
    g2 = float((value_and_grad(res.x)[1] ** 2).sum())
    if g2 >= 1e-12:
        raise RuntimeError(f"L-BFGS-B stopped at ||g||^2 = {g2:.3g} ({res.message})")
    return loss_fn, theta
