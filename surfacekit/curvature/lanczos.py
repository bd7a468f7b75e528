"""Lanczos with full reorthogonalization, and block thick-restart eigensolvers for extreme eigenvalues.

:func:`lanczos` (one start vector, a fixed number of steps, the tridiagonal T) serves stochastic
Lanczos quadrature and Krylov-subspace finders; :func:`eigsh` and :func:`extreme_eigenvalues`
compute the k most extreme eigenpairs by the block Krylov loop of :mod:`.krylov` and certify them.
All arithmetic is float64. Reorthogonalization is classical Gram-Schmidt applied twice against the
whole basis (and any deflated vectors), so there are no ghost copies of converged eigenvalues.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor

from .clusters import cluster_sizes, describe, same_value
from .errors import ConvergenceWarning, NotConvergedError, PrecisionWarning, require_finite
from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator
from .krylov import Goal, Locked, block_krylov, orthogonalize
from .memory import krylov_workspace

MatVec = Callable[[Tensor], Tensor]
Which = Literal["largest", "smallest"]
DEFAULT_BLOCK = 8  # the largest block


def start_block(block: int, device: torch.device) -> int:
    """The block a run starts with: 1 on the CPU, where a block of products costs as much as the loop
    of single ones and block Lanczos needs 2-8x more products than single-vector Lanczos for a
    non-degenerate extreme eigenvalue (measured in benchmarks/curvature.py); the whole ``block``
    on accelerators, where a vmapped block costs about one product. Either way the block doubles,
    up to ``block``, after each certificate that finds a missed eigenvalue."""
    return block if device.type != "cpu" else 1

__all__ = ["ConvergenceWarning", "EigenResult", "LanczosResult", "NotConvergedError", "eigsh", "extreme_eigenvalues",
           "lanczos", "ritz", "tridiagonal"]


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
    """Extreme eigenpairs of a symmetric operator, with their completion certificate.

    eigenvalues: [k], sorted from the requested end inwards (largest first, or smallest first);
    eigenvectors: [k, P] unit rows, or None if not requested; residuals: [k] Ritz residual norms
    ``||H y - theta y||`` (eigenvalue units); num_hvps: operator applications, certificate
    included; converged: every residual met the tolerance and the certificate was completed.
    certificate: the most extreme eigenvalue (at the requested end) of the operator restricted to
    the complement of the returned vectors, computed from fresh random start vectors (eigenvalue
    units; nan if not certified); it is not beyond ``eigenvalues[-1]``.
    certificate_residual: its residual norm; certificate_hvps: products the certificate took;
    certificate_steps: its block steps before any restart (for :func:`~.krylov.miss_probability`);
    block: the block size used (vectors per batched product); multiplicity: [k] int64, the size of
    the cluster of equal returned values (within the tolerance) each value belongs to.
    ``summary()`` prints the values with multiplicities, e.g. ``"5 (x3), 4"``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    num_hvps: int
    converged: bool
    certificate: float = float("nan")
    certificate_residual: float = float("nan")
    certificate_hvps: int = 0
    certificate_steps: int = 0
    block: int = 1
    multiplicity: Tensor | None = None

    def summary(self) -> str:
        """The eigenvalues as text, each cluster of equal values once with its multiplicity; ``+`` marks
        the last cluster when the certificate equals it within the residuals (more copies exist)."""
        k = len(self.eigenvalues)
        sizes = self.multiplicity if self.multiplicity is not None else torch.ones(k, dtype=torch.int64)
        more = k > 0 and math.isfinite(self.certificate) and same_value(
            float(self.eigenvalues[-1]), self.certificate, float(self.residuals[-1]), self.certificate_residual)
        return describe(self.eigenvalues, sizes, more)


