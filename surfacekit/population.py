"""Populations of K networks: stacked parameters, flat views, full-data evaluation.

A population's parameters are a dict of tensors with a leading member axis K (see
``surfacekit.models``). ``flatten`` / ``unflatten`` map them to and from [K, P] (or one member's
[P]) in the canonical order of ``models.param_shapes``. Full-data quantities are computed a chunk
of examples at a time, every chunk weighted by its size, so chunking changes nothing but memory.

Batch norm over the full data set has two definitions, chosen by ``statistics``: ``None`` (the
default) normalizes with the statistics of the whole data set, computed exactly under chunking as a
differentiable function of the parameters (``dataset_statistics``; *batch mode*); a dict of
``layers.{i}.bn_mean`` / ``bn_var`` [K, width] (``{norm}.bn_mean`` / ``bn_var`` [K, C] for a module
population) normalizes with those fixed values (*evaluation mode*).

Every function takes either spec (``MLPSpec`` or ``ModuleSpec``, see ``surfacekit.models.architecture``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping

import torch

from surfacekit.models import (
    ModuleSpec, Spec, Statistics, affine, forward, init_member, layer, member_errors, member_losses, param_name,
    param_shapes, pooled_moments,
)
from surfacekit.models.module import norm_moments
from surfacekit.seeds import member_seed

__all__ = [
    "Params", "chunks", "dataset_statistics", "evaluate", "flatten", "full_loss", "gather_rows", "init_population",
    "member_loss_fn", "member_seed", "unflatten",
]

Params = dict[str, torch.Tensor]


def init_population(
    spec: Spec, seeds: list[int], dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
) -> Params:
    """Stacked parameters [K, ...], member k initialized from ``seeds[k]``."""
    members = [init_member(spec, s, dtype) for s in seeds]
    return {name: torch.stack([m[name] for m in members]).to(device) for name in param_shapes(spec)}


def flatten(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[K, P] flat view of stacked parameters (a copy)."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params.values()], dim=1)


def unflatten(flat: torch.Tensor, spec: Spec) -> Params:
    """Inverse of ``flatten``: [K, P] -> stacked parameters; a single [P] vector gets K = 1.

    Raises:
        ValueError: the vector's length is not the spec's P.
    """
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


def gather_rows(data: torch.Tensor, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The rows ``data[index]`` [K, B, ...] of ``data`` [N, ...] for a minibatch index [K, B] (every member
    its own examples), as one ``index_select`` of the flattened index: the same values as advanced
    indexing, which took 5 to 6 times longer for [64, 128] rows of 64 floats on the CPU (its kernel
    handles general index shapes). out: a contiguous buffer [K, B, ...] to write into.

    Raises:
        IndexError: an index outside [0, N).
    """
    if out is None:
        return data.index_select(0, index.reshape(-1)).unflatten(0, index.shape)
    torch.index_select(data, 0, index.reshape(-1), out=out.view(-1, *data.shape[1:]))
    return out


def chunks(n: int, chunk_size: int | None) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``chunk_size`` examples (one slice when None)."""
    size = n if chunk_size is None else max(1, int(chunk_size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def dataset_statistics(spec: Spec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Batch-norm statistics of the whole data set x [N, in], per member: ``layers.{i}.bn_mean`` and
    ``bn_var`` (biased, divisor N) [K, width]; {} without batch norm.

    They equal the moments a training-mode forward pass over all N examples at once normalizes
    with, and are differentiable in ``params``. Chunked, they are computed layer by layer: layer i's
    pre-activations need layer i-1's full-set statistics, so every chunk is passed through layers
    0..i-1 again and the chunks' moments are pooled exactly (``models.pooled_moments``). Cost:
    one forward pass without chunking; with c > 1 chunks, D(D+1)/2 layer passes over the data for D
    hidden layers. Memory: one chunk's activations (plus autograd's graph when differentiating).
    A module population (``ModuleSpec``) names them ``{norm}.bn_mean`` / ``bn_var`` [K, C] and is
    chunked norm layer by norm layer the same way (a pass stops at the layer it measures).
    """
    if not spec.batch_norm:
        return {}
    n = x.shape[0]
    if chunk_size is None or chunk_size >= n:
        return forward(spec, params, x, return_statistics=True)[1]
    if isinstance(spec, ModuleSpec):
        return _module_statistics(spec, params, x, chunk_size)
    stats: dict[str, torch.Tensor] = {}
    for i in range(len(spec.widths)):
        counts, means, sums_sq = [], [], []
        for sl in chunks(n, chunk_size):
            h = x[sl]
            for j in range(i):
                h = layer(spec, params, j, h, stats)
            z = affine(spec, params, i, h)
            mean = z.mean(dim=1)
            counts.append(sl.stop - sl.start)
            means.append(mean)
            sums_sq.append((z - mean.unsqueeze(1)).pow(2).sum(dim=1))
        stats[param_name(i, "bn_mean")], stats[param_name(i, "bn_var")] = pooled_moments(counts, means, sums_sq)
    return stats


