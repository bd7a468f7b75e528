"""The index of a point: how many Hessian eigenvalues lie below a stated negative threshold.

**One threshold convention** for every index in the package (the spin glass included): an absolute
``threshold < 0`` (eigenvalue units), or, when it is None, ``threshold = -relative_threshold *
max|lambda|`` with ``relative_threshold > 0`` (default 1e-5). A positive threshold would count
non-negative eigenvalues and is refused; 0 is accepted with a warning (the signs of near-zero
eigenvalues are rounding noise). One counting rule: ``lambda < threshold`` (:func:`count_below`).

Counted exactly, two ways: dense ``eigvalsh`` of the Hessian assembled from batched Hessian-vector
products while P is at most ``dense_limit``; beyond it by the block Krylov loop of :mod:`.krylov`
on the negative tail, which locks converged eigenpairs as it goes and closes the count with a
completion certificate. Never read off the mass of a smoothed spectral density, which is badly
biased near zero.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .clusters import cluster_sizes, describe
from .dense import DEFAULT_CHUNK, assemble_hessian
from .errors import ConvergenceWarning, NotConvergedError
from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator
from .krylov import Goal, block_krylov
from .lanczos import DEFAULT_BLOCK, start_block
from .memory import FLOAT64_BYTES, krylov_workspace, require_memory

DEFAULT_RELATIVE_THRESHOLD = 1e-5
DEFAULT_INDEX_BASIS = 300


class IndexResult(NamedTuple):
    """count: eigenvalues with lambda < threshold (exact, or a lower bound if ``at_least``);
    fraction: count / P; method: "dense" or "lanczos"; threshold: the absolute threshold used
    (eigenvalue units, < 0 except an explicit 0); relative_threshold: threshold / max|lambda|;
    at_least: the Lanczos count hit ``cap``, so the true count is >= count; max_abs_eigenvalue:
    max|lambda| (the scale); num_hvps: Hessian-vector products used (P for the dense path).
    certificate: the smallest eigenvalue of H restricted to the complement of the locked
    eigenvectors (eigenvalue units; >= threshold). Dense: the first eigenvalue not counted, read
    off eigvalsh. Lanczos: the smallest Ritz value of H without the counted eigenvectors (and any
    deflated outliers) from fresh random start vectors after the count stopped (see :func:`index`);
    an upper bound on that eigenvalue, within ``certificate_residual`` of an eigenvalue. nan when
    ``at_least`` or when every eigenvalue was counted.
    certificate_residual: its residual norm (0 for dense); certificate_hvps: the products it took (0
    for dense); certificate_steps: its block steps before any restart; block: vectors per batched
    product (the Krylov block, or the dense assembly chunk); eigenvalues: [count] the counted
    eigenvalues, ascending (``summary()`` shows them with multiplicities, e.g. ``"-0.5 (x20)"``).
    """

    count: int
    fraction: float
    method: str
    threshold: float
    relative_threshold: float
    at_least: bool
    max_abs_eigenvalue: float
    num_hvps: int
    certificate: float = float("nan")
    certificate_residual: float = float("nan")
    certificate_hvps: int = 0
    certificate_steps: int = 0
    block: int = 0
    eigenvalues: Tensor | None = None

    def summary(self, tol: float = 1e-10, limit: int = 12) -> str:
        """``"index 23 below -1.2e-05: -0.5 (x20), -0.31, -0.2 (x2)"``: the counted eigenvalues with
        multiplicities (values equal to ``tol`` x max|lambda| form one cluster), the ``limit`` most
        negative clusters shown."""
        head = f"index {self.count}{'+' if self.at_least else ''} below {self.threshold:.3g}"
        if self.eigenvalues is None or not len(self.eigenvalues):
            return head
        residuals = torch.full_like(self.eigenvalues, tol * self.max_abs_eigenvalue / 2)
        return f"{head}: {describe(self.eigenvalues, cluster_sizes(self.eigenvalues, residuals, 0.0), limit=limit)}"


class ThresholdCount(NamedTuple):
    """Per row of a batch of spectra: count [...] (int64) of eigenvalues below the threshold,
    threshold [...] (absolute, eigenvalue units), scale [...] (max|lambda|), certificate [...]
    (the smallest eigenvalue >= threshold; nan if none)."""

    count: Tensor
    threshold: Tensor
    scale: Tensor
    certificate: Tensor


def check_threshold(threshold: float | None, relative_threshold: float) -> None:
    """Enforce the threshold convention (module docstring); warn for an absolute threshold of 0.

    Raises:
        ValueError: ``threshold > 0`` or not finite; ``relative_threshold <= 0`` or not finite
            (when it is used, i.e. ``threshold`` is None).
    """
    if threshold is None:
        if not (math.isfinite(relative_threshold) and relative_threshold > 0):
            raise ValueError(f"relative_threshold must be a finite number > 0 (the threshold is "
                             f"-relative_threshold * max|lambda|), got {relative_threshold!r}")
        return
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if t > 0:
        raise ValueError(
            f"threshold={t:g} is positive, but the index counts eigenvalues below a negative threshold (a positive "
            f"one counts non-negative eigenvalues). Pass threshold={-t:g} (absolute, eigenvalue units) or "
            f"relative_threshold=... with threshold=None (threshold = -relative_threshold * max|lambda|).")
    if t == 0:
        warnings.warn(
            "index threshold 0 is not numerically resolvable: many eigenvalues of a trained network "
            "are ~0 and their signs are rounding noise. Prefer the default relative threshold.",
            UserWarning,
            stacklevel=3,
        )


def count_below(eigenvalues: Tensor, threshold: float | None = None,
                relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD) -> ThresholdCount:
    """The counting rule of every index: eigenvalues [..., M] strictly below the threshold, per row.

    The threshold follows the convention of :func:`check_threshold` (absolute, or
    ``-relative_threshold * max|lambda|`` of each row). Used by the dense path of :func:`index` and
    by the spin glass (batched over start points).
    """
    check_threshold(threshold, relative_threshold)
    scale = eigenvalues.abs().amax(dim=-1)
    tau = -relative_threshold * scale if threshold is None else torch.full_like(scale, float(threshold))
    below = eigenvalues < tau.unsqueeze(-1)
    above = torch.where(below, torch.full_like(eigenvalues, math.inf), eigenvalues).amin(dim=-1)
    certificate = torch.where(above.isinf(), torch.full_like(above, math.nan), above)
    return ThresholdCount(below.sum(dim=-1), tau, scale, certificate)


def index(
    loss_fn: LossFn,
    theta: Tensor,
    threshold: float | None = None,
    *,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
    method: Literal["auto", "dense", "lanczos"] = "auto",
    dense_limit: int = 6000,
    cap: int = 1000,
    block: int = DEFAULT_BLOCK,
    basis_size: int | None = None,
    strategy: Literal["locking"] = "locking",
    tol: float = 1e-10,
    max_steps: int = 100_000,
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
    memory_limit: int | None = None,
) -> IndexResult:
    """Number (and fraction) of Hessian eigenvalues of ``loss_fn`` at ``theta`` [P] below a threshold.

    Threshold: the convention of this module (``threshold < 0`` absolute, else
    ``-relative_threshold * max|lambda|``, default -1e-5 max|lambda|; ``threshold > 0`` raises).
    ``method="auto"`` is dense while P <= ``dense_limit``.

    **Dense** (exact up to eigvalsh rounding): the Hessian assembled from batched Hessian-vector
    products (:func:`~.dense.assemble_hessian`, P products, 8 P^2 bytes, plus as much again for
    ``eigvalsh``, refused before allocating if that exceeds ``memory_limit``, default free memory).

    **Lanczos** (P beyond the dense limit): the largest eigenvalue first (the scale, uncertified;
    its converged top pairs stay locked), then the block thick-restart Lanczos loop of :mod:`.krylov`
    on the negative tail: a block that starts at :func:`~.lanczos.start_block` vectors (1 on the
    CPU) and doubles, up to ``block`` (default 8), after each certificate that finds a missed
    eigenvalue; a basis of ``basis_size`` vectors (default 300); Ritz pairs accepted with residual
    <= ``tol * max|lambda|``; every converged pair locked at each restart (those below the threshold
    are counted; at most ``basis_size`` others, the top outliers first, are deflated to narrow the
    spectrum). The count stops when the Ritz values are converged in ascending order up to one at or
    above the threshold. Memory: 8 x (cap + 2 basis_size + 2 block) x P bytes at most, refused up
    front (:class:`~.errors.MemoryLimitError`, with the estimate) if it does not fit.

    **Certificate.** Then a run from fresh Gaussian vectors, orthogonal to every locked vector,
    computes the smallest eigenvalue of the deflated operator (``certificate``). A Ritz value is an
    upper bound on that eigenvalue, so a Ritz value below the threshold proves the count incomplete
    (a copy of a repeated eigenvalue beyond what the block saw, or a direction the first start
    missed): counting resumes with a doubled block, and a new certificate follows. It passes when
    the smallest Ritz value converges to the tolerance at or above the threshold, or, after as many
    block steps as the count took, lies above it with its whole residual interval.
    Guaranteed: every counted eigenvalue is within its residual of an eigenvalue below the threshold
    (+ residual), with multiplicity (the locked vectors are orthonormal), so ``count`` is never too
    high except for eigenvalues within their residual of the threshold (warned about). Not
    guaranteed: that nothing is left below the threshold. A remaining eigenvalue at distance
    ``delta`` below the threshold is missed only if every fresh start vector nearly misses it; the
    probability is at most ``miss_probability(P, certificate_steps, block, delta / spread)``
    (:func:`~.krylov.miss_probability`, Kuczynski and Wozniakowski 1992; spread = lambda_max -
    threshold), a worst-case bound that real spectra beat by far. Cost: 12% of the products of a
    full count on a trained digits MLP (188 of 1513 at P = 1510, benchmarks/curvature.py).

    Stops after ``cap`` eigenvalues below the threshold, returning ``count=cap`` with
    ``at_least=True`` (a lower bound, not an estimate). ``strategy`` is kept for compatibility:
    "locking" is the only path.

    Raises:
        ValueError: a positive or non-finite threshold, a non-positive relative threshold, an
            unknown method or strategy, or a model that computes in lower precision than float64.
        NotConvergedError: the Lanczos count (or its certificate) needed more than ``max_steps``
            products in all.
        NonFiniteError: the loss, gradient or a Hessian-vector product is NaN or infinite.
        MemoryLimitError: the dense matrix or the Krylov workspace would not fit (before allocating).
    """
    check_threshold(threshold, relative_threshold)
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'dense' or 'lanczos'")
    if strategy != "locking":
        raise ValueError(f"unknown strategy {strategy!r}: 'locking' (block Krylov with locking and a certificate) "
                         "is the only Lanczos index path; the fresh-start 'blocks' path was removed")
    op = hessian_operator(loss_fn, theta, backend)
    p = op.size
    if method == "auto":
        method = "dense" if p <= dense_limit else "lanczos"
    if method == "dense":
        require_memory(2 * FLOAT64_BYTES * p * p, f"index (dense): a {p:,} x {p:,} float64 Hessian and its eigvalsh "
                       "workspace (2 x 8 P^2 bytes)", op.device, memory_limit)
        eig = torch.linalg.eigvalsh(assemble_hessian(op, DEFAULT_CHUNK))
        c = count_below(eig, threshold, relative_threshold)
        count, tau, scale = int(c.count), float(c.threshold), float(c.scale)
        return IndexResult(count, count / p, "dense", tau, _relative(tau, scale), False, scale, op.num_hvps,
                           float(c.certificate), 0.0, 0, 0, DEFAULT_CHUNK, eig[:count])
    return _lanczos_count(op, threshold, relative_threshold, cap, block, basis_size, tol, max_steps, seed, memory_limit)


def _lanczos_count(op, threshold: float | None, relative: float, cap: int, block: int, basis_size: int | None,
                   tol: float, max_steps: int, seed: int | None, memory_limit: int | None) -> IndexResult:
    """The Lanczos path of :func:`index`: the scale, then the certified count of the negative tail."""
    p = op.size
    basis_default = basis_size or DEFAULT_INDEX_BASIS
    block, basis = krylov_workspace(p, block, basis_size, DEFAULT_INDEX_BASIS, cap + basis_default + block,
                                    f"index (lanczos, cap={cap})", op.device, memory_limit)
    like = op.point
    top = block_krylov(op, p, Goal("largest", k=1), block=block, basis=basis, tol=tol, floor=1e-6,
                       max_hvps=max_steps, like=like, seed=seed, certify=False,
                       start_block=start_block(block, op.device))
    if not top.converged:
        raise NotConvergedError(f"index: the largest eigenvalue did not converge in {top.hvps} products; raise "
                                "max_steps or use method='dense'")
    lam_max = float(top.locked.values.max())
    goal = Goal("smallest", threshold=threshold, relative=relative, scale=abs(lam_max), cap=cap)
    tail = block_krylov(op, p, goal, block=block, basis=basis, tol=tol, floor=1.0, max_hvps=max_steps - top.hvps,
                        like=like, seed=None if seed is None else seed + 1, locked=top.locked, certify=True,
                        extra_locks=basis, start_block=start_block(block, op.device))
    locked = tail.locked
    tau = tail.threshold
    counted = torch.sort(locked.values[locked.values < tau]).values
    scale = max(abs(lam_max), abs(float(counted[0])) if len(counted) else 0.0,
                abs(tail.certificate) if math.isfinite(tail.certificate) else 0.0)
    if not tail.converged:
        raise NotConvergedError(
            f"index (lanczos): {tail.count} eigenvalues below {tau:g} locked, then not converged (or not certified) "
            f"after {op.num_hvps} products in all; raise max_steps or use method='dense'")
    near = (locked.values - tau).abs() <= locked.residuals
    if bool(near.any()) or (math.isfinite(tail.certificate) and tail.certificate - tau <= tail.certificate_residual):
        warnings.warn(f"index: an eigenvalue lies within its residual of the threshold {tau:g}; "
                      "the count may be off by one there", ConvergenceWarning, stacklevel=3)
    count = tail.count
    return IndexResult(count, count / p, "lanczos", tau, _relative(tau, scale), tail.at_least, scale, op.num_hvps,
                       tail.certificate, tail.certificate_residual, tail.certificate_hvps, tail.certificate_steps,
                       tail.block, counted[:count])


def _relative(tau: float, scale: float) -> float:
    return tau / scale if scale > 0 else float("nan")
