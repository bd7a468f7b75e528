"""Lanczos with full reorthogonalization, and a thick-restart eigensolver for extreme eigenvalues.

All arithmetic is in the dtype of the operator's vectors (float64 expected). Reorthogonalization
is classical Gram-Schmidt applied twice against the whole basis (and any deflated vectors), so
there are no ghost copies of converged eigenvalues.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator

MatVec = Callable[[Tensor], Tensor]
Which = Literal["largest", "smallest"]


class ConvergenceWarning(UserWarning):
    """An iterative eigen-computation stopped before its tolerance was met."""


class NotConvergedError(RuntimeError):
    """An iterative eigen-computation stopped before its tolerance was met."""


class LanczosResult(NamedTuple):
    """``m`` Lanczos steps from a unit start vector.

    basis: [m, P] orthonormal Lanczos vectors; alpha: [m] and beta: [m] with ``beta[:-1]`` the
    off-diagonal of the tridiagonal T and ``beta[-1]`` the norm of the final residual;
    num_hvps: operator applications (= m).
    """

    basis: Tensor
    alpha: Tensor
    beta: Tensor
    num_hvps: int


class EigenResult(NamedTuple):
    """Extreme eigenpairs of a symmetric operator.

    eigenvalues: [k], sorted from the requested end inwards (largest first, or smallest first);
    eigenvectors: [k, P] unit rows, or None if not requested; residuals: [k] Ritz residual norms
    ``||H y - theta y||`` (same units as the eigenvalues); num_hvps: operator applications;
    converged: whether every residual met the tolerance.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    num_hvps: int
    converged: bool


def _orthogonalize(w: Tensor, basis: Tensor, deflate: Tensor | None) -> Tensor:
    """Remove from ``w`` [P] its components along ``basis`` [j, P] (and ``deflate`` [q, P]), twice.

    Returns the coefficients of ``w`` on ``basis`` [j]; ``w`` is updated in place.
    """
    coef = torch.zeros(basis.shape[0], dtype=w.dtype, device=w.device)
    for _ in range(2):
        if deflate is not None and deflate.shape[0] > 0:
            w -= deflate.T @ (deflate @ w)
        c = basis @ w
        w -= basis.T @ c
        coef += c
    return coef


def _random_unit(size: int, like: Tensor, generator: torch.Generator, basis: Tensor, deflate: Tensor | None) -> Tensor:
    v = torch.randn(size, generator=generator, dtype=like.dtype).to(like.device)
    _orthogonalize(v, basis, deflate)
    return v / v.norm()


def lanczos(matvec: MatVec, v0: Tensor, num_steps: int, deflate: Tensor | None = None) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps on a symmetric ``matvec`` from ``v0`` [P], fully reorthogonalized.

    ``deflate`` [q, P] (orthonormal rows) restricts the iteration to their orthogonal complement.
    Stops early, returning fewer steps, if an invariant subspace is found (residual ~ 0).
    """
    p = v0.numel()
    num_steps = min(num_steps, p - (0 if deflate is None else deflate.shape[0]))
    basis = torch.zeros(num_steps, p, dtype=v0.dtype, device=v0.device)
    alpha = torch.zeros(num_steps, dtype=v0.dtype, device=v0.device)
    beta = torch.zeros(num_steps, dtype=v0.dtype, device=v0.device)
    q = v0.clone()
    if deflate is not None:
        _orthogonalize(q, basis[:0], deflate)
    basis[0] = q / q.norm()
    scale = 0.0
    for j in range(num_steps):
        w = matvec(basis[j])
        coef = _orthogonalize(w, basis[: j + 1], deflate)
        alpha[j] = coef[j]
        beta[j] = w.norm()
        scale = max(scale, float(alpha[j].abs() + beta[j]))
        if beta[j] <= 1e-13 * scale:  # invariant subspace: T is exact
            beta[j] = 0.0
            return LanczosResult(basis[: j + 1], alpha[: j + 1], beta[: j + 1], j + 1)
        if j + 1 < num_steps:
            basis[j + 1] = w / beta[j]
    return LanczosResult(basis, alpha, beta, num_steps)


def tridiagonal(result: LanczosResult) -> Tensor:
    """The Lanczos tridiagonal matrix T [m, m] of a :class:`LanczosResult`."""
    off = result.beta[:-1]
    return torch.diag(result.alpha) + torch.diag(off, 1) + torch.diag(off, -1)


def ritz(result: LanczosResult) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz values [m] (ascending), Ritz vectors [m, P] and residual norms [m] = |beta_m s_{m,i}|."""
    theta, s = torch.linalg.eigh(tridiagonal(result))
    return theta, s.T @ result.basis, (result.beta[-1] * s[-1]).abs()


def _select(theta: Tensor, k: int, which: Which) -> Tensor:
    order = torch.argsort(theta, descending=(which == "largest"))
    return order[:k]


