"""Critical-point finders on any ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P].

Five finders, all counted in gradients and Hessian-vector products (HVPs, from
:mod:`surfacekit.curvature`):

* ``"newton_mr"``: MINRES on ``H d = -g`` (rtol 1e-10, at most 2P iterations by default), then a
  backtracking (Armijo) line search on ``||g||^2``. Converges to critical points of any index.
* ``"gradnorm"``: minimizes ``0.5 ||g||^2`` (its gradient is ``H g``, one HVP) by L-BFGS or
  gradient descent, both with Armijo backtracking. Known to stall at gradient-flat points.
* ``"newton"``: damped Newton in a Lanczos Krylov subspace started at ``g``
  (``d = -V Lambda^+ V^T g``), line search on ``||g||^2``. Converges to saddles as readily as minima.
* ``"saddle_free"``: saddle-free Newton (Dauphin et al. 2014): the same subspace, but
  ``d = -V (|Lambda| + damping)^{-1} V^T g`` with a line search on ``f``, so ``f`` decreases
  monotonically and saddles repel.
* ``"levenberg_marquardt"``: Levenberg-Marquardt on ``g = 0``: ``d = -(H^2 + mu I)^{-1} H g`` by
  LSQR over HVPs, ``mu`` adapted by actual over predicted decrease of ``||g||^2``. A damped
  Newton-MR: converges to critical points of any index, with a safeguard where H is near-singular.

Every endpoint is kept and classified by :func:`classify_endpoint`: a critical point only if
``||g||^2 < cutoff`` (default 1e-10); a rejected endpoint is *gradient-flat* when its flatness
ratio ``||H g|| / (||H||_2 ||g||)`` is below ``flat_threshold`` (default 0.05), else "rejected".
The index is always the exact count of :func:`surfacekit.curvature.index` with its threshold.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, minres
from torch import Tensor

from surfacekit.curvature import (
    ConvergenceWarning,
    IndexResult,
    extreme_eigenvalues,
    hessian_operator,
    index,
    lanczos,
)

LossFn = Callable[[Tensor], Tensor]
METHODS = ("newton_mr", "gradnorm", "newton", "saddle_free", "levenberg_marquardt")
DEFAULT_CUTOFF = 1e-10
DEFAULT_FLAT_THRESHOLD = 0.05
STATUSES = ("critical", "gradient_flat", "rejected")


@dataclass
class FinderRun:
    """What a finder returns before classification: endpoint [P], per-iteration history, costs.

    history: ``||g||^2`` at the start and after every accepted iteration; losses: ``f`` at the
    same points; stop: why it stopped ("tolerance", "max_iter", "line_search", "nonfinite");
    solve_residuals: for Newton-MR, the relative residual ``||H d + g|| / ||g||`` of every inner
    MINRES solve (empty for the other finders).
    """

    theta: Tensor
    iterations: int
    num_hvps: int
    num_grads: int
    history: list[float]
    losses: list[float]
    stop: str
    solve_residuals: list[float] = field(default_factory=list)


@dataclass
class CriticalPoint:
    """A classified finder endpoint.

    theta [P]: endpoint; loss / start_loss: f at the end and the start; grad_norm2 /
    start_grad_norm2: ``||g||^2`` there; grad_norm2_relative: their ratio; iterations, num_hvps,
    num_grads: the finder's cost (endpoint analysis not included); accepted: ``grad_norm2 < cutoff``;
    flat_ratio: ``||H g|| / (||H||_2 ||g||)`` (nan where g or H is exactly 0); spectral_norm:
    ``||H||_2`` from extreme_eigenvalues; gradient_flat: rejected and flat_ratio < flat_threshold;
    status: "critical", "gradient_flat" or "rejected"; index: the exact index (None if not asked);
    history / losses: ``||g||^2`` and f along the run; stop: why the finder stopped;
    solve_residuals: Newton-MR's relative MINRES residual per iteration (empty for other finders).
    """

    theta: Tensor
    method: str
    loss: float
    start_loss: float
    grad_norm2: float
    start_grad_norm2: float
    grad_norm2_relative: float
    iterations: int
    num_hvps: int
    num_grads: int
    accepted: bool
    flat_ratio: float
    spectral_norm: float
    gradient_flat: bool
    status: str
    cutoff: float
    flat_threshold: float
    index: IndexResult | None
    stop: str
    history: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    solve_residuals: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- building blocks

def value_and_grad(loss_fn: LossFn, theta: Tensor) -> tuple[float, Tensor]:
    """``(f(theta), grad f(theta) [P])``, detached, in theta's dtype."""
    t = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(t)
        (grad,) = torch.autograd.grad(loss, t, allow_unused=True)
    grad = torch.zeros_like(t) if grad is None else grad
    return float(loss.detach()), grad.detach()


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_inputs(theta0: Tensor) -> Tensor:
    if not isinstance(theta0, Tensor) or theta0.ndim != 1 or not theta0.is_floating_point():
        raise ValueError("theta0 must be a 1-D floating-point tensor [P]")
    if theta0.dtype != torch.float64:
        warnings.warn("critical-point finders expect float64 theta; the cutoff 1e-10 on ||g||^2 "
                      "is not reachable in float32", UserWarning, stacklevel=3)
    return theta0.detach().clone()


