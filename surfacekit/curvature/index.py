"""The index of a point: how many Hessian eigenvalues lie below a stated negative threshold.

Counted exactly, two ways: dense ``eigvalsh`` while P is at most ``dense_limit``, and beyond it by
Lanczos on the negative tail (smallest eigenpairs found a block at a time, each block locked and
deflated, until a converged eigenvalue above the threshold appears). Never read off the mass of a
smoothed spectral density, which is badly biased near zero.
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .dense import dense_hessian
from .hvp import DEFAULT_BACKEND, Backend, LossFn, check_theta, hessian_operator
from .lanczos import ConvergenceWarning, NotConvergedError, eigsh

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
    tol: float = 1e-10,
    max_steps: int = 100_000,
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
) -> IndexResult:
    """Number (and fraction) of Hessian eigenvalues of ``loss_fn`` at ``theta`` [P] below a threshold.

    ``threshold`` is absolute (eigenvalue units); if None it is
    ``-relative_threshold * max|lambda|`` (default -1e-5 max|lambda|). A threshold of 0 is accepted
    with a warning: near-zero eigenvalues are numerical noise there. ``method="auto"`` is dense
    while P <= ``dense_limit``. The Lanczos path needs eigenvalues converged to ``tol * max|lambda|``
    in residual, locks ``block`` at a time, stops after ``cap`` (returning ``count=cap`` with
    ``at_least=True``) and raises :class:`NotConvergedError` past ``max_steps`` products in all.
    """
    check_theta(theta)
    p = theta.numel()
    if method == "auto":
        method = "dense" if p <= dense_limit else "lanczos"
    if method not in ("dense", "lanczos"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'dense' or 'lanczos'")
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
    ends = [eigsh(op, p, 1, w, tol=tol, max_hvps=max_steps, like=like, seed=seed) for w in ("largest", "smallest")]
    for res in ends:
        if not res.converged:
            raise NotConvergedError(f"index: extreme eigenvalue not converged: {res.eigenvalues.tolist()}, "
                                    f"residual {res.residuals.tolist()}")
    scale = max(abs(float(r.eigenvalues[0])) for r in ends)
    tau = _absolute(threshold, relative_threshold, scale)
    locked = torch.zeros(0, p, dtype=theta.dtype, device=theta.device)
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
                          "the count may be off by one there", ConvergenceWarning, stacklevel=2)
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
