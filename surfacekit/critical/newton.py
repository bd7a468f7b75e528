"""Damped Newton in a Lanczos Krylov subspace: the pseudo-inverse step over Ritz pairs.

The Newton finder of Dauphin et al. (2014) without the absolute value: in the subspace
``K_k(H, g)`` built by :func:`surfacekit.curvature.lanczos`, with Ritz pairs ``(lambda_i, v_i)``
from :func:`surfacekit.curvature.ritz`, the step is ``d = -sum_i (v_i^T g / lambda_i) v_i`` over
Ritz values with ``|lambda_i| > rcond max|lambda|``, then Armijo backtracking on ``||g||^2``. It
is attracted to saddles as much as to minima.
"""

from __future__ import annotations

import math

from torch import Tensor

from surfacekit.curvature import lanczos, ritz

from .evaluate import Evaluations, LossFn, check_start, finite
from .line_search import armijo
from .newton_mr import STALL
from .trace import FinderRun, Trace


def newton(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
           krylov_dim: int = 20, rcond: float = 1e-8, step0: float = 1.0, rho: float = 1e-4,
           beta: float = 0.5, min_step: float = 1e-10) -> FinderRun:
    """Krylov-subspace Newton from ``theta0`` [P]; ``krylov_dim`` Lanczos steps (HVPs) per iteration.

    When the subspace step does not decrease ``||g||^2`` (the subspace is not invariant, so the
    pseudo-inverse there need not be a descent direction for ``||g||^2``), the step falls back to
    ``-c H g`` with ``c = ||g||^2 / ||H g||^2`` (the gradient of ``||g||^2 / 2`` scaled by the
    curvature along it; one more HVP). Records ``solve_residuals`` ``||H d + g|| / ||g||`` of the
    subspace step. Stops like every finder on ``||g||^2 <= tol ||g_0||^2``, ``max_iter``, a
    failed line search, when the fallback is needed and ``||H g|| <= 1e-12 max|lambda| ||g||``
    ("stalled": ||g||^2 is stationary, g lies in the kernel of H), or after a step of at most
    1e-12 ``||theta||`` ("resolution").

    Raises:
        ValueError: ``krylov_dim < 1`` or a bad ``theta0``.
    """
    if krylov_dim < 1:
        raise ValueError(f"krylov_dim must be >= 1, got {krylov_dim}")
    theta = check_start(theta0)
    evaluations = Evaluations(loss_fn)
    f, g = evaluations.grad(theta)
    trace = Trace(f, g, theta)
    while (stop := trace.check(max_iter, tol)) is None:
        gn2 = trace.grad_norm2
        hessian = evaluations.hessian(theta)
        values, vectors, _ = ritz(lanczos(matvec=hessian, v0=g, num_steps=krylov_dim))
        keep = values.abs() > rcond * values.abs().max()
        d = -(vectors[keep].T @ ((vectors[keep] @ g) / values[keep]))
        hd = hessian(d)
        trace.solve_residuals.append(float((hd + g).norm()) / math.sqrt(gn2))
        slope = 2.0 * float(g @ hd)
        if not finite(slope):
            stop = "nonfinite"
            break
        if slope >= -STALL * gn2:
            hg = hessian(g)
            hg2 = float(hg @ hg)
            if hg2 <= (STALL * float(values.abs().max())) ** 2 * gn2:  # H g ~ 0: ||g||^2 is stationary
                stop = "stalled"
                break
            d, slope = -(gn2 / hg2) * hg, -2.0 * gn2
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