class _Counter:
    """Counts gradients and HVPs across the operators a finder builds."""

    def __init__(self, loss_fn: LossFn):
        self.loss_fn = loss_fn
        self.grads = 0
        self.hvps = 0

    def grad(self, theta: Tensor) -> tuple[float, Tensor]:
        self.grads += 1
        return value_and_grad(self.loss_fn, theta)

    def operator(self, theta: Tensor):
        op = hessian_operator(self.loss_fn, theta)
        counter = self

        def apply(v: Tensor) -> Tensor:
            before = op.num_hvps
            out = op(v)
            counter.hvps += op.num_hvps - before
            return out

        return apply


def _backtrack(counter: _Counter, theta: Tensor, d: Tensor, objective: str, current: float,
               slope: float, step0: float, rho: float, beta: float, min_step: float):
    """Armijo backtracking along ``d`` on ``f`` (objective "loss") or ``||g||^2`` ("gradnorm2").

    Accepts the first ``alpha = step0 * beta^j`` with ``obj(theta + alpha d) <= current + rho alpha slope``.
    Returns (alpha, new theta, new loss, new grad) or None when alpha fell below ``min_step``.
    """
    alpha = step0
    while alpha >= min_step:
        trial = theta + alpha * d
        f, g = counter.grad(trial)
        value = f if objective == "loss" else float(g @ g)
        if _finite(f, value) and value <= current + rho * alpha * slope:
            return alpha, trial, f, g
        alpha *= beta
    return None


_Step = Callable[[Tensor, float, Tensor, float], tuple[Tensor, float, Tensor] | None]


def _iterate(counter: _Counter, theta: Tensor, f: float, g: Tensor, max_iter: int, tol: float,
             step: _Step, residuals: list[float] | None = None) -> FinderRun:
    """Outer loop shared by the finders, from ``f``, ``g`` [P] already evaluated at ``theta``.

    Until ``||g||^2 <= tol`` or ``max_iter`` steps, ``step(theta, f, g, ||g||^2)`` returns the next
    ``(theta, f, g)``, or None when it found no acceptable point (stop "line_search").
    ``residuals`` (filled by ``step``) becomes ``solve_residuals``.
    """
    gn2 = float(g @ g)
    history, losses = [gn2], [f]
    for _ in range(max_iter):
        if gn2 <= tol:
            stop = "tolerance"
            break
        proposal = step(theta, f, g, gn2)
        if proposal is None:
            stop = "line_search"
            break
        theta, f, g = proposal
        gn2 = float(g @ g)
        history.append(gn2)
        losses.append(f)
    else:
        stop = "tolerance" if gn2 <= tol else "max_iter"
    return FinderRun(theta, len(history) - 1, counter.hvps, counter.grads, history, losses, stop,
                     [] if residuals is None else residuals)


# ----------------------------------------------------------------------------- finders