def eigsh(
    matvec: MatVec,
    size: int,
    k: int,
    which: Which = "largest",
    *,
    tol: float = 1e-10,
    max_hvps: int = 1000,
    max_basis: int | None = None,
    floor: float = 1e-6,
    deflate: Tensor | None = None,
    like: Tensor | None = None,
    seed: int | None = 0,
) -> EigenResult:
    """``k`` extreme eigenpairs of a symmetric operator of order ``size`` by thick-restart Lanczos.

    Convergence of a Ritz pair (theta, y): ``||H y - theta y|| <= tol * max(|theta|, floor ||H||)``
    (the residual bounds the eigenvalue error; ||H|| is estimated by the largest |Ritz value|). The basis grows to ``max_basis`` vectors (default
    ``max(2k + 20, 160)``), then restarts keeping the wanted Ritz vectors and half the rest.
    ``deflate`` [q, P] excludes a subspace (e.g. already-locked eigenvectors). Returns
    ``converged=False`` (without raising) when ``max_hvps`` products did not suffice.
    """
    like = torch.empty(0, dtype=torch.float64) if like is None else like
    dtype, device = like.dtype, like.device
    avail = size - (0 if deflate is None else deflate.shape[0])
    if not 0 < k <= avail:
        raise ValueError(f"k must be in 1..{avail}, got {k}")
    m = min(max_basis or max(2 * k + 20, 160), avail)
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    basis = torch.zeros(m + 1, size, dtype=dtype, device=device)
    proj = torch.zeros(m, m, dtype=dtype, device=device)
    basis[0] = _random_unit(size, like, gen, basis[:0], deflate)
    start, hvps, norm_est = 0, 0, 0.0
    while True:
        for j in range(start, m):
            w = matvec(basis[j])
            hvps += 1
            coef = _orthogonalize(w, basis[: j + 1], deflate)
            proj[: j + 1, j] = coef
            proj[j, : j + 1] = coef
            beta = float(w.norm())
            theta, s = torch.linalg.eigh(proj[: j + 1, : j + 1])
            norm_est = max(norm_est, float(theta.abs().max()))
            if beta <= 1e-13 * norm_est:  # invariant subspace found: restart the residual at random
                beta = 0.0
                if j + 1 < avail:
                    basis[j + 1] = _random_unit(size, like, gen, basis[: j + 1], deflate)
            else:
                basis[j + 1] = w / beta
            residuals = beta * s[-1].abs()
            want = _select(theta, min(k, j + 1), which)
            bound = tol * torch.clamp(theta[want].abs(), min=floor * norm_est)
            done = len(want) == k and bool((residuals[want] <= bound).all())
            if done or hvps >= max_hvps or j + 1 == avail:
                vecs = s[:, want].T @ basis[: j + 1]
                return EigenResult(theta[want], vecs, residuals[want], hvps, done)
        # Thick restart: keep the wanted Ritz vectors and the best half of the others, plus the
        # residual direction; the projected matrix becomes diag(theta) bordered by beta * s[-1].
        keep = _select(theta, max(k, k + (m - k) // 2), which)
        keep = keep[: m - 1]
        basis[: len(keep)] = s[:, keep].T @ basis[:m]
        basis[len(keep)] = basis[m]
        proj.zero_()
        proj[range(len(keep)), range(len(keep))] = theta[keep]
        start = len(keep)


def extreme_eigenvalues(
    loss_fn: LossFn,
    theta: Tensor,
    k: int,
    which: Which = "largest",
    *,
    tol: float = 1e-8,
    max_steps: int = 1000,
    max_basis: int | None = None,
    return_vectors: bool = False,
    on_fail: Literal["raise", "warn"] = "raise",
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
) -> EigenResult:
    """The ``k`` largest or smallest Hessian eigenvalues of ``loss_fn`` at ``theta`` [P].

    Thick-restart Lanczos with full reorthogonalization, at most ``max_steps`` Hessian-vector
    products. Eigenvalues come sorted from the requested end. Each is accepted when its Ritz
    residual is below ``tol`` times its magnitude (floored at 1e-6 of the largest magnitude seen).
    If that fails within ``max_steps``, ``on_fail="raise"`` raises :class:`NotConvergedError` and
    ``"warn"`` emits a :class:`ConvergenceWarning` and returns ``converged=False``; both state the
    residuals.
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    op = hessian_operator(loss_fn, theta, backend)
    res = eigsh(op, theta.numel(), k, which, tol=tol, max_hvps=max_steps, max_basis=max_basis,
                like=theta.detach(), seed=seed)
    if not res.converged:
        report_not_converged(res, f"{which} {k} eigenvalues", tol, on_fail)
    return res if return_vectors else res._replace(eigenvectors=None)


def report_not_converged(res: EigenResult, what: str, tol: float, on_fail: str) -> None:
    """Raise or warn that ``res`` did not converge, quoting its values and residuals."""
    msg = (
        f"Lanczos did not converge for the {what} after {res.num_hvps} Hessian-vector products "
        f"(tol={tol:g}): eigenvalues {res.eigenvalues.tolist()} with residual norms "
        f"{res.residuals.tolist()}. Raise max_steps or loosen tol; do not use these as results."
    )
    if on_fail == "raise":
        raise NotConvergedError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)
