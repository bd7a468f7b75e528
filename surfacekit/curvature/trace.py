"""Hutchinson's stochastic estimate of the Hessian trace."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .hvp import DEFAULT_BACKEND, Backend, LossFn, hessian_operator
from .probes import Distribution, random_probes


class TraceEstimate(NamedTuple):
    """estimate: mean of v^T H v over probes (loss units / theta units^2); stderr: its standard
    error (sample std / sqrt(n)); samples: [n] the individual v^T H v; num_hvps: products used."""

    estimate: float
    stderr: float
    samples: Tensor
    num_hvps: int


def hutchinson_trace(
    loss_fn: LossFn,
    theta: Tensor,
    num_probes: int = 100,
    *,
    distribution: Distribution = "rademacher",
    batch_size: int = 16,
    backend: Backend = DEFAULT_BACKEND,
    seed: int | None = 0,
) -> TraceEstimate:
    """Estimate tr H(theta) from exactly ``num_probes`` (>= 2) probes, ``batch_size`` products at a time.

    Always uses every probe: no early stopping on the sign or size of the running estimate.
    Computed in float64 (a float32 ``theta`` is upcast with a warning). Source: Hutchinson 1990.

    Raises:
        ValueError: fewer than 2 probes.
        NonFiniteError: the loss, gradient or a Hessian-vector product is NaN or infinite.
    """
    if num_probes < 2:
        raise ValueError("num_probes must be >= 2 to report a standard error")
    gen = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    op = hessian_operator(loss_fn, theta, backend)
    samples = []
    for start in range(0, num_probes, batch_size):
        v = random_probes(min(batch_size, num_probes - start), op.size, op.point, distribution, gen)
        samples.append((v * op(v)).sum(dim=1))
    s = torch.cat(samples)
    return TraceEstimate(float(s.mean()), float(s.std() / num_probes**0.5), s, op.num_hvps)