def newton_mr(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
              minres_rtol: float = 1e-10, minres_maxiter: int | None = None, step0: float = 1.0,
              rho: float = 1e-4, beta: float = 0.5, min_step: float = 1e-10) -> FinderRun:
    """Newton-MR: ``d`` = MINRES solution of ``H d = -g``, Armijo backtracking on ``||g||^2``.

    ``minres_maxiter`` caps the inner MINRES iterations (HVPs) per Newton step; None (default)
    means 2P. In exact arithmetic MINRES terminates within P steps, but in floating point it
    loses orthogonality: near a minimum of a P = 71 tanh net (condition number ~3e3) P steps left
    relative residuals of 1e-4 to 2e-3, 2P steps 1e-8 (and stopped early on rtol). Frye et al.
    (2021) capped it at 25: on that net the residuals were 0.2 to 0.9 after the first steps, so
    the step is barely a Newton step and convergence near a minimum is linear, not quadratic. ``minres_rtol`` is scipy's
    stopping test, which is relative to ``||H|| ||d|| + ||g||`` rather than ``||g||``; the true
    relative residual ``||H d + g|| / ||g||`` of every solve is recorded in ``solve_residuals``
    (free: ``H d`` is needed for the slope anyway).

    The slope of ``||g||^2`` along ``d`` is ``2 g^T H d``. If MINRES returns a direction that does
    not decrease ``||g||^2`` the step falls back to ``-H g``. Stops when ``||g||^2 <= tol``, after
    ``max_iter`` iterations or when the line search fails. Frye et al. used ``step0=0.1``; the
    default 1 takes full Newton steps when they pass the Armijo test.
    """
    theta = _check_inputs(theta0)
    p = theta.numel()
    maxiter = 2 * p if minres_maxiter is None else int(minres_maxiter)
    if maxiter < 1:
        raise ValueError(f"minres_maxiter must be >= 1 or None, got {minres_maxiter}")
    counter = _Counter(loss_fn)
    residuals: list[float] = []

    def step(theta: Tensor, f: float, g: Tensor, gn2: float) -> tuple[Tensor, float, Tensor] | None:
        hess = counter.operator(theta)
        as_np = lambda v: hess(torch.from_numpy(np.ascontiguousarray(v)).to(theta)).cpu().numpy()  # noqa: E731
        op = LinearOperator((p, p), matvec=as_np, dtype=np.float64)
        d_np, _ = minres(op, -g.cpu().numpy(), rtol=minres_rtol, maxiter=maxiter)
        d = torch.from_numpy(np.asarray(d_np)).to(theta)
        hd = hess(d)
        residuals.append(float((hd + g).norm()) / gn2 ** 0.5)
        slope = 2.0 * float(g @ hd)
        if not (math.isfinite(slope) and slope < 0):
            hg = hess(g)
            d, slope = -hg, -2.0 * float(hg @ hg)
        found = _backtrack(counter, theta, d, "gradnorm2", gn2, slope, step0, rho, beta, min_step)
        return None if found is None else found[1:]

    f, g = counter.grad(theta)
    return _iterate(counter, theta, f, g, max_iter, tol, step, residuals)


