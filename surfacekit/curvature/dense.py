"""The exact, dense Hessian: the reference every iterative method is tested against."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .hvp import DEFAULT_BACKEND, Backend, LossFn, check_theta, hessian_operator


def dense_hessian(
    loss_fn: LossFn,
    theta: Tensor,
    method: Literal["hvp", "func"] = "hvp",
    chunk_size: int = 64,
    backend: Backend = DEFAULT_BACKEND,
) -> Tensor:
    """Full Hessian [P, P] of ``loss_fn`` at ``theta`` [P], symmetrized, in ``theta``'s dtype.

    ``method="hvp"`` stacks Hessian-vector products against unit vectors, ``chunk_size`` at a time
    (P products in all, memory O(chunk_size * P) beyond the result). ``method="func"`` calls
    ``torch.func.hessian`` (forward-over-reverse over all P directions at once: fast for small P,
    memory-hungry for large P).
    """
    check_theta(theta)
    if method == "func":
        hess = torch.func.hessian(loss_fn)(theta.detach())
    elif method == "hvp":
        op = hessian_operator(loss_fn, theta, backend)
        p = theta.numel()
        hess = torch.empty(p, p, dtype=theta.dtype, device=theta.device)
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        for start in range(0, p, chunk_size):
            hess[start : start + chunk_size] = op(eye[start : start + chunk_size])
    else:
        raise ValueError(f"unknown method {method!r}; use 'hvp' or 'func'")
    return 0.5 * (hess + hess.T)
