"""The index of a point: how many Hessian eigenvalues lie below a stated negative threshold.

Counted exactly, two ways: dense ``eigvalsh`` while P is at most ``dense_limit``, and beyond it by
one continuing thick-restart Lanczos run on the negative tail that locks converged eigenpairs as it
goes (those below the threshold are counted, the converged outliers at the top are deflated), until
the smallest Ritz values are converged up to one above the threshold. Never read off the mass of a
smoothed spectral density, which is badly biased near zero.
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .dense import dense_hessian
from .hvp import DEFAULT_BACKEND, Backend, HessianOperator, LossFn, check_theta, hessian_operator
from .lanczos import ConvergenceWarning, NotConvergedError, _orthogonalize, _random_unit, eigsh

DEFAULT_RELATIVE_THRESHOLD = 1e-5


class IndexResult(NamedTuple):
    """count: eigenvalues with lambda < threshold (exact, or a lower bound if ``at_least``);
    fraction: count / P; method: "dense" or "lanczos"; threshold: the absolute threshold used
    (eigenvalue units); relative_threshold: threshold / max|lambda|; at_least: the Lanczos count hit
    ``cap``, so the true count is >= count; max_abs_eigenvalue: max|lambda| (the scale);
    num_hvps: Hessian-vector products used (P for the dense path)."""

    count: int
    fraction: float
    method: str
    threshold: float
    relative_threshold: float
    at_least: bool
    max_abs_eigenvalue: float
    num_hvps: int


def index(
    loss_fn: LossFn,
    theta: Tensor,
    threshold: float | None = None,
    *,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
    method: Literal["auto", "dense", "lanczos"] = "auto",
    dense_limit: int = 6000,
    cap: int = 1000,
    block: int = 16,
    basis_size: int | None = None,
    strategy: Literal["locking", "blocks"] = "locking",
    tol: float = 1e-10,
    max_steps: int = 100_000,
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
) -> IndexResult:
    """Number (and fraction) of Hessian eigenvalues of ``loss_fn`` at ``theta`` [P] below a threshold.

    ``threshold`` is absolute (eigenvalue units); if None it is
    ``-relative_threshold * max|lambda|`` (default -1e-5 max|lambda|). A threshold of 0 is accepted
    with a warning: near-zero eigenvalues are numerical noise there. ``method="auto"`` is dense
    while P <= ``dense_limit``. The Lanczos path (``strategy="locking"``, default) runs one
    thick-restart Lanczos iteration with a basis of ``basis_size`` vectors (default 300; memory
    8 x basis_size x P bytes), accepts Ritz pairs with residual <= ``tol * max|lambda|``, locks every
    converged pair at each restart, and stops when the Ritz values are converged in ascending order
    up to one at or above the threshold. ``strategy="blocks"`` is the earlier path (the smallest
    ``block`` pairs of the deflated operator from a fresh start each time), kept for comparison: it
    gives the same counts at several times the products. Both stop after ``cap`` (returning
    ``count=cap`` with ``at_least=True``) and raise :class:`NotConvergedError` past ``max_steps``
    products in all.
    """
    check_theta(theta)
    p = theta.numel()
    if method == "auto":
        method = "dense" if p <= dense_limit else "lanczos"
    if method not in ("dense", "lanczos"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'dense' or 'lanczos'")
    if strategy not in ("locking", "blocks"):
        raise ValueError(f"unknown strategy {strategy!r}; use 'locking' or 'blocks'")
    if threshold is not None and threshold == 0:
        warnings.warn(
            "index threshold 0 is not numerically resolvable: many eigenvalues of a trained network "
            "are ~0 and their signs are rounding noise. Prefer the default relative threshold.",
            UserWarning,
            stacklevel=2,
        )
    if method == "dense":
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta, backend=backend))
        scale = float(eig.abs().max())
        tau = _absolute(threshold, relative_threshold, scale)
        count = int((eig < tau).sum())
        return IndexResult(count, count / p, "dense", tau, _relative(tau, scale), False, scale, p)

    op = hessian_operator(loss_fn, theta, backend)
    like = theta.detach()
    if strategy == "blocks":
        return _count_by_blocks(op, like, threshold, relative_threshold, cap, block, tol, max_steps, seed)
    return _count_by_locking(op, like, threshold, relative_threshold, cap, basis_size, tol, max_steps, seed)


def _count_by_locking(op: HessianOperator, like: Tensor, threshold: float | None, relative: float, cap: int,
                      basis_size: int | None, tol: float, max_hvps: int, seed: int | None) -> IndexResult:
    """One thick-restart Lanczos run on the negative tail that locks converged eigenpairs as it goes.

    The basis (``basis_size`` vectors) is never thrown away: at each restart, converged Ritz pairs
    below the threshold move into the locked set (later vectors are orthogonalized against them),
    and the smallest unconverged Ritz vectors are kept as the new start of the basis. The count
    stops when, scanning the current Ritz values upwards, every one is converged up to the first one
    at or above the threshold; that is the same stopping rule as the block path, without restarting
    from a fresh random vector per block.
    """
    p = like.numel()
    top = eigsh(op, p, 1, "largest", tol=tol, max_hvps=max_hvps, like=like, seed=seed)
    if not top.converged:
        raise NotConvergedError(f"index: largest eigenvalue not converged: {top.eigenvalues.tolist()}, "
                                f"residual {top.residuals.tolist()}")
    lam_max = float(top.eigenvalues[0])
    m = min(basis_size or 300, p)
    gen = torch.Generator().manual_seed(seed + 1) if seed is not None else torch.Generator()
    dtype, device = like.dtype, like.device
    basis = torch.zeros(m + 1, p, dtype=dtype, device=device)
    proj = torch.zeros(m, m, dtype=dtype, device=device)
    locked = torch.zeros(0, p, dtype=dtype, device=device)
    locked_values = torch.zeros(0, dtype=dtype, device=device)
    locked_residuals = torch.zeros(0, dtype=dtype, device=device)
    basis[0] = _random_unit(p, like, gen, basis[:0], locked)
    check = max(1, m // 25)
    start = 0
    while True:
        avail = p - locked.shape[0]
        mm = min(m, avail)
        beta = 0.0
        for j in range(start, mm):
            w = op(basis[j])
            coef = _orthogonalize(w, basis[: j + 1], locked)
            proj[: j + 1, j] = coef
            proj[j, : j + 1] = coef
            beta = float(w.norm())
            if beta <= 1e-13 * abs(lam_max):  # invariant subspace: continue from a fresh direction
                beta = 0.0
                if j + 1 < avail:
                    basis[j + 1] = _random_unit(p, like, gen, basis[: j + 1], locked)
            else:
                basis[j + 1] = w / beta
            last = j + 1 == mm
            if not last and (j + 1 - start) % check:
                continue
            theta, s = torch.linalg.eigh(proj[: j + 1, : j + 1])
            residuals = beta * s[-1].abs()
            if j + 1 == avail:  # the basis spans the whole complement of the locked vectors: exact
                residuals = torch.zeros_like(residuals)
            scale = max(abs(lam_max), abs(float(theta[0])),
                        float(locked_values.abs().max()) if len(locked_values) else 0.0)
            tau = _absolute(threshold, relative, scale)
            converged = residuals <= tol * scale
            prefix = int(torch.cumprod(converged.to(torch.int64), 0).sum())
            below_prefix = int((theta[:prefix] < tau).sum())
            count = int((locked_values < tau).sum()) + below_prefix
            if count > cap:
                return IndexResult(cap, cap / p, "lanczos", tau, _relative(tau, scale), True, scale, op.num_hvps)
            if prefix > below_prefix or j + 1 == avail:
                near = torch.cat([locked_values - tau, theta[:prefix] - tau]).abs()
                if bool((near <= torch.cat([locked_residuals, residuals[:prefix]])).any()):
                    warnings.warn(f"index: an eigenvalue lies within its residual of the threshold {tau:g}; "
                                  "the count may be off by one there", ConvergenceWarning, stacklevel=3)
                return IndexResult(count, count / p, "lanczos", tau, _relative(tau, scale), False, scale,
                                   op.num_hvps)
            if op.num_hvps >= max_hvps:
                raise NotConvergedError(
                    f"index (lanczos): {count} eigenvalues below {tau:g} found, then not converged after "
                    f"{op.num_hvps} products in all: smallest Ritz values {theta[:5].tolist()}, residuals "
                    f"{residuals[:5].tolist()}; raise max_steps or use method='dense'")
        # Restart: lock every converged pair (those below the threshold are counted; the others,
        # mostly the large outliers, are exact eigenvectors whose deflation shrinks the spectral
        # range the negative tail competes against); keep the smallest half of the rest.
        lock = converged
        rest = torch.nonzero(~lock).flatten()  # ascending Ritz values
        n_keep = min(len(rest), max((mm - int(lock.sum())) // 2, 1), mm - 1)
        keep = rest[:n_keep]
        new_locked = s[:, lock].T @ basis[:mm]
        kept = s[:, keep].T @ basis[:mm]
        locked = torch.cat([locked, new_locked])
        locked_values = torch.cat([locked_values, theta[lock]])
        locked_residuals = torch.cat([locked_residuals, residuals[lock]])
        residual_vector = basis[mm].clone()
        basis[:n_keep] = kept
        basis[n_keep] = residual_vector
        proj.zero_()
        proj[range(n_keep), range(n_keep)] = theta[keep]
        start = n_keep


def _count_by_blocks(op: HessianOperator, like: Tensor, threshold: float | None, relative: float, cap: int,
                     block: int, tol: float, max_steps: int, seed: int | None) -> IndexResult:
    """The first Lanczos index path, kept for comparison: smallest ``block`` eigenpairs of the
    deflated operator from a fresh random start each time, locked, until one is above the threshold."""
    p = like.numel()
    ends = [eigsh(op, p, 1, w, tol=tol, max_hvps=max_steps, like=like, seed=seed) for w in ("largest", "smallest")]
    for res in ends:
        if not res.converged:
            raise NotConvergedError(f"index: extreme eigenvalue not converged: {res.eigenvalues.tolist()}, "
                                    f"residual {res.residuals.tolist()}")
    scale = max(abs(float(r.eigenvalues[0])) for r in ends)
    tau = _absolute(threshold, relative, scale)
    locked = torch.zeros(0, p, dtype=like.dtype, device=like.device)
    count, at_least, done = 0, False, float(ends[1].eigenvalues[0]) >= tau
    while not done:
        want = min(block, cap + 1 - count, p - count)
        res = eigsh(op, p, want, "smallest", tol=tol, floor=1.0, max_hvps=max_steps - op.num_hvps,
                    deflate=locked, like=like, seed=None if seed is None else seed + count + 1)
        if not res.converged:
            raise NotConvergedError(
                f"index (lanczos): {count} eigenvalues below {tau:g} locked, then not converged after "
                f"{op.num_hvps} products in all: values {res.eigenvalues.tolist()}, residuals "
                f"{res.residuals.tolist()}; raise max_steps or use method='dense'")
        close = (res.eigenvalues - tau).abs() <= res.residuals
        if bool(close.any()):
            warnings.warn(f"index: an eigenvalue lies within its residual of the threshold {tau:g}; "
                          "the count may be off by one there", ConvergenceWarning, stacklevel=3)
        below = res.eigenvalues < tau
        n_below = int(below.sum())
        locked = torch.cat([locked, res.eigenvectors[below]])
        count += n_below
        done = n_below < want or count == p
        if count > cap:
            count, at_least, done = cap, True, True
    return IndexResult(count, count / p, "lanczos", tau, _relative(tau, scale), at_least, scale, op.num_hvps)


def _absolute(threshold: float | None, relative: float, scale: float) -> float:
    return -relative * scale if threshold is None else float(threshold)


def _relative(tau: float, scale: float) -> float:
    return tau / scale if scale > 0 else float("nan")