def gradnorm(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
             optimizer: str = "lbfgs", memory: int = 10, step0: float = 1.0, rho: float = 1e-4,
             beta: float = 0.5, min_step: float = 1e-12) -> FinderRun:
    """Minimize ``phi = 0.5 ||g||^2`` (gradient ``H g``, one HVP per accepted point).

    ``optimizer="lbfgs"``: L-BFGS two-loop recursion with ``memory`` pairs, trying ``alpha = 1``
    (``step0`` on the first iteration, which has no curvature scale yet); ``"gd"``: gradient
    descent whose step starts at ``step0`` and doubles after every accepted step. Both backtrack
    (Armijo, ``rho``, ``beta``) on ``phi``. Every trial point costs one gradient.
    """
    if optimizer not in ("lbfgs", "gd"):
        raise ValueError(f"gradnorm optimizer={optimizer!r}; use 'lbfgs' or 'gd'")
    theta = _check_inputs(theta0)
    counter = _Counter(loss_fn)
    f, g = counter.grad(theta)
    grad_phi = counter.operator(theta)(g)
    s_list: list[Tensor] = []
    y_list: list[Tensor] = []
    alpha_gd = step0

    def step(theta: Tensor, f: float, g: Tensor, gn2: float) -> tuple[Tensor, float, Tensor] | None:
        nonlocal grad_phi, alpha_gd
        if optimizer == "lbfgs":
            d = -_two_loop(grad_phi, s_list, y_list)
            first = step0 if not s_list else 1.0
        else:
            d, first = -grad_phi, alpha_gd
        slope = float(grad_phi @ d)
        if not slope < 0:  # not a descent direction (bad curvature pairs): restart from -grad
            s_list.clear()
            y_list.clear()
            d, slope = -grad_phi, -float(grad_phi @ grad_phi)
        found = _backtrack(counter, theta, d, "gradnorm2", gn2, 2 * slope, first, rho, beta, min_step)
        if found is None:
            return None
        alpha, new_theta, f, g = found
        new_grad_phi = counter.operator(new_theta)(g)
        s, y = new_theta - theta, new_grad_phi - grad_phi
        if float(s @ y) > 1e-12 * float(s @ s) ** 0.5 * float(y @ y) ** 0.5:
            s_list.append(s)
            y_list.append(y)
            if len(s_list) > memory:
                s_list.pop(0)
                y_list.pop(0)
        grad_phi, alpha_gd = new_grad_phi, min(2.0 * alpha, 1e6)
        return new_theta, f, g

    return _iterate(counter, theta, f, g, max_iter, tol, step)


def _two_loop(grad: Tensor, s_list: list[Tensor], y_list: list[Tensor]) -> Tensor:
    """L-BFGS inverse-Hessian approximation applied to ``grad``."""
    q = grad.clone()
    coefs = []
    for s, y in zip(reversed(s_list), reversed(y_list)):
        r = 1.0 / float(y @ s)
        a = r * float(s @ q)
        q -= a * y
        coefs.append((r, a))
    if s_list:
        q *= float(s_list[-1] @ y_list[-1]) / float(y_list[-1] @ y_list[-1])
    for (s, y), (r, a) in zip(zip(s_list, y_list), reversed(coefs)):
        q += (a - r * float(y @ q)) * s
    return q


def krylov_eigen(hess: Callable[[Tensor], Tensor], g: Tensor, krylov_dim: int) -> tuple[Tensor, Tensor]:
    """Ritz pairs of H in the Krylov subspace ``span{g, Hg, ..., H^{k-1} g}`` (curvature.lanczos).

    Returns eigenvalues [m] and unit Ritz vectors [m, P] (m <= krylov_dim; fewer when the subspace
    is invariant). ``g`` lies in the subspace, so ``V^T V g = g``.
    """
    res = lanczos(hess, g, krylov_dim)
    off = res.beta[:-1]
    tri = torch.diag(res.alpha) + torch.diag(off, 1) + torch.diag(off, -1)
    lam, s = torch.linalg.eigh(tri)
    return lam, s.T @ res.basis


def _krylov_newton(loss_fn: LossFn, theta0: Tensor, saddle_free: bool, *, max_iter: int, tol: float,
                   krylov_dim: int, damping: float, rcond: float, step0: float, rho: float,
                   beta: float, min_step: float) -> FinderRun:
    theta = _check_inputs(theta0)
    counter = _Counter(loss_fn)

    def step(theta: Tensor, f: float, g: Tensor, gn2: float) -> tuple[Tensor, float, Tensor] | None:
        hess = counter.operator(theta)
        lam, vecs = krylov_eigen(hess, g, krylov_dim)
        coef = vecs @ g
        if saddle_free:
            d = -(vecs.T @ (coef / (lam.abs() + damping)))
            slope, objective, current = float(g @ d), "loss", f
        else:
            scale = float(lam.abs().max())
            keep = lam.abs() > rcond * scale
            inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
            d = -(vecs.T @ (coef * inv))
            slope, objective, current = 2.0 * float(g @ hess(d)), "gradnorm2", gn2
            if not (math.isfinite(slope) and slope < 0):
                hg = hess(g)
                d, slope = -hg, -2.0 * float(hg @ hg)
        found = _backtrack(counter, theta, d, objective, current, slope, step0, rho, beta, min_step)
        return None if found is None else found[1:]

    f, g = counter.grad(theta)
    return _iterate(counter, theta, f, g, max_iter, tol, step)


