"""The minimum-length least-squares solution of ``H x = b`` for a symmetric, possibly singular H.

Newton steps at the degenerate critical points the finders look for (symmetric points of
networks, embedded units, overparametrized fits) meet a singular Hessian whose kernel g has a
component in. Plain MINRES then returns *a* least-squares solution, not the shortest: its
iterate picks up an arbitrarily large component along the kernel (measured: 6.9e8 on a 8 x 8
quadratic with a kernel component of 0.3 in g). The answer a Newton step needs is the
pseudo-inverse solution ``x = H^+ b``, which MINRES-QLP (Choi, Paige and Saunders, SIAM J. Sci.
Comput. 33, 2011) computes as the minimum-length solution of the projected problem
``min ||T_k y - beta_1 e_1||`` over the Krylov subspace ``K_k(H, b)``, ``x = V_k y``. This module
solves that same projected problem, differently:

* Lanczos with full reorthogonalization keeps the basis ``V`` [k + 1, P] (memory ``8 (k + 1) P``
  bytes), so the subspace stays orthogonal in floating point and k never needs to exceed P;
  ``curvature.lanczos`` is not called because the solver must test convergence after every
  product, which that routine does not expose.
* Givens rotations of ``T_k`` (as in MINRES, Paige and Saunders 1975) give the residual norm
  ``phi_k = ||b - H x_k||`` and the least-squares optimality ``||H r_k||`` after every step:
  ``||H r_k||^2 = phi_k^2 (gamma_bar_{k+1}^2 + (c_k beta_{k+2})^2)``, where ``gamma_bar_{k+1}``
  is the diagonal of column k + 1 after the previous rotations and ``c_k`` the cosine of
  rotation k (derived from ``r_k = V_{k+1} Q_k^T phi_k e_{k+1}`` and ``Q_k T_k = [R_k; 0]``).
* At the end, the projected problem is solved by an SVD of ``T_k`` [k + 1, k], dropping singular
  values at or below ``rcond * sigma_max``: that is the minimum-length solution, so no component
  along a (numerical) kernel enters the step. Those dropped directions are the kernel found in
  the subspace (``kernel_dim``).

Singular values of ``T_k`` are at least the smallest nonzero singular value of H restricted to
the subspace (``||T_k y|| = ||H V_k y||``), so ``rcond`` only removes directions H maps to
(nearly) zero.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]
REASONS = ("zero_rhs", "residual", "least_squares", "invariant", "maxiter", "nonfinite")


class KrylovSolve(NamedTuple):
    """A minimum-length solve.

    solution [P]: ``x ~ H^+ b``; residual_norm: ``||b - H x||`` of the projected problem (equal to
    the true residual up to rounding, since the basis is orthogonal); iterations: products with H
    (HVPs); kernel_dim: singular values of ``T_k`` dropped as zero; reason: why it stopped
    ("residual": ``||r|| <= rtol ||b||``; "least_squares": ``||H r|| <= rtol ||H|| ||r||``, the
    inconsistent case; "invariant": the subspace is invariant under H, so the projected solution
    is exact; "maxiter"; "zero_rhs"; "nonfinite": a product was not finite, solution is zeros);
    converged: reason is one of the first four.
    """

    solution: Tensor
    residual_norm: float
    iterations: int
    kernel_dim: int
    reason: str

    @property
    def converged(self) -> bool:
        return self.reason in ("zero_rhs", "residual", "least_squares", "invariant")


def minimum_length_solve(matvec: MatVec, b: Tensor, *, rtol: float = 1e-10, maxiter: int | None = None,
                         rcond: float = 1e-10) -> KrylovSolve:
    """The minimum-length least-squares solution of ``H x = b``, H symmetric (``matvec``), b [P].

    Stops after the first step where ``||b - H x|| <= rtol ||b||`` (consistent systems), or
    ``||H r|| <= rtol ||T|| ||r||`` (inconsistent: x is a least-squares solution; ``||T||`` is the
    largest column norm of the Lanczos tridiagonal, an estimate of ``||H||``), or the Krylov
    subspace is invariant, or after ``maxiter`` products (default ``min(P, 1000)``; at most P).
    All tests are relative, so the solution does not depend on the units of H and b.

    Cost: one product with H per iteration, plus ``8 k P`` flops in iteration k for the
    reorthogonalization (``4 k^2 P`` in all) and one SVD of a [k + 1, k] matrix at the end.
    Memory: the basis, ``8 (k + 1) P`` bytes after k iterations (grown by doubling, so at most
    twice that and never more than ``8 (min(maxiter, P) + 1) P``).

    Raises:
        ValueError: ``b`` is not a 1-D floating-point tensor or not finite, ``rtol`` or ``rcond``
            is negative, or ``maxiter < 1``.
    """
    if not isinstance(b, Tensor) or b.ndim != 1 or not b.is_floating_point():
        raise ValueError("b must be a 1-D floating-point tensor [P]")
    if rtol < 0 or rcond < 0:
        raise ValueError(f"rtol and rcond must be >= 0, got {rtol}, {rcond}")
    p = b.numel()
    beta1 = float(b.norm())
    if not math.isfinite(beta1):
        raise ValueError("b is not finite")
    if beta1 == 0:
        return KrylovSolve(torch.zeros_like(b), 0.0, 0, 0, "zero_rhs")
    limit = min(p, 1000) if maxiter is None else int(maxiter)
    if limit < 1:
        raise ValueError(f"maxiter must be >= 1 or None, got {maxiter}")
    m = min(limit, p)
    basis = torch.zeros(min(m, 32) + 1, p, dtype=b.dtype, device=b.device)  # grown by doubling
    basis[0] = b / beta1
    alpha = [0.0] * m
    off = [0.0] * m  # off[j]: coupling of v_j and v_{j+1}
    c2, c1, s1 = 1.0, 1.0, 0.0  # cosine of rotation k-2, cosine and sine of rotation k-1
    phibar, tnorm = beta1, 0.0
    reason, columns = "maxiter", m
    for k in range(m):
        w = matvec(basis[k]).to(dtype=b.dtype)
        if not bool(torch.isfinite(w).all()):
            return KrylovSolve(torch.zeros_like(b), float("nan"), k + 1, 0, "nonfinite")
        coef = basis[: k + 1] @ w
        w = w - coef @ basis[: k + 1]
        again = basis[: k + 1] @ w
        w = w - again @ basis[: k + 1]
        a = float(coef[k] + again[k])
        bnext = float(w.norm())
        bprev = off[k - 1] if k > 0 else 0.0
        alpha[k], off[k] = a, bnext
        tnorm = max(tnorm, math.sqrt(bprev**2 + a**2 + bnext**2))
        # Column k of T: (bprev, a, bnext) in rows k-1, k, k+1. Apply the two previous rotations
        # (rotation k-2 also makes an entry in row k-2, which only the solution, not the tests, needs).
        dtil = c2 * bprev
        gbar = -s1 * dtil + c1 * a
        # ||H r|| of the previous iterate (x = 0 before the first step).
        h_res_prev = abs(phibar) * math.sqrt(gbar**2 + (c1 * bnext) ** 2)
        res_prev = abs(phibar)
        gamma = math.hypot(gbar, bnext)
        c, s = (gbar / gamma, bnext / gamma) if gamma > 0 else (1.0, 0.0)
        phibar = -s * phibar
        c2, c1, s1 = c1, c, s
        columns = k + 1
        if bnext <= 1e-13 * tnorm:  # first: a singular T then makes gamma ~ 0 and the rotation arbitrary
            reason = "invariant"
            break
        if abs(phibar) <= rtol * beta1:
            reason = "residual"
            break
        if k > 0 and h_res_prev <= rtol * tnorm * res_prev:
            reason = "least_squares"
            break
        if k + 1 < m:
            if k + 1 == basis.shape[0]:
                basis = torch.cat([basis, torch.zeros(min(m + 1, 2 * basis.shape[0]) - basis.shape[0], p,
                                                      dtype=b.dtype, device=b.device)])
            basis[k + 1] = w / bnext
    x, residual, dropped = _projected_solution(basis, alpha, off, columns, beta1, rcond)
    return KrylovSolve(x, residual, columns, dropped, reason)


def _projected_solution(basis: Tensor, alpha: list[float], off: list[float], n: int, beta1: float,
                        rcond: float) -> tuple[Tensor, float, int]:
    """Minimum-length ``argmin ||T y - beta1 e1||`` over the first ``n`` columns; ``(V y, residual, dropped)``."""
    like = dict(dtype=basis.dtype, device=basis.device)
    t = torch.zeros(n + 1, n, **like)
    idx = torch.arange(n)
    t[idx, idx] = torch.tensor(alpha[:n], **like)
    t[idx + 1, idx] = torch.tensor(off[:n], **like)
    t[idx[:-1], idx[1:]] = torch.tensor(off[: n - 1], **like)
    rhs = torch.zeros(n + 1, **like)
    rhs[0] = beta1
    u, sv, vh = torch.linalg.svd(t, full_matrices=False)
    keep = sv > rcond * sv[0]
    y = vh[keep].T @ ((u[:, keep].T @ rhs) / sv[keep])
    residual = float((rhs - t @ y).norm())
    return y @ basis[:n], residual, int((~keep).sum())
