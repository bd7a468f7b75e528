"""Gradient-norm minimization: minimize ``phi = ||g||^2 / 2``, whose gradient is ``H g`` (one HVP).

The finder of McIver and Komornicki (1972) and Pennington and Bahri (2017); Frye et al. (2021)
showed that it often stops at gradient-flat points (g nearly in the kernel of H, so ``phi`` is
stationary while g is not zero), which :mod:`surfacekit.critical.classify` labels. L-BFGS uses the
two-loop recursion (Nocedal and Wright, Algorithm 7.4); both variants backtrack (Armijo) on
``||g||^2``.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from torch import Tensor

from .evaluate import Evaluations, LossFn, check_start, finite
from .line_search import armijo
from .trace import FinderRun, Trace

Pair = tuple[Tensor, Tensor]


def two_loop(grad: Tensor, pairs: Sequence[Pair]) -> Tensor:
    """The L-BFGS inverse-Hessian approximation applied to ``grad`` [P] (Nocedal and Wright, Alg. 7.4).

    ``pairs``: curvature pairs ``(s_i, y_i)`` [P] each, oldest first, with ``s_i^T y_i > 0``.
    The initial matrix is ``gamma I`` with ``gamma = s^T y / y^T y`` of the newest pair (Eq. 7.20);
    with no pairs the result is ``grad`` itself. Equals the BFGS update of ``gamma I`` by the pairs
    in order, applied to ``grad``; cost ``4 m P`` flops for m pairs.
    """
    q = grad.clone()
    coefs = []
    for s, y in reversed(pairs):
        r = 1.0 / float(y @ s)
        a = r * float(s @ q)
        q -= a * y
        coefs.append((r, a))
    if pairs:
        s, y = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y), (r, a) in zip(pairs, reversed(coefs)):
        q += (a - r * float(y @ q)) * s
    return q


def gradnorm(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
             optimizer: str = "lbfgs", memory: int = 10, step0: float = 1.0, rho: float = 1e-4,
             beta: float = 0.5, min_step: float = 1e-12) -> FinderRun:
    """Minimize ``||g||^2 / 2`` from ``theta0`` [P] by L-BFGS (``optimizer="lbfgs"``) or gradient descent ("gd").

    Without curvature pairs (the first L-BFGS step, after a restart, and every "gd" step) the
    direction is ``-c H g`` with ``c = ||g||^2 / ||H g||^2``, the gradient scaled to the length of
    the curvature along it, so the step does not depend on the units of the loss; the line search
    starts at ``step0`` times it. L-BFGS keeps ``memory`` pairs (those with
    ``s^T y > 1e-12 ||s|| ||y||``) and tries the full quasi-Newton step; a non-descent direction
    clears the pairs. "gd" doubles its relative step after every accepted step (at most 1e6).
    Cost per accepted step: one HVP plus one gradient per line-search trial.

    Stops on ``||g||^2 <= tol ||g_0||^2``, ``max_iter``, a failed line search, ``H g = 0``
    ("stalled": phi is stationary, a gradient-flat point), or a non-finite start ("nonfinite", at
    once, like every finder).

    Raises:
        ValueError: unknown ``optimizer``, ``memory < 1``, or a bad ``theta0``.
    """
    if optimizer not in ("lbfgs", "gd"):
        raise ValueError(f"gradnorm optimizer={optimizer!r}; use 'lbfgs' or 'gd'")
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    theta = check_start(theta0)
    evaluations = Evaluations(loss_fn)
    f, g = evaluations.grad(theta)
    trace = Trace(f, g, theta)
    # No product at a non-finite start: trace.check stops it at once ("nonfinite"), like every finder.
    grad_phi = evaluations.hessian(theta)(g) if finite(f, trace.grad_norm2) else g
    pairs: deque[Pair] = deque(maxlen=memory)
    gd_step = step0
    while (stop := trace.check(max_iter, tol)) is None:
        gn2 = trace.grad_norm2
        hg2 = float(grad_phi @ grad_phi)
        if hg2 == 0:
            stop = "stalled"
            break
        scaled = -(gn2 / hg2) * grad_phi
        if optimizer == "lbfgs" and pairs:
            d, first = -two_loop(grad_phi, list(pairs)), 1.0
        else:
            d, first = scaled, (gd_step if optimizer == "gd" else step0)
        slope = float(grad_phi @ d)
        if not slope < 0:  # bad curvature pairs: restart from the scaled gradient
            pairs.clear()
            d, first, slope = scaled, step0, float(grad_phi @ scaled)
        step = armijo(evaluations, theta, d, objective="grad_norm2", current=gn2, slope=2.0 * slope, step0=first,
                      rho=rho, beta=beta, min_step=min_step)
        if step is None:
            stop = "line_search"
            break
        new_grad_phi = evaluations.hessian(step.theta)(step.grad)
        s, y = step.theta - theta, new_grad_phi - grad_phi
        if float(s @ y) > 1e-12 * float(s.norm()) * float(y.norm()):
            pairs.append((s, y))
        gd_step = min(2.0 * step.alpha, 1e6)
        trace.record(step.loss, step.grad, float(s.norm()))
        theta, g, grad_phi = step.theta, step.grad, new_grad_phi
    return trace.result(theta, evaluations, stop)