def newton(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
           krylov_dim: int = 20, rcond: float = 1e-8, step0: float = 1.0, rho: float = 1e-4,
           beta: float = 0.5, min_step: float = 1e-10) -> FinderRun:
    """Damped Newton in a ``krylov_dim``-dimensional Lanczos subspace from ``g``.

    ``d = -V Lambda^+ V^T g`` (Ritz values with ``|lambda| <= rcond max|lambda|`` dropped), then
    Armijo backtracking on ``||g||^2`` from ``step0``. Attracted to saddles as much as to minima.
    """
    return _krylov_newton(loss_fn, theta0, False, max_iter=max_iter, tol=tol, krylov_dim=krylov_dim,
                          damping=0.0, rcond=rcond, step0=step0, rho=rho, beta=beta, min_step=min_step)


def saddle_free(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 100, tol: float = 1e-20,
                krylov_dim: int = 20, damping: float = 1e-3, step0: float = 1.0, rho: float = 1e-4,
                beta: float = 0.5, min_step: float = 1e-10) -> FinderRun:
    """Saddle-free Newton (Dauphin et al. 2014) in a ``krylov_dim``-dimensional Lanczos subspace.

    ``d = -V (|Lambda| + damping)^{-1} V^T g``: negative-curvature directions are followed
    downhill rather than uphill. Armijo backtracking on ``f`` makes ``f`` decrease monotonically.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    return _krylov_newton(loss_fn, theta0, True, max_iter=max_iter, tol=tol, krylov_dim=krylov_dim,
                          damping=damping, rcond=0.0, step0=step0, rho=rho, beta=beta, min_step=min_step)


def levenberg_marquardt(loss_fn: LossFn, theta0: Tensor, *, max_iter: int = 200, tol: float = 1e-20,
                        mu0: float = 1e-2, mu_min: float = 1e-14, mu_max: float = 1e10,
                        lsqr_maxiter: int | None = None, lsqr_tol: float = 1e-12, accept: float = 1e-4,
                        shrink: float = 3.0, grow: float = 4.0, max_rejections: int = 40) -> FinderRun:
    """Levenberg-Marquardt on the nonlinear system ``g(theta) = 0`` (Jacobian H, symmetric).

    Each step minimizes the local model ``||g + H d||^2 + mu ||d||^2``, i.e.
    ``d = -(H^2 + mu I)^{-1} H g``, solved by scipy's LSQR with ``damp = sqrt(mu)`` over HVPs
    (two HVPs per LSQR iteration: ``H v`` and ``H^T u = H u``; at most ``lsqr_maxiter``
    iterations, default 2P). ``mu`` is relative to the curvature scale ``s^2`` with
    ``s = ||H g|| / ||g||`` at the start (so ``mu0`` is scale-free), and is adapted by the ratio
    ``r`` of the actual decrease of ``||g||^2`` to the model's predicted decrease
    ``||g||^2 - ||g + H d||^2``: the step is taken if ``r > accept``; then ``mu /= shrink`` when
    ``r > 0.75``, ``mu *= grow`` when ``r < 0.25``; a rejected step multiplies ``mu`` by ``grow``
    and retries from the same point (at most ``max_rejections`` in a row, then ``stop =
    "line_search"``). Large ``mu`` gives a short step along ``-H g`` (gradient descent on
    ``||g||^2``), small ``mu`` the minimum-norm Newton step ``-H^+ g``: the damping is the
    safeguard an undamped Newton step on ``g = 0`` lacks where H is nearly singular, and nothing
    in the step prefers minima over saddles. ``solve_residuals`` holds ``||H d + g|| / ||g||`` of
    every accepted step's solve (not 0 when ``mu > 0``, by design).
    """
    from scipy.sparse.linalg import lsqr

    theta = _check_inputs(theta0)
    p = theta.numel()
    maxiter = 2 * p if lsqr_maxiter is None else int(lsqr_maxiter)
    if maxiter < 1 or mu0 <= 0 or not (0 < accept < 0.25) or shrink <= 1 or grow <= 1:
        raise ValueError("levenberg_marquardt: need lsqr_maxiter >= 1, mu0 > 0, 0 < accept < 0.25, "
                         "shrink > 1 and grow > 1")
    counter = _Counter(loss_fn)
    residuals: list[float] = []
    scale2 = None
    mu = mu0

    def step(theta: Tensor, f: float, g: Tensor, gn2: float) -> tuple[Tensor, float, Tensor] | None:
        nonlocal scale2, mu
        hess = counter.operator(theta)
        if scale2 is None:
            hg = hess(g)
            scale2 = float(hg @ hg) / gn2 if float(hg @ hg) > 0 else 1.0
        as_np = lambda v: hess(torch.from_numpy(np.ascontiguousarray(v)).to(theta)).cpu().numpy()  # noqa: E731
        op = LinearOperator((p, p), matvec=as_np, rmatvec=as_np, dtype=np.float64)
        for _ in range(max_rejections):
            sol = lsqr(op, -g.cpu().numpy(), damp=math.sqrt(mu * scale2), atol=lsqr_tol, btol=lsqr_tol,
                       iter_lim=maxiter)
            d = torch.from_numpy(np.asarray(sol[0])).to(theta)
            hd = hess(d)
            model = float((g + hd) @ (g + hd))
            predicted = gn2 - model
            trial = theta + d
            f_new, g_new = counter.grad(trial)
            gn2_new = float(g_new @ g_new)
            ratio = (gn2 - gn2_new) / predicted if predicted > 0 else -1.0
            if _finite(f_new, gn2_new) and ratio > accept:
                residuals.append(model ** 0.5 / gn2 ** 0.5)
                if ratio > 0.75:
                    mu = max(mu / shrink, mu_min)
                elif ratio < 0.25:
                    mu = min(mu * grow, mu_max)
                return trial, f_new, g_new
            if mu >= mu_max:
                return None
            mu = min(mu * grow, mu_max)
        return None

    f, g = counter.grad(theta)
    return _iterate(counter, theta, f, g, max_iter, tol, step, residuals)


FINDERS: dict[str, Callable[..., FinderRun]] = {
    "newton_mr": newton_mr, "gradnorm": gradnorm, "newton": newton, "saddle_free": saddle_free,
    "levenberg_marquardt": levenberg_marquardt,
}


# ----------------------------------------------------------------------------- acceptance

def spectral_norm(loss_fn: LossFn, theta: Tensor, tol: float = 1e-6, max_steps: int = 1000) -> float:
    """``||H||_2 = max(|lambda_max|, |lambda_min|)`` by curvature.extreme_eigenvalues (warns if unconverged)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ends = [extreme_eigenvalues(loss_fn, theta, 1, w, tol=tol, max_steps=max_steps, on_fail="warn")
                for w in ("largest", "smallest")]
    if not all(e.converged for e in ends):
        warnings.warn(f"spectral norm: Lanczos not converged ({[float(e.residuals[0]) for e in ends]} "
                      "residuals); the flatness ratio uses the unconverged estimate", ConvergenceWarning, stacklevel=2)
    return max(abs(float(e.eigenvalues[0])) for e in ends)


