"""Start points for the finders from a stored training trajectory."""

from __future__ import annotations

import numpy as np


def sample_uniform_in_loss(losses: np.ndarray, num: int, seed: int | None = 0) -> np.ndarray:
    """Indices [num] into a trajectory whose losses [T] are given, spread uniformly in loss.

    Draws ``num`` target losses uniformly on [min, max] of the finite losses and returns, for each,
    the trajectory point whose loss is nearest (Frye et al. 2021 drew starts uniformly in loss, so a
    fast early descent is not under-sampled the way uniform-in-time sampling would under-sample
    it). Points may repeat when T is small. Non-finite losses are never chosen.

    Raises:
        ValueError: ``losses`` is not a non-empty 1-D array, has no finite value, or ``num < 1``.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError("losses must be a non-empty 1-D array [T]")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    ok = np.flatnonzero(np.isfinite(losses))
    if ok.size == 0:
        raise ValueError("no finite loss on the trajectory")
    rng = np.random.default_rng(seed)
    targets = rng.uniform(losses[ok].min(), losses[ok].max(), size=num)
    nearest = np.abs(losses[ok][None, :] - targets[:, None]).argmin(axis=1)
    return ok[nearest]
