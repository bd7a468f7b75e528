"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

Each probe v gives a Lanczos tridiagonal T; its eigenvalues (Ritz nodes) with weights equal to the
squared first components of its eigenvectors form an m-point Gauss quadrature of the spectral
measure seen from v. Averaging over probes estimates the eigenvalue distribution
(1/P) sum_i delta(lambda - lambda_i). Its smoothed mass below zero is *not* an index: see
:func:`surfacekit.curvature.index`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator
from .lanczos import lanczos, tridiagonal
from .memory import FLOAT64_BYTES, require_memory
from .probes import Distribution, random_probes


class SpectralDensity(NamedTuple):
    """nodes: [n_probes, m] Ritz values (eigenvalue units); weights: [n_probes, m], each row sums
    to 1 (rows padded with zero weight if a probe's Krylov space closed early); num_hvps: products."""

    nodes: Tensor
    weights: Tensor
    num_hvps: int


def spectral_density(
    loss_fn: LossFn,
    theta: Tensor,
    num_probes: int = 10,
    num_steps: int = 90,
    *,
    distribution: Distribution = "gaussian",
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
    memory_limit: int | None = None,
) -> SpectralDensity:
    """SLQ nodes and weights of the Hessian at ``theta`` [P]: ``num_probes`` x ``num_steps`` products.

    Lanczos is fully reorthogonalized (no ghost eigenvalues); memory 8 x num_steps x P bytes for the
    basis of one probe at a time. Computed in float64 (a float32 ``theta`` is upcast with a warning).
    Source: Ghorbani, Krishnan and Xiao 2019 (SLQ for neural-network Hessians); Golub and Meurant
    (Gauss quadrature from Lanczos).

    Raises:
        NonFiniteError: the loss, gradient or a Hessian-vector product is NaN or infinite.
        MemoryLimitError: the basis would not fit ``memory_limit`` bytes (default: free memory).
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    op = hessian_operator(loss_fn, theta, backend)
    p = op.size
    m = min(num_steps, p)
    require_memory(FLOAT64_BYTES * m * p, f"spectral_density: a Lanczos basis of {m} vectors of P = {p:,} (8 m P bytes)",
                   op.device, memory_limit)
    nodes = torch.zeros(num_probes, m, dtype=op.dtype, device=op.device)
    weights = torch.zeros_like(nodes)
    for i, v in enumerate(random_probes(num_probes, p, op.point, distribution, gen)):
        res = lanczos(op, v / v.norm(), m)
        theta_i, s = torch.linalg.eigh(tridiagonal(res))
        n = len(theta_i)
        nodes[i, :n], weights[i, :n] = theta_i, s[0] ** 2
        nodes[i, n:] = theta_i[-1]
    return SpectralDensity(nodes, weights, op.num_hvps)


def density_on_grid(
    density: SpectralDensity,
    grid: Tensor | None = None,
    num_points: int = 1000,
    variance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Gaussian-kernel-smoothed eigenvalue density (integrates to ~1) on ``grid`` [G].

    Default grid: ``num_points`` points over the node range padded by 1%. Default kernel variance:
    1e-5 x (spectral range)^2. Returns (grid [G], density [G]) in 1/eigenvalue units.
    """
    lo, hi = float(density.nodes.min()), float(density.nodes.max())
    span = max(hi - lo, 1e-300)
    if grid is None:
        grid = torch.linspace(lo - 0.01 * span, hi + 0.01 * span, num_points, dtype=density.nodes.dtype)
    var = 1e-5 * span**2 if variance is None else variance
    diff = grid[:, None, None] - density.nodes[None]
    kernel = torch.exp(-0.5 * diff**2 / var) / (2 * torch.pi * var) ** 0.5
    values = (kernel * density.weights[None]).sum(dim=2).mean(dim=1)
    return grid, values
