"""Levenberg-Marquardt on the nonlinear system ``g(theta) = 0`` (Jacobian H, symmetric).

Levenberg (1944), Marquardt (1963); the damping update by the ratio of actual to predicted
decrease is that of a trust-region method (Nocedal and Wright, Section 10.3 and Algorithm 4.1).
Each step minimizes the local model ``||g + H d||^2 + mu s^2 ||d||^2``, i.e.
``d = -(H^2 + mu s^2 I)^{-1} H g``, solved by scipy's LSQR with ``damp = sqrt(mu)`` on
``HessianOperator.to_scipy() / s`` and the right side ``-g / ||g||`` (two HVPs per LSQR
iteration; normalized because LSQR's stopping tests contain absolute terms such as
``anorm * rnorm + eps``). A damped Newton-MR: large ``mu`` gives a short step along ``-H g``, small
``mu`` the minimum-length Newton step ``-H^+ g`` (LSQR started at 0 stays in the range of H), so
the damping is the safeguard an undamped Newton step on ``g = 0`` lacks where H is nearly
singular, and nothing in the step prefers minima over saddles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import lsqr
from torch import Tensor

from .evaluate import Evaluations, LossFn, check_start, finite
from .trace import FinderRun, Trace


def levenberg_marquardt(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 200, tol: float = 1e-20,
                        mu0: float = 1e-2, mu_min: float = 1e-14, mu_max: float = 1e10,
                        lsqr_maxiter: int | None = None, lsqr_tol: float = 1e-12, accept: float = 1e-4,
                        shrink: float = 3.0, grow: float = 4.0, max_rejections: int = 40) -> FinderRun:
    """Levenberg-Marquardt from ``theta0`` [P]; converges to critical points of any index.

    ``mu`` is relative to the curvature scale ``s^2`` with ``s = ||H g|| / ||g||`` at the start
    (one HVP), so ``mu0`` and the steps do not depend on the units of the loss. LSQR runs at most
    ``lsqr_maxiter`` iterations (default 2P) with ``atol = btol = lsqr_tol``. The ratio ``r`` of
    the actual decrease of ``||g||^2`` to the model's ``||g||^2 - ||g + H d||^2`` decides: the
    step is taken if ``r > accept``, then ``mu /= shrink`` when ``r > 0.75`` and ``mu *= grow``
    when ``r < 0.25``; a rejected step multiplies ``mu`` by ``grow`` and re-solves from the same
    point (at most ``max_rejections`` in a row, or until ``mu_max``: stop "line_search").
    ``solve_residuals`` holds ``||H d + g|| / ||g||`` of every accepted step (not 0 when
    ``mu > 0``, by design). Stops on ``||g||^2 <= tol ||g_0||^2``, ``max_iter`` or the rejections
    above; ``H g = 0`` at the start stops it at once ("stalled").

    Raises:
        ValueError: ``lsqr_maxiter < 1``, ``mu0 <= 0``, ``accept`` outside (0, 0.25), ``shrink`` or
            ``grow`` not above 1, or a bad ``theta0``.
    """
    theta = check_start(theta0)
    p = theta.numel()
    maxiter = 2 * p if lsqr_maxiter is None else int(lsqr_maxiter)
    if maxiter < 1 or mu0 <= 0 or not (0 < accept < 0.25) or shrink <= 1 or grow <= 1:
        raise ValueError("levenberg_marquardt: need lsqr_maxiter >= 1, mu0 > 0, 0 < accept < 0.25, "
                         "shrink > 1 and grow > 1")
    evaluations = Evaluations(loss_fn)
    f, g = evaluations.grad(theta)
    trace = Trace(f, g, theta)
    mu, scale2 = mu0, None
    while (stop := trace.check(max_iter, tol)) is None:
        gn2 = trace.grad_norm2
        hessian = evaluations.hessian(theta)
        if scale2 is None:
            hg = hessian(g)
            scale2 = float(hg @ hg) / gn2
            if scale2 == 0:
                stop = "stalled"
                break
        # LSQR on the normalized problem (H / s) x = -g / ||g|| with damp sqrt(mu), d = x ||g|| / s:
        # scipy's LSQR has absolute terms (anorm * rnorm + eps) that would make tiny losses stop early.
        operator, rhs = hessian.to_scipy() * (1.0 / math.sqrt(scale2)), -(g / math.sqrt(gn2)).cpu().numpy()
        taken = False
        for _ in range(max_rejections):
            x = lsqr(operator, rhs, damp=math.sqrt(mu), atol=lsqr_tol, btol=lsqr_tol, iter_lim=maxiter)[0]
            d = torch.from_numpy(np.asarray(x)).to(theta) * math.sqrt(gn2 / scale2)
            hd = hessian(d)
            model = float((g + hd) @ (g + hd))
            predicted = gn2 - model
            f_new, g_new = evaluations.grad(theta + d)
            gn2_new = float(g_new @ g_new)
            ratio = (gn2 - gn2_new) / predicted if predicted > 0 else -1.0
            if finite(f_new, gn2_new) and ratio > accept:
                trace.solve_residuals.append(math.sqrt(model / gn2))
                if ratio > 0.75:
                    mu = max(mu / shrink, mu_min)
                elif ratio < 0.25:
                    mu = min(mu * grow, mu_max)
                trace.record(f_new, g_new, float(d.norm()))
                theta, g, taken = theta + d, g_new, True
                break
            if mu >= mu_max:
                break
            mu = min(mu * grow, mu_max)
        if not taken:
            stop = "line_search"
            break
    return trace.result(theta, evaluations, stop)