def lanczos(matvec: MatVec, v0: Tensor, num_steps: int, deflate: Tensor | None = None) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps on a symmetric ``matvec`` from ``v0`` [P], fully reorthogonalized.

    ``deflate`` [q, P] (orthonormal rows) restricts the iteration to their orthogonal complement.
    Stops early, returning fewer steps, if an invariant subspace is found (residual ~ 0). Memory:
    the basis, 8 x num_steps x P bytes. Raises NonFiniteError on a non-finite product.
    """
    p = v0.numel()
    num_steps = min(num_steps, p - (0 if deflate is None else deflate.shape[0]))
    basis = torch.zeros(num_steps, p, dtype=v0.dtype, device=v0.device)
    alpha = torch.zeros(num_steps, dtype=v0.dtype, device=v0.device)
    beta = torch.zeros(num_steps, dtype=v0.dtype, device=v0.device)
    removed = Locked.empty(v0, deflate)
    q = v0.clone()[None]
    orthogonalize(q, basis[:0], removed)
    basis[0] = q[0] / q.norm()
    scale = 0.0
    for j in range(num_steps):
        w = matvec(basis[j])
        require_finite(w, f"Lanczos product {j + 1}")
        w = w.clone()[None]
        coef = orthogonalize(w, basis[: j + 1], removed)[0]
        w = w[0]
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
    block: int = DEFAULT_BLOCK,
    certify: bool = True,
    memory_limit: int | None = None,
) -> EigenResult:
    """``k`` extreme eigenpairs of a symmetric operator of order ``size`` by block thick-restart Lanczos.

    ``matvec`` maps [b, P] to [b, P] in float64 (a :class:`~.hvp.HessianOperator` does). The
    iteration is :func:`~.krylov.block_krylov`: full reorthogonalization, thick restarts, converged
    pairs locked. A block of b random vectors finds every copy of an eigenvalue repeated up to b
    times. The run starts with :func:`start_block` vectors (1 on the CPU, ``block`` on accelerators)
    and doubles the block, up to ``block`` (default 8), whenever its certificate finds a missed
    eigenvalue. Convergence of a Ritz pair (theta, y): ``||H y - theta y|| <= tol * max(|theta|,
    floor ||H||)`` (the residual bounds the eigenvalue error; ||H|| is estimated by the largest
    |Ritz value| seen).

    **Certificate** (``certify=True``): when the k values have converged, a run from fresh Gaussian
    vectors in the complement of the returned (and any other locked) vectors computes the most
    extreme eigenvalue of that deflated operator. A Ritz value beyond the k-th value (by more than
    the tolerance) proves that a value was missed (a copy of a repeated eigenvalue, or one the first
    start vectors were blind to): the run adds it, doubles the block and certifies again. It passes
    when the extreme Ritz value converges without going beyond, or, after as many block steps as the
    search for the values took, lies with its whole residual interval inside the k-th value.

    Guaranteed: every returned value is within its residual of an eigenvalue, and the returned
    vectors are orthonormal, so a value returned m times is an eigenvalue of multiplicity >= m (up to
    the residuals). Not guaranteed: that nothing remains beyond the k-th value. That fails only if
    every fresh start vector nearly misses the missed eigenvector; for an eigenvalue beyond the k-th
    by a fraction ``epsilon`` of the spectral spread, the probability is at most
    :func:`~.krylov.miss_probability` (P, certificate_steps, block, epsilon) (Kuczynski and
    Wozniakowski 1992: a worst case over spectra; real spectra do far better). The certificate
    costs about one more convergence of the next value (benchmarks/curvature.py: 1.6-1.9x the
    products of an uncertified run on digits MLPs); ``certify=False`` skips it (certificate nan).

    Memory: ``block`` and basis from :func:`~.memory.krylov_workspace`: basis ``max_basis`` vectors
    (default ``max(2k + 2 block, 160)``, shrunk, and the block with it, to keep basis and block within
    512 MiB), 8 x (k + block + deflated + basis + block) x P bytes in all; refused with the estimate
    (:class:`~.errors.MemoryLimitError`) if that exceeds ``memory_limit`` bytes (default: free
    memory). ``deflate`` [q, P] (orthonormal rows) excludes a subspace. Returns ``converged=False``
    (without raising) when ``max_hvps`` products did not suffice for the values or the certificate.

    Raises:
        ValueError: k out of range, or ``matvec`` does not return float64.
        NonFiniteError: a product is NaN or infinite.
        MemoryLimitError: the workspace would not fit.
    """
    like = torch.empty(0, dtype=torch.float64) if like is None else like
    if like.dtype != torch.float64:
        warnings.warn(f"like is {like.dtype}; eigenvalues are computed in float64", PrecisionWarning, stacklevel=2)
        like = like.to(torch.float64)
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    excluded = 0 if deflate is None else deflate.shape[0]
    avail = size - excluded
    if not 0 < k <= avail:
        raise ValueError(f"k must be in 1..{avail}, got {k}")
    block, basis = krylov_workspace(size, min(block, max(max_hvps, 1)), max_basis, max(2 * k + 2 * block, 160),
                                    k + block + excluded, f"eigsh (k={k}, {which})", like.device, memory_limit)
    locked = Locked.empty(like, deflate)
    out = block_krylov(matvec, size, Goal(which, k=k), block=block, basis=basis, tol=tol, floor=floor,
                       max_hvps=max_hvps, like=like, seed=seed, locked=locked, certify=certify,
                       start_block=start_block(block, like.device))
    if out.candidates is not None:
        values, vectors, residuals = out.candidates
    else:
        order = torch.argsort(out.locked.values, descending=(which == "largest"), stable=True)[:k]
        values, residuals = out.locked.values[order], out.locked.residuals[order]
        vectors = out.locked.vectors(order) if len(order) else like.new_zeros(0, size)
    # Values found after others were locked are eigenvalues of the deflated operator, which is off by
    # up to the locked residuals: widen each residual by the largest of them before comparing.
    spread = float(out.locked.residuals.max()) if out.locked.size else 0.0
    sizes = cluster_sizes(values, residuals + spread, tol, floor * out.norm_estimate)
    return EigenResult(values, vectors, residuals, out.hvps, out.converged and len(values) == k, out.certificate,
                       out.certificate_residual, out.certificate_hvps, out.certificate_steps, out.block, sizes)


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
    block: int = DEFAULT_BLOCK,
    certify: bool = True,
    memory_limit: int | None = None,
) -> EigenResult:
    """The ``k`` largest or smallest Hessian eigenvalues of ``loss_fn`` at ``theta`` [P], certified.

    Block thick-restart Lanczos (:func:`eigsh`) with full reorthogonalization and locking, at most
    ``max_steps`` Hessian-vector products in all (certificate included). Eigenvalues come sorted from
    the requested end; repeated ones are returned with every copy, and ``result.summary()`` shows
    them as ``"5 (x3), 4"`` (``"(x3+)"`` when more copies lie beyond the k returned). Each is
    accepted when its Ritz residual is below ``tol`` times its magnitude (floored at 1e-6 of the
    largest magnitude seen). The block, the completion certificate, its guarantee and failure
    probability, and the memory rule are those of :func:`eigsh`. Computed in float64 (a float32
    ``theta`` is upcast with a :class:`~.errors.PrecisionWarning`; a float32 model is refused).

    If the values or the certificate are not done within ``max_steps``, ``on_fail="raise"`` raises
    :class:`NotConvergedError` and ``"warn"`` emits a :class:`ConvergenceWarning` and returns
    ``converged=False``; both state the residuals and which of the two did not finish.

    Raises:
        NotConvergedError: not converged (with ``on_fail="raise"``).
        NonFiniteError: the loss, gradient or a Hessian-vector product is NaN or infinite.
        MemoryLimitError: the Krylov workspace would not fit (before allocating; with the estimate).
        ValueError: bad ``which``/``k``, or a model that computes in lower precision than float64.
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    op = hessian_operator(loss_fn, theta, backend)
    res = eigsh(op, op.size, k, which, tol=tol, max_hvps=max_steps, max_basis=max_basis, like=op.point, seed=seed,
                block=block, certify=certify, memory_limit=memory_limit)
    if not res.converged:
        report_not_converged(res, f"{which} {k} eigenvalues", tol, on_fail)
    return res if return_vectors else res._replace(eigenvectors=None)


def report_not_converged(res: EigenResult, what: str, tol: float, on_fail: str) -> None:
    """Raise or warn that ``res`` did not converge, quoting its values and residuals."""
    scale = float(res.eigenvalues.abs().max()) if len(res.eigenvalues) else 0.0
    values_met = bool((res.residuals <= tol * torch.clamp(res.eigenvalues.abs(), min=1e-6 * scale)).all())
    stage = "the values met it, their completion certificate did not finish" if values_met else "the values did not meet it"
    msg = (
        f"Lanczos did not converge for the {what} after {res.num_hvps} Hessian-vector products "
        f"(tol={tol:g}; {stage}): eigenvalues {res.eigenvalues.tolist()} with residual norms "
        f"{res.residuals.tolist()}. Raise max_steps or loosen tol; do not use these as results."
    )
    if on_fail == "raise":
        raise NotConvergedError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)
