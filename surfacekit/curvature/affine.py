"""The dense Hessians of networks whose first layer is affine on shared inputs, without a product per weight.

In a network whose first layer computes u = W x (plus a bias) on inputs x shared by every member, the
weight W [h, d] enters the loss only through u, and linearly. The Hessian rows of W are then Kronecker
sums over the examples of the (small) Hessians with respect to u, which batched matrix products
assemble: the first layer's h d columns, most of P in a wide input layer, need no Hessian-vector
product each. :func:`affine_input_hessians` does this for a population at once; it equals the
assembly from products (:func:`~.population.population_hessians`, :func:`~.dense.assemble_hessian`)
to rounding (tests: 1e-10).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .dense import symmetrize_
from .errors import require_finite
from .memory import FLOAT64_BYTES, require_memory


class AffineInput(NamedTuple):
    """How a population loss depends on the weight W [h, d] of an affine first layer applied to inputs
    shared by every member: the structure that :func:`affine_input_hessians` exploits.

    inputs: x [N, d]. offset: where W's h x d entries start in theta (row-major: W[i, k] is entry
    ``offset + i d + k``). rows: h. head(thetas [B, P], u [B, n, h], examples: slice) -> [B, n]: the
    per-example terms of the member losses, without the L2 term, whose sum over all N examples is the
    loss, given the first layer's x[examples] W^T as ``u`` (the W entries of ``thetas`` are not
    used). Each term must depend on its own example only (no batch statistics). l2: [P] the
    coefficients c_p of the loss's L2 term sum_p (c_p / 2) theta_p^2 (its Hessian is diag(c)).
    chunk_size: examples per pass (None: all at once).
    """

    inputs: Tensor
    offset: int
    rows: int
    head: Callable[[Tensor, Tensor, slice], Tensor]
    l2: Tensor
    chunk_size: int | None = None


def affine_input_hessians(structure: AffineInput, thetas: Tensor, memory_limit: int | None = None,
                          workspace: int = 2**29) -> tuple[Tensor, int]:
    """The dense Hessians [B, P, P] of a population loss with an affine first layer, and the backward
    passes they took (per member).

    With u_n = W x_n the first layer's pre-activations and f the loss as a function of (u, theta), W
    enters only through u, linearly, so (sums over the N examples; A_n = d^2 f / du_n^2 [h, h],
    C_n = d^2 f / du_n dtheta [h, P]):

        H_WW = sum_n A_n (x) x_n x_n^T,   H_W,rest = sum_n C_n (x) x_n,   H_rest,rest = d^2 f / dtheta^2,

    plus diag(c) from the L2 term. A costs h backward passes through the graph of the head's
    gradient (all members and examples at once, the examples being independent), C and H_rest,rest
    P - h d passes, and the Kronecker sums are batched matrix products: about 2 N h^2 d^2 + 2 N d h
    (P - h d) flops per member, with no product through the first layer per W column. The generic
    assembly (:func:`population_hessians`) needs P full Hessian-vector products instead. Exact (the
    same Hessian; tests: 1e-10). Memory: the Hessians, 8 B P^2 bytes (refused beyond
    ``memory_limit``), plus ``workspace`` bytes for the per-example blocks (examples are taken in
    chunks that fit it).

    Raises:
        MemoryLimitError: the B Hessians would not fit.
        NonFiniteError: a Hessian entry is NaN or infinite.
    """
    thetas = thetas.detach().to(torch.float64)
    b, p = thetas.shape
    x = structure.inputs.to(thetas)
    n_total, d = x.shape
    h, off = structure.rows, structure.offset
    wsl = slice(off, off + h * d)
    rest = torch.cat([torch.arange(0, off), torch.arange(off + h * d, p)]).to(thetas.device)
    require_memory(FLOAT64_BYTES * b * p * p, f"{b} dense {p:,} x {p:,} float64 Hessians (8 B P^2 bytes)",
                   thetas.device, memory_limit)
    hess = torch.zeros(b, p, p, dtype=torch.float64, device=thetas.device)
    weight = thetas[:, wsl].reshape(b, h, d)
    per_example = FLOAT64_BYTES * (b * h * (h + RESTS_PER_PASS) + d * d)
    step = max(1, min(structure.chunk_size or n_total, workspace // per_example))
    passes = 0
    for start in range(0, n_total, step):
        examples = slice(start, min(n_total, start + step))
        xc = x[examples]
        u = torch.matmul(xc, weight.transpose(1, 2)).requires_grad_(True)
        point = thetas.clone().requires_grad_(True)
        with torch.enable_grad():
            total = structure.head(point, u, examples).sum()
            grad_u, grad_t = torch.autograd.grad(total, (u, point), create_graph=True, allow_unused=True)
        passes += _weight_block(hess, grad_u, u, xc, wsl, h, d, workspace)
        passes += _rest_rows(hess, grad_t, u, point, xc, rest, wsl, h, d)
    _mirror_weight_block(hess, wsl, h, d)
    hess[:, wsl][:, :, rest] = hess[:, rest][:, :, wsl].transpose(1, 2)
    hess.diagonal(dim1=1, dim2=2).add_(structure.l2.to(hess))
    require_finite(hess.sum(dim=(1, 2)), "the dense Hessians (a NaN or infinite entry)")
    for one in hess:
        symmetrize_(one)
    return hess, passes


RESTS_PER_PASS = 64  # rest-parameter columns whose d^2 f / du dtheta_j are contracted with x at once


def _weight_block(hess: Tensor, grad_u: Tensor | None, u: Tensor, xc: Tensor, wsl: slice, h: int, d: int,
                  workspace: int) -> int:
    """Add sum_n A_n (x) x_n x_n^T of these examples to the W-W blocks; returns the passes (h).

    As one matrix product per group of rows i: A [n, (i, b, i')]^T times the products of input pairs
    x_nk x_nk' [n, (k, k')], shared by every member, then reordered to rows (i, k), columns (i', k').
    """
    if grad_u is None or not grad_u.requires_grad:
        return 0
    b, n, _ = u.shape
    second = torch.empty(n, h, b, h, dtype=u.dtype, device=u.device)  # [n, i, b, i'] = d^2 f / du_i du_i'
    seed = torch.zeros_like(grad_u)
    for i in range(h):
        seed[..., i] = 1.0
        (col,) = torch.autograd.grad(grad_u, u, seed, retain_graph=True, allow_unused=True)
        seed[..., i] = 0.0
        second[:, i] = 0.0 if col is None else col.transpose(0, 1)
    pairs = (xc[:, :, None] * xc[:, None, :]).reshape(n, d * d)
    rows = max(1, min(-(-h // 8), workspace // (FLOAT64_BYTES * b * h * d * d)))  # 8+ groups: ~56% of the flops
    for i in range(0, h, rows):  # blocks (i, i') with i' >= i only; mirrored by _mirror_weight_block
        m, right = min(rows, h - i), h - i
        block = second[:, i : i + m, :, i:].reshape(n, m * b * right).transpose(0, 1) @ pairs
        block = block.reshape(m, b, right, d, d).permute(1, 0, 3, 2, 4).reshape(b, m * d, right * d)
        hess[:, wsl.start + i * d : wsl.start + (i + m) * d, wsl.start + i * d : wsl.stop] += block
    return h


def _mirror_weight_block(hess: Tensor, wsl: slice, h: int, d: int) -> None:
    """Fill the W-W blocks below the block diagonal from those above it."""
    for i in range(h - 1):
        rows = slice(wsl.start + i * d, wsl.start + (i + 1) * d)
        right = slice(wsl.start + (i + 1) * d, wsl.stop)
        hess[:, right, rows] = hess[:, rows, right].transpose(1, 2)


def _rest_rows(hess: Tensor, grad_t: Tensor | None, u: Tensor, point: Tensor, xc: Tensor, rest: Tensor, wsl: slice,
               h: int, d: int) -> int:
    """Add the rows of the other parameters (their block and their coupling to W) of these examples;
    returns the passes (one per other parameter)."""
    if grad_t is None or not grad_t.requires_grad:
        return 0
    b, n, _ = u.shape
    seed = torch.zeros_like(grad_t)
    xt = xc.transpose(0, 1)
    for first in range(0, len(rest), RESTS_PER_PASS):
        group = rest[first : first + RESTS_PER_PASS]
        g = len(group)
        coupling = torch.zeros(n, g, b, h, dtype=u.dtype, device=u.device)  # [n, j, b, i] = d^2 f / du_i dtheta_j
        for c, j in enumerate(group.tolist()):
            seed[:, j] = 1.0
            du, dt = torch.autograd.grad(grad_t, (u, point), seed, retain_graph=True, allow_unused=True)
            seed[:, j] = 0.0
            if dt is not None:
                hess[:, j] += dt
            if du is not None:
                coupling[:, c] = du.transpose(0, 1)
        block = (xt @ coupling.reshape(n, g * b * h)).reshape(d, g, b, h)  # [k, j, b, i]
        hess[:, group, wsl] += block.permute(2, 1, 3, 0).reshape(b, g, h * d)
    return len(rest)
