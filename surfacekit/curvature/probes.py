"""Random probe vectors for stochastic estimators."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Distribution = Literal["rademacher", "gaussian"]


def random_probes(n: int, size: int, like: Tensor, distribution: Distribution, generator: torch.Generator) -> Tensor:
    """``n`` probe vectors [n, size] with E[v v^T] = I, in the dtype and device of ``like``."""
    if distribution == "rademacher":
        v = torch.randint(0, 2, (n, size), generator=generator).to(like.dtype) * 2 - 1
    elif distribution == "gaussian":
        v = torch.randn(n, size, generator=generator, dtype=like.dtype)
    else:
        raise ValueError(f"unknown probe distribution {distribution!r}; use 'rademacher' or 'gaussian'")
    return v.to(like.device)