def flatness_ratio(loss_fn: LossFn, theta: Tensor, grad: Tensor | None = None,
                   norm: float | None = None) -> tuple[float, float]:
    """``(||H g|| / (||H||_2 ||g||), ||H||_2)`` at ``theta``; the ratio is nan if g or H is 0.

    Near 0, g lies (nearly) in the kernel of H, so ``||g||^2`` is (nearly) stationary even though
    g is not zero: a gradient-flat point.
    """
    if grad is None:
        _, grad = value_and_grad(loss_fn, theta)
    norm = spectral_norm(loss_fn, theta) if norm is None else norm
    gnorm = float(grad.norm())
    if gnorm == 0 or norm == 0:
        return float("nan"), norm
    hg = hessian_operator(loss_fn, theta)(grad)
    return float(hg.norm()) / (norm * gnorm), norm


def classify(grad_norm2: float, flat_ratio: float, cutoff: float = DEFAULT_CUTOFF,
             flat_threshold: float = DEFAULT_FLAT_THRESHOLD) -> str:
    """"critical" if ``grad_norm2 < cutoff``; else "gradient_flat" if ``flat_ratio < flat_threshold``;
    else "rejected" (a nan ratio is never flat)."""
    if grad_norm2 < cutoff:
        return "critical"
    if flat_ratio < flat_threshold:  # False for nan
        return "gradient_flat"
    return "rejected"


