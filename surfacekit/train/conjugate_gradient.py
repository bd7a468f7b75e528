"""Batched, truncated conjugate gradient for K independent symmetric positive-definite systems.

Solves ``A_k x_k = b_k`` for every member k at once (Hestenes and Stiefel 1952; Nocedal and
Wright, Algorithm 5.2), with one batched product ``apply(v [K, P]) -> [K, P]`` per iteration
and per-member scalars, so members stop independently and a stopped member's iterate is frozen.
It also minimizes the quadratic ``phi_k(x) = 1/2 x^T A_k x - b_k^T x``, tracked at every
iterate (``phi = -1/2 x^T (b + r)`` with the residual r = b - A x, no extra product).

Stopping rules, per member: the relative residual ``||r|| <= tol ||b||``; Martens' (2010,
Section 4.4) relative progress on phi, ``i > k``, ``phi_i < 0`` and
``(phi_i - phi_{i-k}) / phi_i < k progress_tol`` with ``k = max(10, ceil(0.1 i))``; a direction
of non-positive curvature ``p^T A p <= 0`` (the iterate before it is kept: with an indefinite
A, CG's model is unbounded along p); a non-finite product; ``max_iter``. A start ``x0`` whose phi
is positive is worse than 0 and is replaced by 0 (Martens' warm start keeps phi <= 0).

For Hessian-free backtracking the iterates at ``i = ceil(save_growth^j)`` are kept
(Martens 2010, Section 4.6) with their phi values.

Written here rather than taken from scipy (``scipy.sparse.linalg.cg``): scipy solves one system
on numpy vectors and has neither the per-member stopping nor Martens' rule and saved iterates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

STOPS = ("inactive", "residual", "progress", "max_iter", "negative_curvature", "non_finite")


@dataclass
class CGResult:
    """What :func:`conjugate_gradient` returns (K members, S saved iterates).

    solution [K, P]: each member's last iterate; phi [K]: its quadratic value; iterations [K]: CG
    steps taken; products [K]: products with A used (the start's residual included);
    stop: per member, an entry of ``STOPS``; saved: iterates [K, P] at ``saved_steps`` (global step
    numbers); saved_valid [S, K]: True where the saved iterate is one of the member's own iterates
    before its last (a stopped member's frozen iterate is not saved again); saved_phi [S, K].
    """

    solution: Tensor
    phi: Tensor
    iterations: Tensor
    products: Tensor
    stop: list[str]
    saved: list[Tensor]
    saved_steps: list[int]
    saved_valid: Tensor
    saved_phi: Tensor


def save_steps(growth: float | None, max_iter: int) -> set[int]:
    """The steps ``ceil(growth^j)`` <= max_iter, j = 0, 1, ... (empty without growth)."""
    if growth is None:
        return set()
    if growth <= 1:
        raise ValueError(f"save_growth={growth} must be > 1")
    steps, j = set(), 0
    while (step := math.ceil(growth**j - 1e-12)) <= max_iter:
        steps.add(step)
        j += 1
    return steps


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *, max_iter: int,
                       tol: float = 0.0, progress_tol: float = 0.0, save_growth: float | None = None,
                       active: Tensor | None = None) -> CGResult:
    """Truncated CG on K systems ``A_k x = b_k``; b, x0 [K, P]; ``apply(v [K, P]) -> [A_k v_k]``.

    Args:
        apply: the batched product; must be linear and symmetric per member (positive definite for a
            full solve; with an indefinite A the member stops at the first non-positive curvature).
        b, x0: right sides and starts (x0 None: zero, and no product for the start).
        max_iter: CG steps at most. tol: relative residual stop (0: off).
        progress_tol: Martens' epsilon (0: off). save_growth: keep iterates at ceil(growth^j) (None: none).
        active [K] bool: members to solve for (the others return x0 unchanged, stop "inactive", 0 steps).

    Cost: ``max(iterations) (+1 with x0)`` batched products; memory (4 + S) [K, P] tensors.
    Exact arithmetic solves an SPD system in at most P steps (as many as A has distinct eigenvalues).

    Raises:
        ValueError: shapes that disagree, max_iter < 1 or save_growth <= 1.
    """
    if b.dim() != 2 or (x0 is not None and x0.shape != b.shape) or max_iter < 1:
        raise ValueError("conjugate_gradient: b and x0 must be [K, P] of the same shape, max_iter >= 1")
    k = b.shape[0]
    keep = save_steps(save_growth, max_iter)
    active = torch.ones(k, dtype=torch.bool, device=b.device) if active is None else active.clone()
    products = torch.zeros(k, dtype=torch.int64, device=b.device)
    if x0 is None or not bool(x0.ne(0).any()):
        x, r = torch.zeros_like(b), b.clone()
    else:
        x = x0.clone()
        r = b - apply(x)
        products += active
        worse = active & (-0.5 * _dot(x, b + r) > 0)
        x[worse], r[worse] = 0.0, b[worse]
    stop = ["max_iter" if a else "inactive" for a in active.tolist()]
    bb = _dot(b, b)
    running = active & (_dot(r, r) > (tol * tol) * bb) & (bb > 0)
    for m in (active & ~running).nonzero().flatten().tolist():
        stop[m] = "residual"
    p, rr = r.clone(), _dot(r, r)
    phis = [-0.5 * _dot(x, b + r)]
    iterations = torch.zeros(k, dtype=torch.int64, device=b.device)
    saved, saved_steps, saved_valid, saved_phi = [], [], [], []
    for i in range(1, max_iter + 1):
        if not bool(running.any()):
            break
        ap = apply(p)
        products += running
        pap = _dot(p, ap)
        bad = running & ~(torch.isfinite(pap) & torch.isfinite(ap).all(dim=1))
        negative = running & ~bad & (pap <= 0)
        step = running & ~bad & ~negative
        alpha = torch.where(step, rr / torch.where(step, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = torch.where(step[:, None], x + alpha[:, None] * p, x)
        r = torch.where(step[:, None], r - alpha[:, None] * ap, r)
        rr_new = _dot(r, r)
        beta = torch.where(step, rr_new / torch.where(step, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = torch.where(step[:, None], r + beta[:, None] * p, p)
        rr = torch.where(step, rr_new, rr)
        iterations += step
        phi = -0.5 * _dot(x, b + r)
        phis.append(phi)
        done = {"non_finite": bad, "negative_curvature": negative,
                "residual": step & (rr_new <= (tol * tol) * bb)}
        if progress_tol > 0:
            lag = max(10, math.ceil(0.1 * i))
            if i > lag:
                progress = (phi - phis[i - lag]) / phi
                done["progress"] = step & ~done["residual"] & (phi < 0) & (progress < lag * progress_tol)
        if i == max_iter:
            done["max_iter"] = step
        stopped = torch.zeros_like(running)
        for reason, mask in done.items():
            for m in (mask & ~stopped).nonzero().flatten().tolist():
                stop[m] = reason
            stopped |= mask
        if i in keep:
            saved.append(x.clone())
            saved_steps.append(i)
            saved_valid.append(step & ~stopped)
            saved_phi.append(phi)
        running &= ~stopped
    final_phi = -0.5 * _dot(x, b + r)
    empty = torch.zeros(0, k, device=b.device)
    return CGResult(
        solution=x, phi=final_phi, iterations=iterations, products=products, stop=stop, saved=saved,
        saved_steps=saved_steps,
        saved_valid=torch.stack(saved_valid) if saved_valid else empty.bool(),
        saved_phi=torch.stack(saved_phi) if saved_phi else empty.to(b.dtype),
    )
