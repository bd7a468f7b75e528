"""Curvature of a population: the Hessians of many networks from products batched over the member axis.

A *population loss* maps stacked points ``thetas`` [B, P] to member losses [B], the loss of row b a
function of ``thetas[b]`` alone (every objective of a trained population is:
``surfacekit.store.job_population_objective``). The Hessian of the sum of its rows is
block-diagonal, diag(H_1, ..., H_B), so one backward pass through the gradient graph of that sum
with vectors V [B, P] returns every member's product H_b V[b] (:class:`PopulationHessian`): B
Hessian-vector products in one batched pass, the member axis running through the batched matrix
products of the population's forward pass.

For P up to the dense limit the cheapest exact answer is the dense spectrum:
:func:`population_hessians` assembles the B Hessians from P batched products (the columns),
:func:`population_eigenvalues` takes ``eigvalsh`` of each, and :func:`dense_spectrum` reads the
top-k and bottom-k eigenvalues, the exact index, the exact trace and the exact density off the
eigenvalues, with no Lanczos at all. :func:`population_spectrum` does all of it for a batch of
members (choose its size with :func:`~.memory.dense_members`), assembling through the structure of
an affine first layer (:mod:`.affine`) where the loss offers it. Every number equals the one-member
path (:func:`~.dense.dense_hessian` and ``eigvalsh``) up to rounding (tests: 1e-10).
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .affine import AffineInput, affine_input_hessians
from .dense import symmetrize_
from .errors import NonFiniteError, PrecisionWarning, require_finite
from .index import DEFAULT_RELATIVE_THRESHOLD, ThresholdCount, count_below
from .memory import FLOAT64_BYTES, dense_bytes, require_memory

PopulationLossFn = Callable[[Tensor], Tensor]
# Dense eigenvalues equal to within this fraction of max|lambda| are one repeated eigenvalue: eigvalsh
# is accurate to about P * eps * ||H|| (4e-13 ||H|| at P = 1885), far below it.
DENSE_CLUSTER_TOL = 1e-10


class PopulationHessian:
    """The Hessians of a population loss at ``thetas`` [B, P], applied to all members at once.

    Called with V [B, P] it returns [B, P] with row b = H_b V[b] (one backward pass through the
    gradient graph of the summed losses, built once here); with V [m, B, P], m such passes.
    ``num_hvps`` counts products per member (a [B, P] call counts 1). ``members`` is B, ``size`` P,
    ``points`` the float64 ``thetas`` [B, P]; ``loss`` [B] and ``grad_norm`` [B] the member losses and
    gradient norms at ``thetas``. Memory: the autograd graph of one population forward and
    backward pass (B times one member's).

    The rows of ``losses_fn`` must be independent (row b depends on ``thetas[b]`` only): that is what
    makes the summed Hessian block-diagonal. A float32 ``thetas`` is upcast with a
    :class:`~.errors.PrecisionWarning`.

    Raises:
        ValueError: ``thetas`` is not a 2-D floating tensor; ``losses_fn`` does not return a float64
            vector [B].
        NonFiniteError: a loss or gradient at ``thetas`` is not finite (at construction), or a product
            (at the call; the message names the member).
    """

    def __init__(self, losses_fn: PopulationLossFn, thetas: Tensor):
        if not isinstance(thetas, Tensor) or thetas.ndim != 2 or not thetas.is_floating_point():
            raise ValueError("thetas must be a 2-D floating-point tensor [B, P]")
        if thetas.dtype != torch.float64:
            warnings.warn(f"thetas are {thetas.dtype}; curvature is computed in float64", PrecisionWarning,
                          stacklevel=2)
        self.points = thetas.detach().to(torch.float64)
        self.members, self.size = self.points.shape
        self.device = self.points.device
        self.num_hvps = 0
        self._theta = self.points.clone().requires_grad_(True)
        with torch.enable_grad():
            losses = losses_fn(self._theta)
            if not isinstance(losses, Tensor) or losses.shape != (self.members,) or losses.dtype != torch.float64:
                raise ValueError(f"losses_fn must return a float64 tensor [{self.members}] (one loss per member), got "
                                 f"{getattr(losses, 'dtype', type(losses).__name__)} {tuple(getattr(losses, 'shape', ()))}")
            (grad,) = torch.autograd.grad(losses.sum(), self._theta, create_graph=True, allow_unused=True)
        self.loss = losses.detach()
        require_finite(self.loss, "the member losses at thetas")
        if grad is None:
            grad = torch.zeros_like(self.points)
        require_finite(grad.detach(), "the member gradients at thetas")
        self.grad_norm = grad.detach().norm(dim=1)
        self._grad = grad if grad.requires_grad else None
        self._batched_ok = self.device.type != "cpu"  # as for HessianOperator: on the CPU a loop is cheaper

    def __call__(self, v: Tensor) -> Tensor:
        if v.shape[-2:] != (self.members, self.size) or v.ndim not in (2, 3):
            raise ValueError(f"v must have shape [B, P] or [m, B, P] with B={self.members}, P={self.size}, "
                             f"got {tuple(v.shape)}")
        v = v.to(dtype=torch.float64, device=self.device)
        first = self.num_hvps + 1
        self.num_hvps += 1 if v.ndim == 2 else v.shape[0]
        if v.ndim == 2:
            out = self._product(v)
        elif self._batched_ok:
            out = self._product(v, batched=True)
        else:
            out = torch.stack([self._product(u) for u in v])
        if not bool(out.isfinite().all()):
            bad = (~out.isfinite()).reshape(-1, self.members, self.size).any(dim=2).nonzero()[0]
            raise NonFiniteError(
                f"Hessian-vector product {first + int(bad[0])} of member {int(bad[1])} (row of thetas) is not finite "
                f"while its loss ({float(self.loss[bad[1]]):.6g}) and gradient norm "
                f"({float(self.grad_norm[bad[1]]):.3g}) are: the second derivative does not exist or overflows here")
        return out

    def _product(self, v: Tensor, batched: bool = False) -> Tensor:
        if self._grad is None:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(self._grad, self._theta, v, retain_graph=True, is_grads_batched=batched,
                                    allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()


def population_hessians(op: PopulationHessian, chunk_size: int = 32, memory_limit: int | None = None) -> Tensor:
    """The dense Hessians [B, P, P] of every member of ``op``, symmetrized ((H + H^T) / 2).

    Column j of every member's Hessian comes from one batched product with the unit vector e_j in
    every row (P products per member in all; on accelerators ``chunk_size`` columns per vmapped
    call, on the CPU one at a time, which measured cheaper there). Memory: 8 B P^2 bytes, refused
    before allocating (:class:`~.errors.MemoryLimitError`) beyond ``memory_limit`` (default: free
    memory).
    """
    b, p = op.members, op.size
    require_memory(FLOAT64_BYTES * b * p * p, f"{b} dense {p:,} x {p:,} float64 Hessians (8 B P^2 bytes)", op.device,
                   memory_limit)
    hess = torch.empty(b, p, p, dtype=torch.float64, device=op.device)
    step = chunk_size if op._batched_ok else 1
    for start in range(0, p, step):
        cols = torch.arange(min(step, p - start), device=op.device)
        unit = torch.zeros(len(cols), b, p, dtype=torch.float64, device=op.device)
        unit[cols, :, start + cols] = 1.0
        # row j of H_b is H_b e_j (before symmetrization, its column)
        hess[:, start : start + len(cols)] = op(unit).transpose(0, 1) if len(cols) > 1 else op(unit[0]).unsqueeze(1)
    for h in hess:
        symmetrize_(h)
    return hess


def population_eigenvalues(hessians: Tensor) -> Tensor:
    """Eigenvalues [B, P] (ascending) of each symmetric matrix of ``hessians`` [B, P, P].

    ``torch.linalg.eigvalsh`` one matrix at a time (LAPACK ``syevd``; the batch is never copied
    whole, so the workspace is one copy, 8 P^2 bytes), on torch's threads (the job's ``threads``).
    Cost O(P^3) per member: measured 0.44 s at P = 1,885 on one thread, 114 s at 17,560 on two.
    """
    return torch.stack([torch.linalg.eigvalsh(h) for h in hessians]) if len(hessians) else hessians.new_zeros(0, 0)


def cluster_runs(values: Tensor, gap: Tensor) -> Tensor:
    """For sorted rows ``values`` [B, n], the size of the run of equal values each entry belongs to [B, n]
    (int64): neighbours closer than ``gap`` [B] (absolute) are equal, and runs chain through neighbours
    (the rule of :func:`~.clusters.cluster_sizes` with zero residuals, vectorized)."""
    b, n = values.shape
    if n == 0:
        return values.new_zeros(b, 0, dtype=torch.int64)
    new_run = torch.ones(b, n, dtype=torch.bool, device=values.device)
    new_run[:, 1:] = (values[:, 1:] - values[:, :-1]).abs() > gap[:, None]
    run = new_run.cumsum(dim=1)  # run number of every entry, per row (1-based)
    counts = torch.zeros(b, n + 1, dtype=torch.int64, device=values.device).scatter_add_(
        1, run, torch.ones_like(run))
    return counts.gather(1, run)


class DenseSpectrum(NamedTuple):
    """Everything the exact spectra of B members give, per member (from :func:`dense_spectrum`).

    eigenvalues [B, P] ascending (eigenvalue units). top [B, k] (largest first) and bottom [B, k]
    (smallest first), with ``top_multiplicity`` / ``bottom_multiplicity`` [B, k] (int64, the size of
    the cluster of equal values each belongs to: values within ``DENSE_CLUSTER_TOL`` max|lambda|,
    counted over the whole spectrum, so a cluster cut by the k-th value still reports its full size)
    and ``top_certificate`` / ``bottom_certificate`` [B] (the (k+1)-th value from that end: the
    most extreme eigenvalue of H without the k returned; nan when k = P). index: the
    :class:`~.index.ThresholdCount` of :func:`~.index.count_below` (count, threshold, scale
    max|lambda|, certificate: the first eigenvalue not counted). trace [B]: the sum of the
    eigenvalues (exact up to rounding). Residuals of dense eigenvalues are 0 (exact up to eigvalsh
    rounding, about P eps max|lambda|).
    """

    eigenvalues: Tensor
    top: Tensor
    top_multiplicity: Tensor
    top_certificate: Tensor
    bottom: Tensor
    bottom_multiplicity: Tensor
    bottom_certificate: Tensor
    index: ThresholdCount
    trace: Tensor


def dense_spectrum(eigenvalues: Tensor, top_k: int, bottom_k: int, threshold: float | None = None,
                   relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD) -> DenseSpectrum:
    """Top-k, bottom-k (with multiplicities and certificates), index, trace of spectra [B, P] (ascending).

    The index follows the one threshold convention (:func:`~.index.count_below`).

    Raises:
        ValueError: ``top_k`` or ``bottom_k`` outside 1..P; a threshold that breaks the convention.
    """
    b, p = eigenvalues.shape
    for name, k in (("top_k", top_k), ("bottom_k", bottom_k)):
        if not 1 <= k <= p:
            raise ValueError(f"{name}={k} is outside 1..P={p}")
    scale = eigenvalues.abs().amax(dim=1)
    sizes = cluster_runs(eigenvalues, DENSE_CLUSTER_TOL * scale)
    nan = torch.full((b,), float("nan"), dtype=eigenvalues.dtype, device=eigenvalues.device)
    top = eigenvalues.flip(1)[:, :top_k]
    bottom = eigenvalues[:, :bottom_k]
    top_cert = eigenvalues[:, p - top_k - 1] if top_k < p else nan
    bottom_cert = eigenvalues[:, bottom_k] if bottom_k < p else nan
    return DenseSpectrum(eigenvalues, top, sizes.flip(1)[:, :top_k], top_cert, bottom, sizes[:, :bottom_k], bottom_cert,
                         count_below(eigenvalues, threshold, relative_threshold), eigenvalues.sum(dim=1))


class PopulationSpectrum(NamedTuple):
    """:func:`population_spectrum`'s result: ``spectrum`` (a :class:`DenseSpectrum` of the B members),
    loss [B] and grad_norm [B] at the points, passes (backward passes per member that assembled the
    Hessians: P Hessian-vector products, or fewer with an affine first layer) and assembly ("hvp" or
    "affine_input")."""

    spectrum: DenseSpectrum
    loss: Tensor
    grad_norm: Tensor
    passes: int
    assembly: str


def population_spectrum(
    losses_fn: PopulationLossFn,
    thetas: Tensor,
    top_k: int,
    bottom_k: int,
    threshold: float | None = None,
    relative_threshold: float = DEFAULT_RELATIVE_THRESHOLD,
    *,
    structure: AffineInput | None = None,
    memory_limit: int | None = None,
) -> PopulationSpectrum:
    """Exact Hessian spectra of the B members ``thetas`` [B, P] of a population loss, in one pass.

    The Hessians come from :func:`~.affine.affine_input_hessians` when ``structure`` (the
    :class:`~.affine.AffineInput` of the same loss) is given, else from :func:`population_hessians`
    (P batched products); their eigenvalues from :func:`population_eigenvalues`; the numbers from
    :func:`dense_spectrum`. Losses and gradient norms from one population gradient.

    Cost per member: the assembly and one ``eigvalsh``, O(P^3). Memory: 8 (B + 1) P^2 bytes plus the
    population's autograd graph; choose B with :func:`~.memory.dense_members`.

    Raises:
        MemoryLimitError: the B Hessians and one eigvalsh copy (8 (B + 1) P^2 bytes) exceed
            ``memory_limit`` (default: free memory); the message gives the estimate.
        NonFiniteError: a loss, gradient or Hessian entry is NaN or infinite.
        ValueError: as :func:`dense_spectrum`, or a losses_fn that is not a float64 [B] vector.
    """
    b, p = thetas.shape
    require_memory(dense_bytes(p, b), f"the dense spectra of {b} member(s) of P = {p:,}: their float64 Hessians and "
                   "one eigvalsh copy (8 (B + 1) P^2 bytes)", thetas.device, memory_limit)
    if structure is None:
        op = PopulationHessian(losses_fn, thetas)
        loss, grad_norm = op.loss, op.grad_norm
        hess = population_hessians(op, memory_limit=memory_limit)
        passes, assembly = op.num_hvps, "hvp"
        del op
    else:
        loss, grad_norm = first_order(losses_fn, thetas)
        hess, passes = affine_input_hessians(structure, thetas, memory_limit)
        assembly = "affine_input"
    eigenvalues = population_eigenvalues(hess)
    del hess
    return PopulationSpectrum(dense_spectrum(eigenvalues, top_k, bottom_k, threshold, relative_threshold),
                              loss, grad_norm, passes, assembly)


def first_order(losses_fn: PopulationLossFn, thetas: Tensor) -> tuple[Tensor, Tensor]:
    """Member losses [B] and gradient norms [B] of a population loss at ``thetas`` [B, P] (one gradient).

    Raises:
        NonFiniteError: a loss or gradient is NaN or infinite.
    """
    point = thetas.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        losses = losses_fn(point)
        (grad,) = torch.autograd.grad(losses.sum(), point, allow_unused=True)
    grad = torch.zeros_like(point) if grad is None else grad
    require_finite(losses.detach(), "the member losses at thetas")
    require_finite(grad, "the member gradients at thetas")
    return losses.detach(), grad.norm(dim=1)
