"""Loss, gradient and Hessian evaluations of a finder run, counted.

Every finder works on ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P] and
reports its cost in gradients and Hessian-vector products (HVPs); :class:`Evaluations` does the
counting, so no finder keeps its own tally.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from surfacekit.curvature import HessianOperator, hessian_operator

LossFn = Callable[[Tensor], Tensor]


def value_and_grad(loss_fn: LossFn, theta: Tensor) -> tuple[float, Tensor]:
    """``(f(theta), grad f(theta) [P])``, detached, in theta's dtype; one forward and one backward pass."""
    t = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(t)
        (grad,) = torch.autograd.grad(loss, t, allow_unused=True)
    grad = torch.zeros_like(t) if grad is None else grad
    return float(loss.detach()), grad.detach()


def finite(*values: float) -> bool:
    """True if every value is a finite float."""
    return all(math.isfinite(v) for v in values)


def check_start(theta0: Tensor) -> Tensor:
    """A detached float64 copy of the start point [P].

    Raises:
        ValueError: ``theta0`` is not a 1-D floating-point tensor.

    Warns (UserWarning) when ``theta0`` is not float64 and upcasts it: the finders' tolerances sit
    far below float32 rounding, and ``surfacekit.curvature`` computes Hessian products in float64,
    so the loss must evaluate in float64 too (a float32 model or data is refused there).
    """
    if not isinstance(theta0, Tensor) or theta0.ndim != 1 or not theta0.is_floating_point():
        raise ValueError("theta0 must be a 1-D floating-point tensor [P]")
    if theta0.dtype != torch.float64:
        warnings.warn(f"critical-point finders run in float64; theta0 is {theta0.dtype} and is upcast (their "
                      "tolerances, a relative ||g||^2 of 1e-20 and acceptance at 1e-6 of the start's ||g||, are "
                      "below float32 rounding)", UserWarning, stacklevel=3)
    return theta0.detach().to(torch.float64, copy=True)


class Evaluations:
    """Gradients and Hessian operators of one ``loss_fn``, with the counts a finder reports.

    ``num_grads`` counts calls of :meth:`grad`; ``num_hvps`` counts Hessian-vector products of
    every operator made by :meth:`hessian` (an [m, P] block counts m). Only the newest operator is
    kept alive (its gradient graph is freed when the next one is built).
    """

    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn
        self.num_grads = 0
        self._hvps_done = 0
        self._current: HessianOperator | None = None

    def grad(self, theta: Tensor) -> tuple[float, Tensor]:
        """``(f, g [P])`` at ``theta``; counts one gradient."""
        self.num_grads += 1
        return value_and_grad(self.loss_fn, theta)

    def hessian(self, theta: Tensor) -> HessianOperator:
        """The Hessian at ``theta`` as a product-counting operator (``op(v)``, ``op.to_scipy()``)."""
        if self._current is not None:
            self._hvps_done += self._current.num_hvps
        self._current = hessian_operator(self.loss_fn, theta)
        return self._current

    @property
    def num_hvps(self) -> int:
        return self._hvps_done + (0 if self._current is None else self._current.num_hvps)
