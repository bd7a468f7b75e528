"""Armijo backtracking, the one line search of the finders (Nocedal and Wright, Algorithm 3.1).

Used on the loss ``f`` (saddle-free Newton) or on ``||g||^2`` (Newton-MR, Krylov Newton, the
gradient-norm minimizer). The test is relative (``value <= current + rho * alpha * slope``), so it
gives the same steps whatever the units of the loss.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

from .evaluate import Evaluations, finite

Objective = Literal["loss", "grad_norm2"]


class Step(NamedTuple):
    """An accepted trial point: step length ``alpha`` (a multiple of the direction), theta [P], f, g [P]."""

    alpha: float
    theta: Tensor
    loss: float
    grad: Tensor


def armijo(evaluations: Evaluations, theta: Tensor, direction: Tensor, *, objective: Objective, current: float,
           slope: float, step0: float, rho: float, beta: float, min_step: float) -> Step | None:
    """The first ``alpha = step0 * beta^j >= min_step`` with a sufficient decrease along ``direction`` [P].

    ``objective`` is ``"loss"`` (``f``) or ``"grad_norm2"`` (``||g||^2``); ``current`` is its value
    at ``theta`` and ``slope`` its directional derivative along ``direction`` (negative). A trial
    is accepted when ``obj(theta + alpha d) <= current + rho * alpha * slope`` and f and the
    objective are finite. Cost: one gradient per trial.

    Returns:
        The accepted :class:`Step`, or None when ``alpha`` fell below ``min_step``.

    Raises:
        ValueError: ``objective`` is unknown, or ``beta`` is not in (0, 1).
    """
    if objective not in ("loss", "grad_norm2"):
        raise ValueError(f"objective must be 'loss' or 'grad_norm2', got {objective!r}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    alpha = step0
    while alpha >= min_step:
        trial = theta + alpha * direction
        f, g = evaluations.grad(trial)
        value = f if objective == "loss" else float(g @ g)
        if finite(f, value) and value <= current + rho * alpha * slope:
            return Step(alpha, trial, f, g)
        alpha *= beta
    return None
