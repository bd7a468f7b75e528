"""The index of a point: how many Hessian eigenvalues lie below a stated negative threshold.

**One threshold convention** for every index in the package (the spin glass included): an absolute
``threshold < 0`` (eigenvalue units), or, when it is None, ``threshold = -relative_threshold *
max|lambda|`` with ``relative_threshold > 0`` (default 1e-5). A positive threshold would count
non-negative eigenvalues and is refused; 0 is accepted with a warning (the signs of near-zero
eigenvalues are rounding noise). One counting rule: ``lambda < threshold`` (:func:`count_below`).

Counted exactly, three ways: from the dense Hessian (assembled from batched Hessian-vector
products, or from the structure of an affine first layer) while it fits in memory, by ``eigvalsh``
(P up to :data:`DENSE_EIG_LIMIT`) or by the inertia of an LDL^T factorization (beyond: 4.6x faster
than ``eigvalsh`` at P = 6,000); beyond the memory by the block Krylov loop of :mod:`.krylov` on
the negative tail, which locks converged eigenpairs as it goes and closes the count with a
completion certificate. Never read off the mass of a smoothed spectral density, which is badly
biased near zero (:mod:`.estimate` labels such numbers as estimates, with intervals).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .clusters import cluster_sizes, describe
from .affine import AffineInput, affine_input_hessians
from .dense import DEFAULT_CHUNK, assemble_hessian
from .errors import ConvergenceWarning, NotConvergedError
from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator
from .krylov import Goal, block_krylov
from .lanczos import DEFAULT_BLOCK, eigsh, start_block
from .memory import available_bytes, dense_bytes, krylov_workspace, require_memory

DEFAULT_RELATIVE_THRESHOLD = 1e-5
DEFAULT_INDEX_BASIS = 300
# "auto" takes eigvalsh of the dense Hessian up to this P (5 s on one thread; it also returns the counted
# eigenvalues), the LDL^T inertia beyond (measured with torch's LAPACK on one thread: 0.35 s against 1.49 s
# at P = 3,000, 2.3 s against 10.6 s at 6,000).
DENSE_EIG_LIMIT = 4000
# Shift-invert products for the eigenvalues next to the threshold (inertia path), in blocks of 8 right-hand
# sides: a solve with the stored factors reads them once per block (2.5 GB at P = 17,560).
NEAREST_MAX_SOLVES = 160


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


ROUNDING = 1e3 * torch.finfo(torch.float64).eps  # x max|lambda|: how well float64 resolves an eigenvalue


def _warn_near(values: Tensor, residuals: Tensor, tau: float, scale: float,
               category: type[Warning] = UserWarning) -> None:
    """Warn when an eigenvalue lies within its residual, or within rounding (``ROUNDING`` max|lambda|),
    of the threshold: whether it counts is then decided by rounding, and methods may differ by one."""
    slack = torch.clamp(residuals, min=ROUNDING * scale)
    if bool(((values - tau).abs() <= slack).any()):
        warnings.warn(f"index: an eigenvalue lies within its residual or rounding of the threshold {tau:g}; "
                      "the count may be off by one there (choose a threshold in a gap of the spectrum)",
                      category, stacklevel=3)


def count_below(eigenvalues: Tensor, threshold: float | None = None,
                relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD, *, check: bool = True) -> ThresholdCount:
    """The counting rule of every index: eigenvalues [..., M] strictly below the threshold, per row.

    The threshold follows the convention of :func:`check_threshold` (absolute, or
    ``-relative_threshold * max|lambda|`` of each row). Used by the dense path of :func:`index` and
    by the spin glass (batched over start points). ``check=False``: the caller already ran
    :func:`check_threshold` (its warnings are not repeated).
    """
    if check:
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
    method: Literal["auto", "dense", "inertia", "lanczos"] = "auto",
    dense_limit: int | None = None,
    cap: int = 1000,
    block: int = DEFAULT_BLOCK,
    basis_size: int | None = None,
    strategy: Literal["locking"] = "locking",
    tol: float = 1e-10,
    max_steps: int = 100_000,
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
    memory_limit: int | None = None,
    structure: AffineInput | None = None,
) -> IndexResult:
    """Number (and fraction) of Hessian eigenvalues of ``loss_fn`` at ``theta`` [P] below a threshold.

    Threshold: the convention of this module (``threshold < 0`` absolute, else
    ``-relative_threshold * max|lambda|``, default -1e-5 max|lambda|; ``threshold > 0`` raises).
    ``method="auto"`` (:func:`index_method`): from the dense Hessian while it and its working copy
    (16 P^2 bytes) fit ``memory_limit`` (default: free memory) and P <= ``dense_limit`` (None: no
    fixed limit), by ``eigvalsh`` up to P = :data:`DENSE_EIG_LIMIT` and by the inertia beyond;
    otherwise Lanczos.

    **The dense Hessian** is assembled from batched Hessian-vector products
    (:func:`~.dense.assemble_hessian`, P products), or, given ``structure`` (the
    :class:`~.affine.AffineInput` of this same loss, e.g. from ``surfacekit.objective.affine_input``),
    from the Kronecker structure of its affine first layer (:func:`~.affine.affine_input_hessians`,
    far fewer passes). It takes 8 P^2 bytes, and its ``eigvalsh`` or LDL^T as much again: refused
    before allocating (:class:`~.errors.MemoryLimitError`, with the estimate) beyond ``memory_limit``.

    **Dense** (``method="dense"``, exact up to eigvalsh rounding): ``torch.linalg.eigvalsh`` on
    torch's threads, O(P^3) (114 s at P = 17,560 on two threads); returns the counted eigenvalues.

    **Inertia** (``method="inertia"``, exact up to the factorization's rounding): the number of
    negative pivots of the LDL^T factorization (Bunch-Kaufman, ``torch.linalg.ldl_factor``) of
    H - threshold I, which by Sylvester's law of inertia is the number of eigenvalues below the
    threshold (4.6x faster than eigvalsh at P = 6,000, one thread). The scale max|lambda| comes from
    the two extreme eigenvalues (Lanczos on Hessian-vector products, tol 1e-10, uncertified: an
    error of 1e-10 in the scale moves the threshold by 1e-15 max|lambda|), the certificate (the first
    eigenvalue not counted) and the last counted eigenvalue from shift-invert block Lanczos with the
    factorization (the eigenvalues of (H - threshold I)^-1 of largest magnitude), at most
    :data:`NEAREST_MAX_SOLVES` solves each (nan if not converged); it warns when an eigenvalue lies
    within 1e-10 max|lambda| of the threshold. ``eigenvalues`` holds only that last counted one.

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
    if method not in ("auto", "dense", "inertia", "lanczos"):
        raise ValueError(f"unknown method {method!r}; use 'auto', 'dense', 'inertia' or 'lanczos'")
    if strategy != "locking":
        raise ValueError(f"unknown strategy {strategy!r}: 'locking' (block Krylov with locking and a certificate) "
                         "is the only Lanczos index path; the fresh-start 'blocks' path was removed")
    op = hessian_operator(loss_fn, theta, backend)
    p = op.size
    if method == "auto":
        method = index_method(p, op.device, dense_limit, memory_limit)
    if method == "lanczos":
        return _lanczos_count(op, threshold, relative_threshold, cap, block, basis_size, tol, max_steps, seed,
                              memory_limit)
    require_memory(dense_bytes(p), f"index ({method}): a {p:,} x {p:,} float64 Hessian and its "
                   f"{'eigvalsh' if method == 'dense' else 'LDL^T'} working copy (2 x 8 P^2 bytes)", op.device,
                   memory_limit)
    if structure is None:
        hess, products, chunk = assemble_hessian(op, DEFAULT_CHUNK), op.num_hvps, DEFAULT_CHUNK
    else:
        hess, products = affine_input_hessians(structure, op.point[None], memory_limit)
        hess, chunk = hess[0], 0
    if method == "inertia":
        return _inertia_count(op, hess, threshold, relative_threshold, products, chunk, seed)
    eig = torch.linalg.eigvalsh(hess)
    del hess
    return dense_index(eig, threshold, relative_threshold, products, chunk, check=False)


def dense_index(eigenvalues: Tensor, threshold: float | None = None,
                relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD, num_hvps: int = 0, block: int = 0, *,
                check: bool = True) -> IndexResult:
    """The :class:`IndexResult` of the dense path from all P eigenvalues [P] of a Hessian (ascending):
    the count by :func:`count_below`, the certificate the first eigenvalue not counted, ``eigenvalues``
    the counted ones; ``num_hvps`` and ``block`` (the assembly's products and chunk) are recorded as
    given. Warns when an eigenvalue lies within float64 rounding of the threshold. Used by
    :func:`index` and by the batched spectra of :mod:`.population`, so both report alike.
    ``check=False``: the threshold was already checked (:func:`check_threshold`; no repeated warning)."""
    c = count_below(eigenvalues, threshold, relative_threshold, check=check)
    count, tau, scale = int(c.count), float(c.threshold), float(c.scale)
    _warn_near(eigenvalues, torch.zeros_like(eigenvalues), tau, scale)
    return IndexResult(count, count / len(eigenvalues), "dense", tau, _relative(tau, scale), False, scale, num_hvps,
                       float(c.certificate), 0.0, 0, 0, block, eigenvalues[:count])


def index_method(size: int, device: torch.device | str = "cpu", dense_limit: int | None = None,
                 memory_limit: int | None = None) -> str:
    """What ``index(method="auto")`` does for P = ``size``: "dense" (eigvalsh) up to :data:`DENSE_EIG_LIMIT`,
    "inertia" beyond, while the dense Hessian and its working copy (16 P^2 bytes) fit ``memory_limit``
    (default: free memory) and P <= ``dense_limit`` (None: no fixed limit); "lanczos" otherwise."""
    limit = available_bytes(device) if memory_limit is None else int(memory_limit)
    if (dense_limit is not None and size > dense_limit) or dense_bytes(size) > limit:
        return "lanczos"
    return "dense" if size <= DENSE_EIG_LIMIT else "inertia"


def inertia_below(hess: Tensor, tau: float) -> tuple[int, Tensor, Tensor]:
    """The number of eigenvalues of the symmetric ``hess`` [P, P] below ``tau``, by Sylvester's law of
    inertia: the negative eigenvalues of D in the Bunch-Kaufman factorization P (H - tau I) P^T = L D
    L^T (``torch.linalg.ldl_factor``, LAPACK ``sytrf``: 1 x 1 and 2 x 2 diagonal blocks). Returns
    (count, LD, pivots) for solves with ``torch.linalg.ldl_solve``. ``hess`` is overwritten with
    H - tau I. Memory: one copy of ``hess`` (LD). Cost: P^3 / 3 flops."""
    hess.diagonal().sub_(tau)
    ld, pivots = torch.linalg.ldl_factor(hess)
    diag, sub = ld.diagonal(), ld.diagonal(-1)
    piv = pivots.tolist()
    count, i = 0, 0
    while i < len(piv):
        if piv[i] < 0:  # a 2 x 2 block [[a, b], [b, c]] (LAPACK marks both of its rows negative)
            a, b, c = float(diag[i]), float(sub[i]), float(diag[i + 1])
            det = a * c - b * b
            count += 1 if det < 0 else (2 if a + c < 0 else 0)
            i += 2
        else:
            count += int(float(diag[i]) < 0)
            i += 1
    return count, ld, pivots


def _inertia_count(op, hess: Tensor, threshold: float | None, relative: float, products: int, chunk: int,
                   seed: int | None) -> IndexResult:
    """The inertia path of :func:`index` on the assembled ``hess`` (overwritten; see there)."""
    p = len(hess)
    ends = [eigsh(op, p, 1, which, tol=1e-10, max_hvps=3000, like=op.point, seed=seed, certify=False)
            for which in ("largest", "smallest")]
    if not all(e.converged for e in ends):
        raise NotConvergedError("index (inertia): the extreme eigenvalues (the scale of the threshold) did not "
                                "converge in 3000 products; use method='dense'")
    scale = max(abs(float(e.eigenvalues[0])) for e in ends)
    tau = -relative * scale if threshold is None else float(threshold)
    count, ld, pivots = inertia_below(hess, tau)
    del hess
    nearest = [_nearest(ld, pivots, which, seed) for which in ("largest", "smallest")]
    above = tau + 1.0 / nearest[0] if nearest[0] > 0 else float("nan")  # the first eigenvalue not counted
    below = tau + 1.0 / nearest[1] if nearest[1] < 0 else float("nan")  # the last one counted
    gaps = [abs(v - tau) for v in (above, below) if math.isfinite(v)]
    if gaps and min(gaps) <= 1e-10 * scale:
        warnings.warn(f"index (inertia): an eigenvalue lies within {min(gaps):.3g} of the threshold {tau:g}; the count "
                      "may be off by one there", ConvergenceWarning, stacklevel=3)
    counted = torch.tensor([below] if count and math.isfinite(below) else [], dtype=ld.dtype)
    return IndexResult(count, count / p, "inertia", tau, _relative(tau, scale), False, scale,
                       products + op.num_hvps, above, 0.0, 0, 0, chunk, counted)


def _nearest(ld: Tensor, pivots: Tensor, which: str, seed: int | None) -> float:
    """The largest (or smallest) eigenvalue of (H - tau I)^-1, from its LDL^T factors, by Lanczos with
    solves; nan if it did not converge in NEAREST_MAX_SOLVES solves."""
    p = len(ld)
    res = eigsh(lambda v: torch.linalg.ldl_solve(ld, pivots, v.reshape(-1, p).T).T.reshape(v.shape), p, 1, which,
                tol=1e-8, max_hvps=NEAREST_MAX_SOLVES, like=ld, seed=seed, certify=False, first_block=DEFAULT_BLOCK)
    return float(res.eigenvalues[0]) if res.converged else float("nan")


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
    values, residuals = locked.values, locked.residuals
    if math.isfinite(tail.certificate):  # converged, so at or above the threshold
        values = torch.cat([values, values.new_tensor([tail.certificate])])
        residuals = torch.cat([residuals, residuals.new_tensor([tail.certificate_residual])])
    _warn_near(values, residuals, tau, scale, ConvergenceWarning)
    count = tail.count
    return IndexResult(count, count / p, "lanczos", tau, _relative(tau, scale), tail.at_least, scale, op.num_hvps,
                       tail.certificate, tail.certificate_residual, tail.certificate_hvps, tail.certificate_steps,
                       tail.block, counted[:count])


def _relative(tau: float, scale: float) -> float:
    return tau / scale if scale > 0 else float("nan")
