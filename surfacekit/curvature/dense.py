"""The exact, dense Hessian: the reference every iterative method is tested against.

It is assembled from Hessian-vector products against unit vectors, a block of columns per batched
product. A Hessian-vector product is the derivative of the gradient autograd computes, so it is
exact through any layer; ``torch.func.hessian`` is not: through BatchNorm in train mode and
LayerNorm it was measured 8.5e-2 and 2.7e-2 away from finite differences of the gradient (issue 12;
entries up to 0.64), and 0.43 and 0.033 on the small nets of tests/curvature/test_failures.py,
where the products agree with the finite differences.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .hvp import DEFAULT_BACKEND, Backend, HessianOperator, LossFn, hessian_operator
from .memory import FLOAT64_BYTES, require_memory

DEFAULT_CHUNK = 64
FUNC_CHECK_VECTORS = 4
FUNC_CHECK_RTOL = 1e-8


def assemble_hessian(op: HessianOperator, chunk_size: int = DEFAULT_CHUNK, memory_limit: int | None = None) -> Tensor:
    """The Hessian [P, P] of ``op`` from P products, ``chunk_size`` unit vectors per batched product.

    Symmetrized in place, block by block ((H + H^T) / 2). Memory: the result, 8 P^2 bytes, plus two
    [chunk_size, P] blocks; refused before allocating if 8 P^2 bytes exceed ``memory_limit`` (default:
    free memory), with :class:`~.errors.MemoryLimitError`.
    """
    p = op.size
    require_memory(FLOAT64_BYTES * p * p, f"a dense {p:,} x {p:,} float64 Hessian (8 P^2 bytes)", op.device,
                   memory_limit)
    hess = torch.empty(p, p, dtype=op.dtype, device=op.device)
    for start in range(0, p, chunk_size):
        rows = min(chunk_size, p - start)
        unit = torch.zeros(rows, p, dtype=op.dtype, device=op.device)
        unit[range(rows), range(start, start + rows)] = 1.0
        hess[start : start + rows] = op(unit)
    for i in range(0, p, chunk_size):
        for j in range(i, p, chunk_size):
            mean = 0.5 * (hess[i : i + chunk_size, j : j + chunk_size] + hess[j : j + chunk_size, i : i + chunk_size].T)
            hess[i : i + chunk_size, j : j + chunk_size] = mean
            hess[j : j + chunk_size, i : i + chunk_size] = mean.T
    return hess


def dense_hessian(
    loss_fn: LossFn,
    theta: Tensor,
    method: Literal["hvp", "func"] = "hvp",
    chunk_size: int = DEFAULT_CHUNK,
    backend: Backend = DEFAULT_BACKEND,
    *,
    memory_limit: int | None = None,
) -> Tensor:
    """Full Hessian [P, P] of ``loss_fn`` at ``theta`` [P], symmetrized, in float64.

    ``method="hvp"`` (the reference): :func:`assemble_hessian`, P Hessian-vector products,
    ``chunk_size`` per batched call. ``method="func"`` calls ``torch.func.hessian``
    (forward-over-reverse over all P directions at once: fast for small P, memory-hungry for large
    P) and cross-checks it against ``FUNC_CHECK_VECTORS`` random Hessian-vector products, because it
    is wrong through normalization layers (see the module docstring).

    Raises:
        ValueError: ``method="func"`` disagrees with the Hessian-vector products by more than
            ``FUNC_CHECK_RTOL`` (relative): use ``method="hvp"``; or an unknown method.
        NonFiniteError: the loss, gradient or a product is not finite.
        MemoryLimitError: 8 P^2 bytes exceed ``memory_limit`` (default: free memory).
    """
    if method not in ("hvp", "func"):
        raise ValueError(f"unknown method {method!r}; use 'hvp' or 'func'")
    op = hessian_operator(loss_fn, theta, backend)
    if method == "hvp":
        return assemble_hessian(op, chunk_size, memory_limit)
    p = op.size
    require_memory(2 * FLOAT64_BYTES * p * p, f"torch.func.hessian of P = {p:,} (2 x 8 P^2 bytes)", op.device,
                   memory_limit)
    hess = torch.func.hessian(loss_fn)(op.point)
    hess = 0.5 * (hess + hess.T)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(FUNC_CHECK_VECTORS, p, generator=gen, dtype=op.dtype).to(op.device)
    exact = op(v)
    error = float((v @ hess - exact).norm())
    if error > FUNC_CHECK_RTOL * max(float(exact.norm()), float(hess.norm()) * 1e-12):
        raise ValueError(
            f"dense_hessian(method='func'): torch.func.hessian disagrees with Hessian-vector products "
            f"(|H_func v - H v| = {error:.3g} against |H v| = {float(exact.norm()):.3g}); it is not exact through "
            "layers such as BatchNorm or LayerNorm. Use method='hvp'.")
    return hess