def _module_statistics(spec: ModuleSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       chunk_size: int) -> dict[str, torch.Tensor]:
    """``dataset_statistics`` of a module population in chunks: norm layer j's moments over every chunk,
    the layers before it normalizing with their full-set statistics, pooled exactly."""
    stats: dict[str, torch.Tensor] = {}
    for norm in spec.norms:
        counts, means, sums_sq = [], [], []
        for sl in chunks(x.shape[0], chunk_size):
            mean, var = norm_moments(spec, params, x[sl], stats, norm)
            count = (sl.stop - sl.start) * norm.per_example
            counts.append(count)
            means.append(mean)
            sums_sq.append(var * count)
        stats[f"{norm.name}.bn_mean"], stats[f"{norm.name}.bn_var"] = pooled_moments(counts, means, sums_sq)
    return stats


def _resolve(spec: Spec, params, x, chunk_size, statistics: Statistics | None) -> Statistics | None:
    """The statistics to normalize every chunk with; None where one chunk's own moments are the full set's."""
    if not spec.batch_norm or statistics is not None:
        return statistics if spec.batch_norm else None
    if chunk_size is None or chunk_size >= x.shape[0]:
        return None
    return dataset_statistics(spec, params, x, chunk_size)


def full_loss(
    spec: Spec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
    chunk_size: int | None = None, statistics: Statistics | None = None,
) -> torch.Tensor:
    """Mean loss over all N examples per member [K], summed chunk by chunk weighted by chunk size.

    ``statistics``: None for batch norm in batch mode (full-set statistics), or fixed statistics
    (evaluation mode); see the module docstring. Differentiable to any order.
    """
    n = x.shape[0]
    stats = _resolve(spec, params, x, chunk_size, statistics)
    total = 0.0
    for sl in chunks(n, chunk_size):
        total = total + member_losses(forward(spec, params, x[sl], stats), y[sl], loss) * ((sl.stop - sl.start) / n)
    return total


@torch.no_grad()
def evaluate(
    spec: Spec, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, loss: str,
    chunk_size: int | None = None, statistics: Statistics | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-data loss and classification error per member, each [K]; ``statistics`` as for ``full_loss``."""
    n = x.shape[0]
    stats = _resolve(spec, params, x, chunk_size, statistics)
    losses, errors = 0.0, 0.0
    for sl in chunks(n, chunk_size):
        out = forward(spec, params, x[sl], stats)
        w = (sl.stop - sl.start) / n
        losses = losses + member_losses(out, y[sl], loss) * w
        errors = errors + member_errors(out, y[sl]) * w
    return losses, errors


def member_loss_fn(
    spec: Spec, x: torch.Tensor, y: torch.Tensor, loss: str, chunk_size: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``loss_fn(theta)``: one network's mean data loss over (x, y), batch norm in batch mode.

    The same function as ``surfacekit.objective.objective_fn(..., objective="data", bn_mode="batch")``,
    which builds every variant (the trained objective with its L2 term, evaluation-mode batch norm);
    kept for existing callers.
    """
    from surfacekit.objective import objective_fn  # objective builds on this module

    return objective_fn(spec, x, y, loss, objective="data", bn_mode="batch", chunk_size=chunk_size)
