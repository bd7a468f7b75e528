"""Repeated eigenvalues: group values that are equal within their tolerance, and say so ("-0.5 (x20)")."""

from __future__ import annotations

import torch
from torch import Tensor

ROUNDING = 1e-12  # values this close (relative) are equal whatever their residuals say


def cluster_sizes(values: Tensor, residuals: Tensor, tol: float, floor: float = 0.0) -> Tensor:
    """For each of ``values`` [k] (sorted, either direction), the size of the cluster it belongs to.

    Neighbours a, b are equal when ``|a - b| <= max(r_a + r_b, tol * max(|a|, |b|, floor))`` (their
    residual bounds overlap, or they agree to the tolerance, relative to their size but at least to
    ``floor``, e.g. 1e-6 ||H||, so that rounding-level values near 0 count as equal); clusters chain
    through neighbours. Returns int64 [k].
    """
    k = len(values)
    sizes = values.new_zeros(k, dtype=torch.int64)
    start = 0
    for i in range(1, k + 1):
        if i < k and same_value(float(values[i - 1]), float(values[i]), float(residuals[i - 1]), float(residuals[i]),
                                tol, floor):
            continue
        sizes[start:i] = i - start
        start = i
    return sizes


def describe(values: Tensor, sizes: Tensor, more: bool = False, limit: int | None = None) -> str:
    """``values`` [k] with their cluster ``sizes`` [k] as text: ``"5 (x3), 4, 3.5"``.

    ``more``: the last cluster may have further copies beyond the ones returned (shown as ``(x3+)``).
    ``limit``: show at most this many clusters, then how many values were left out.
    """
    parts = []
    i = 0
    k = len(values)
    while i < k:
        if limit is not None and len(parts) == limit:
            parts.append(f"... ({k - i} more)")
            break
        m = int(sizes[i])
        block = values[i : i + m]
        mean = float(block.mean())
        plus = "+" if more and i + m == k else ""
        parts.append(f"{mean:.6g}" + (f" (x{m}{plus})" if m > 1 or plus else ""))
        i += m
    return ", ".join(parts)


def same_value(a: float, b: float, ra: float, rb: float, tol: float = ROUNDING, floor: float = 0.0) -> bool:
    """Whether values ``a`` and ``b`` with residual bounds ``ra`` and ``rb`` may be one eigenvalue."""
    return abs(a - b) <= max(ra + rb, tol * max(abs(a), abs(b), floor))

