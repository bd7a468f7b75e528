"""Populations of K networks: seeds, stacked parameters, flat views, full-data evaluation.

A population's parameters are a dict of tensors with a leading member axis K (see models.py).
``flatten`` / ``unflatten`` map them to and from [K, P] (or one member's [P]) in the canonical
order of ``models.param_shapes``; ``member_loss_fn`` exposes one member's full-training-set loss
as a function of a flat vector, the view every curvature tool and critical-point finder takes.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch

from surfacekit.models import MLPSpec, forward, init_member, member_errors, member_losses, param_shapes

Params = dict[str, torch.Tensor]


def member_seed(seed: int, member: int) -> int:
    """The seed of member ``member`` of a job with seed ``seed`` (independent streams, 63 bits)."""
    state = np.random.SeedSequence([int(seed), int(member)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def init_population(
    spec: MLPSpec, seeds: list[int], dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> Params:
    """Stacked parameters [K, ...], member k initialized from ``seeds[k]``."""
    members = [init_member(spec, s, dtype) for s in seeds]
    return {name: torch.stack([m[name] for m in members]).to(device) for name in param_shapes(spec)}


def flatten(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[K, P] flat view of stacked parameters (a copy)."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params.values()], dim=1)


def unflatten(flat: torch.Tensor, spec: MLPSpec) -> Params:
    """Inverse of ``flatten``: [K, P] -> stacked parameters; a single [P] vector gets K = 1."""
    if flat.dim() == 1:
        flat = flat.unsqueeze(0)
    out, start = {}, 0
    for name, shape in param_shapes(spec).items():
        size = math.prod(shape)
        out[name] = flat[:, start : start + size].reshape(flat.shape[0], *shape)
        start += size
    if start != flat.shape[1]:
        raise ValueError(f"flat vector has {flat.shape[1]} entries, the spec needs {start}")
    return out


def _chunks(n: int, chunk_size: int | None, spec: MLPSpec):
    # Batch norm uses the statistics of the batch it sees, so its full-data loss is unchunked.
    size = n if (chunk_size is None or spec.batch_norm) else int(chunk_size)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def full_loss(
    spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean loss over all N examples per member [K], summed chunk by chunk weighted by chunk size."""
    n = x.shape[0]
    total = 0.0
    for sl in _chunks(n, chunk_size, spec):
        total = total + member_losses(forward(spec, params, x[sl]), y[sl], loss) * ((sl.stop - sl.start) / n)
    return total


@torch.no_grad()
def evaluate(
    spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-data loss and classification error per member, each [K]."""
    n = x.shape[0]
    losses, errors = 0.0, 0.0
    for sl in _chunks(n, chunk_size, spec):
        out = forward(spec, params, x[sl])
        w = (sl.stop - sl.start) / n
        losses = losses + member_losses(out, y[sl], loss) * w
        errors = errors + member_errors(out, y[sl]) * w
    return losses, errors


def gradient_norms(
    spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Euclidean norm of each member's full-data gradient [K]."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        total = full_loss(spec, leaves, x, y, loss, chunk_size).sum()
        grads = torch.autograd.grad(total, list(leaves.values()))
    return torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads))


def member_loss_fn(
    spec: MLPSpec, x: torch.Tensor, y: torch.Tensor, loss: str, chunk_size: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``loss_fn(theta)``: one network's mean loss over (x, y) as a scalar, theta a flat [P] vector.

    Use ``flatten(params)[k]`` as theta for member k. Differentiable to any order.
    """

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        return full_loss(spec, unflatten(theta, spec), x, y, loss, chunk_size)[0]

    return loss_fn
