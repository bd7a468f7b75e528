"""Newton-MR: Newton steps on ``g(theta) = 0`` with the minimum-length least-squares direction.

Roosta, Liu, Xu and Mahoney (2018, "Newton-MR: inexact Newton method with minimum residual
sub-problem solver"); used for critical points by Frye, Simon, Wadia, Ligeralde and DeWeese (2021,
"Critical point-finding methods reveal gradient-flat regions of deep network losses"). Each step
solves ``H d = -g`` in the least-squares sense with the minimum-length solution ``d = -H^+ g``
(:func:`~surfacekit.critical.minimum_length.minimum_length_solve`, equivalent to MINRES-QLP), then
backtracks (Armijo) on ``||g||^2`` along d. The minimum-length direction has no component in the
kernel of H, so at singular Hessians the step goes to the nearest point of the quadratic model
where ``||g||`` is least, instead of drifting along the kernel as plain MINRES does.
"""

from __future__ import annotations

import math

from torch import Tensor

from .evaluate import Evaluations, LossFn, check_start, finite
from .line_search import armijo
from .minimum_length import minimum_length_solve
from .trace import FinderRun, Trace

STALL = 1e-12  # a step predicting less than this relative decrease of ||g||^2 is no step


def newton_mr(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
              minres_rtol: float = 1e-10, minres_maxiter: int | None = None, rcond: float = 1e-10,
              step0: float = 1.0, rho: float = 1e-4, beta: float = 0.5, min_step: float = 1e-10) -> FinderRun:
    """Newton-MR from ``theta0`` [P] on any ``loss_fn``; converges to critical points of any index.

    Per step: the minimum-length solution of ``H d = -g`` (relative tolerance ``minres_rtol``, at
    most ``minres_maxiter`` HVPs, default ``min(P, 1000)``; singular values of the projected
    problem at or below ``rcond`` times the largest are the kernel), one HVP for ``H d`` (the slope
    ``2 g^T H d`` of ``||g||^2`` and the solve's true residual), then Armijo backtracking on
    ``||g||^2`` from ``step0`` (``rho``, ``beta``, down to ``min_step``). Frye et al. started the
    search at 0.1 and capped MINRES at 25 iterations; the defaults take full Newton steps and
    nearly exact solves, which converge quadratically near a nondegenerate critical point.

    Records per step ``solve_residuals`` (``||H d + g|| / ||g||``), ``kernel_components``
    (``||H d + g||``: g's component outside the range of H, which no step removes) and
    ``kernel_dims``. Stops on ``||g||^2 <= tol ||g_0||^2`` ("tolerance"), ``max_iter``, a failed
    line search ("line_search"), a step that predicts a relative decrease of ``||g||^2`` below
    1e-12 ("stalled": g lies in the kernel of H, a least-squares point of ``g = 0`` that is not
    critical), after a step whose Newton step was at most 1e-12 ``||theta||`` ("resolution": g is at
    its rounding floor) or on a non-finite product ("nonfinite"). Every test is relative, so the
    endpoint does not depend on the units of the loss.

    Raises:
        ValueError: ``theta0`` is not a 1-D floating-point tensor, or ``minres_maxiter < 1``.
    """
    theta = check_start(theta0)
    if minres_maxiter is not None and minres_maxiter < 1:
        raise ValueError(f"minres_maxiter must be >= 1 or None, got {minres_maxiter}")
    evaluations = Evaluations(loss_fn)
    f, g = evaluations.grad(theta)
    trace = Trace(f, g, theta)
    while (stop := trace.check(max_iter, tol)) is None:
        gn2 = trace.grad_norm2
        hessian = evaluations.hessian(theta)
        solve = minimum_length_solve(hessian, -g, rtol=minres_rtol, maxiter=minres_maxiter, rcond=rcond)
        if solve.reason == "nonfinite":
            stop = "nonfinite"
            break
        d = solve.solution
        hd = hessian(d)
        residual = float((hd + g).norm())
        trace.solve_residuals.append(residual / math.sqrt(gn2))
        trace.kernel_components.append(residual)
        trace.kernel_dims.append(solve.kernel_dim)
        slope = 2.0 * float(g @ hd)
        if not finite(slope):
            stop = "nonfinite"
            break
        if slope >= -STALL * gn2:
            stop = "stalled"
            break
        step = armijo(evaluations, theta, d, objective="grad_norm2", current=gn2, slope=slope, step0=step0,
                      rho=rho, beta=beta, min_step=min_step)
        if step is None:
            stop = "line_search"
            break
        trace.record(step.loss, step.grad, step.alpha * float(d.norm()))
        theta, g = step.theta, step.grad
        if trace.resolved(d, theta):
            stop = "resolution"
            break
    return trace.result(theta, evaluations, stop)