def classify_endpoint(loss_fn: LossFn, run: FinderRun, method: str, *, cutoff: float = DEFAULT_CUTOFF,
                      flat_threshold: float = DEFAULT_FLAT_THRESHOLD, compute_index: bool = True,
                      index_options: dict[str, Any] | None = None) -> CriticalPoint:
    """Evaluate a finder's endpoint: ``||g||^2``, flatness ratio, acceptance, status and index."""
    theta = run.theta
    f, g = value_and_grad(loss_fn, theta)
    gn2 = float(g @ g)
    start = run.history[0]
    ratio, norm = flatness_ratio(loss_fn, theta, g) if _finite(f, gn2) else (float("nan"), float("nan"))
    status = classify(gn2, ratio, cutoff, flat_threshold) if _finite(f, gn2) else "rejected"
    idx = index(loss_fn, theta, **(index_options or {})) if compute_index and _finite(f, gn2) else None
    return CriticalPoint(
        theta=theta, method=method, loss=f, start_loss=run.losses[0], grad_norm2=gn2, start_grad_norm2=start,
        grad_norm2_relative=gn2 / start if start > 0 else float("nan"), iterations=run.iterations,
        num_hvps=run.num_hvps, num_grads=run.num_grads, accepted=status == "critical", flat_ratio=ratio,
        spectral_norm=norm, gradient_flat=status == "gradient_flat", status=status, cutoff=cutoff,
        flat_threshold=flat_threshold, index=idx, stop=run.stop, history=run.history, losses=run.losses,
        solve_residuals=run.solve_residuals,
    )


def find(loss_fn: LossFn, theta0: Tensor, method: str = "newton_mr", *, cutoff: float = DEFAULT_CUTOFF,
         flat_threshold: float = DEFAULT_FLAT_THRESHOLD, compute_index: bool = True,
         index_options: dict[str, Any] | None = None, **options: Any) -> CriticalPoint:
    """Run finder ``method`` from ``theta0`` [P] and classify its endpoint.

    ``options`` go to the finder (``max_iter``, ``tol``, ``step0``, ...; see :data:`FINDERS`).
    ``index_options`` go to :func:`surfacekit.curvature.index` (``threshold``,
    ``relative_threshold``, ``method``, ...). The endpoint is returned whether or not it is accepted.
    """
    if method not in FINDERS:
        raise ValueError(f"unknown finder {method!r}; choose one of {list(FINDERS)}")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    run = FINDERS[method](loss_fn, theta0, **options)
    return classify_endpoint(loss_fn, run, method, cutoff=cutoff, flat_threshold=flat_threshold,
                             compute_index=compute_index, index_options=index_options)


# ----------------------------------------------------------------------------- start points

def sample_uniform_in_loss(losses: np.ndarray, num: int, seed: int | None = 0) -> np.ndarray:
    """Indices [num] into a trajectory whose losses [T] are given, spread uniformly in loss.

    Draws ``num`` target losses uniformly on [min, max] of the finite losses and returns, for each,
    the trajectory point whose loss is nearest (so a fast early descent is not under-sampled the way
    uniform-in-time sampling would under-sample it). Points may repeat when T is small.
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
