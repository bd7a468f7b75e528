"""From a training endpoint to a certified critical point: converge, then certify.

:func:`converge` drives ``theta0`` [P] towards a critical point of ``loss_fn`` with well-kept
second-order methods: scipy's L-BFGS-B (Byrd, Lu, Nocedal and Zhu 1995) until ``||g||^2`` falls
below the target, and where it stops short (budget, or a failed line search), scipy's trust-region
Newton-CG (``trust-ncg``, Steihaug's truncated CG; Nocedal and Wright, Algorithm 7.2) or the
nearly exact ``trust-krylov`` (GLTR; Gould, Lucidi, Roma and Toint 1999) on exact Hessian-vector
products. Both are descent methods: they find minima, and saddles only where they stop at one.

:func:`certify` judges a point, whoever found it:

* **gradient**: ``||g||^2 < cutoff`` (absolute, float64, default 1e-10) and
  ``||g||^2 <= relative_cutoff ||g_0||^2`` (relative to the start, default 1e-10; skipped when no
  start is given);
* **curvature**: the exact index of :func:`surfacekit.curvature.index` (dense, or block Lanczos
  with its completion certificate) at the stated threshold (default ``-1e-5 max|lambda|``),
  ``lambda_min`` (the smallest counted eigenvalue, or the index's certificate when none is
  counted) and ``lambda_max`` (Lanczos);
* **classification**: ``minimum`` (index 0: no eigenvalue below the threshold; eigenvalues between
  it and 0 are not resolved), ``saddle`` (index k > 0), or ``not certified`` with a reason:
  ``diverged`` (a non-finite endpoint, or one that moved more than ``max_distance`` times
  ``max(1, ||theta_0||)``: e.g. cross-entropy on separable data without weight decay, whose loss
  falls towards 0 as the weights grow), ``non-smooth`` (the objective is not twice differentiable
  there, e.g. a ReLU pre-activation at 0: the gradient stalls on a kink; never certified),
  ``gradient-flat`` (``||H g|| / (||H||_2 ||g||) < flat_threshold``: g nearly in the kernel of H,
  Frye et al. 2021), ``budget`` (otherwise: the methods ran out of iterations) or ``index`` (the
  Lanczos count did not converge).

Why scipy and not the finders of this package: a descent method with a line search or trust
region is what reaches the minimum nearest an endpoint; the finders solve g = 0 and go to saddles as
readily. Measured on 64-25-10 tanh digits networks (weight decay 1e-3, float64, full batch):
L-BFGS-B reached ``||g||^2`` 1e-12 in about 530 iterations and 4e-19 in 650 from endpoints at 2e-3;
trust-ncg from the same endpoints 4e-19 in 65 iterations (1,066 HVPs); trust-krylov stopped at 3e-15
after 3,000 HVPs. scipy's BLAS threads are limited to torch's thread count while it runs: with
OpenBLAS's default threads on a shared 2-core machine the same L-BFGS run took 22 s instead of 4 s.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from surfacekit.curvature import (
    ConvergenceWarning, IndexResult, NotConvergedError, extreme_eigenvalues, hessian_operator, index,
)

from .classify import DEFAULT_FLAT_THRESHOLD, flatness_ratio
from .evaluate import LossFn, check_start, finite

NEWTON_METHODS = ("trust-ncg", "trust-krylov", "none")
CLASSES = ("minimum", "saddle", "not certified")
REASONS = ("diverged", "non-smooth", "gradient-flat", "budget", "index")
Evaluate = Callable[[np.ndarray], "tuple[float, np.ndarray]"]  # x [P] -> (loss, gradient [P])
DEFAULT_CUTOFF = 1e-10
DEFAULT_RELATIVE_CUTOFF = 1e-10


@dataclass
class Convergence:
    """A :func:`converge` run. theta [P]: the endpoint (the evaluated point of smallest ``||g||^2``
    whose loss did not exceed the start's); start_loss, loss; start_grad_norm2, grad_norm2
    (``||g||^2``, gradient units squared); distance: ``||theta - theta_0||``; lbfgs_iterations,
    newton_iterations; num_grads (gradient evaluations), num_hvps; stop: how each phase ended,
    e.g. ``"lbfgs:target"`` or ``"lbfgs:stalled newton:budget"`` (target | budget | stalled |
    nonfinite); target: the ``||g||^2`` aimed at; history: ``||g||^2`` at every evaluation."""

    theta: Tensor
    start_loss: float
    loss: float
    start_grad_norm2: float
    grad_norm2: float
    distance: float
    lbfgs_iterations: int
    newton_iterations: int
    num_grads: int
    num_hvps: int
    stop: str
    target: float
    history: list[float] = field(default_factory=list)


@dataclass
class Certificate:
    """What :func:`certify` found at ``theta``.

    certified: gradient and curvature certified; classification: minimum | saddle | not certified;
    reason: "" or one of :data:`REASONS`; loss, grad_norm2, grad_norm2_relative (nan without a
    start); cutoff, relative_cutoff: the criteria; index: the :class:`~surfacekit.curvature.IndexResult`
    (None where the gradient failed or the count did not converge); index_count (-1 when not
    computed), index_fraction, index_threshold (absolute, eigenvalue units), lambda_min, lambda_max
    (eigenvalue units; nan when not computed); flat_ratio, spectral_norm (computed where the
    gradient test failed); smooth: as given; num_hvps: products spent on the index and lambda_max.
    """

    certified: bool
    classification: str
    reason: str
    loss: float
    grad_norm2: float
    grad_norm2_relative: float
    cutoff: float
    relative_cutoff: float
    index: IndexResult | None
    index_count: int
    index_fraction: float
    index_threshold: float
    lambda_min: float
    lambda_max: float
    flat_ratio: float
    spectral_norm: float
    smooth: bool
    num_hvps: int


class _Tracker:
    """Counted loss-and-gradient evaluations for scipy (numpy in, numpy out), remembering the point of
    smallest ``||g||^2`` whose loss is finite and at most the start's, and Hessian products at the
    last gradient point (its graph kept for the products scipy asks for there)."""

    def __init__(self, loss_fn: LossFn, like: Tensor, evaluate: Evaluate | None = None):
        self.loss_fn, self.like = loss_fn, like
        self.evaluate = evaluate or self._evaluate
        self.num_grads = self.num_hvps = 0
        self.history: list[float] = []
        self.best: tuple[float, float, np.ndarray] | None = None  # (||g||^2, f, x)
        self.start_loss = math.inf
        self._op_key: bytes | None = None
        self._op = None

    def _evaluate(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(x).to(self.like.device).requires_grad_(True)
        with torch.enable_grad():
            value = self.loss_fn(t)
            (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.detach().cpu().numpy()

    def fun(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = self.evaluate(x)
        self.num_grads += 1
        g2 = float(g @ g)
        self.history.append(g2)
        if not finite(f, g2):
            return math.inf, np.zeros_like(g)  # scipy's line searches back off from an infinite value
        if self.num_grads == 1:
            self.start_loss = f
        if f <= self.start_loss and (self.best is None or g2 < self.best[0]):
            self.best = (g2, f, x.copy())
        return f, g

    def hessp(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        key = x.tobytes()
        if key != self._op_key:
            self._op = None  # free the previous graph first
            self._op = hessian_operator(self.loss_fn, torch.from_numpy(x).to(self.like.device))
            self._op_key = key
        self.num_hvps += 1
        return self._op(torch.from_numpy(p).to(self.like.device)).cpu().numpy()


def converge(loss_fn: LossFn, theta0: Tensor, *, tol: float = 1e-12, rtol: float = 1e-12, max_iter: int = 5000,
             memory: int = 10, newton: Literal["trust-ncg", "trust-krylov", "none"] = "trust-ncg",
             newton_max_iter: int = 200) -> Convergence:
    """Drive ``theta0`` [P] towards a critical point: L-BFGS-B, then a trust-region Newton method if
    ``||g||^2`` is still above ``target = min(tol, rtol ||g_0||^2)``.

    Args:
        loss_fn: ``loss_fn(theta) -> scalar``, float64.
        theta0: the start [P] (upcast to float64 with a warning).
        tol, rtol: the ``||g||^2`` target, absolute and relative to the start.
        max_iter: L-BFGS-B iterations (at most 2 max_iter evaluations); memory: its correction pairs.
        newton: ``"trust-ncg"``, ``"trust-krylov"`` (scipy.optimize.minimize, exact Hessian-vector
            products) or ``"none"``; newton_max_iter: its iterations.

    Cost: about 1.1 gradients per L-BFGS-B iteration; per Newton iteration one gradient and the
    products of its inner CG or Lanczos solve.

    Raises:
        ValueError: ``theta0`` not a 1-D floating tensor, or an unknown ``newton`` method.
    """
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        return _converge(loss_fn, theta0, tol=tol, rtol=rtol, max_iter=max_iter, memory=memory, newton=newton,
                         newton_max_iter=newton_max_iter)


def _converge(loss_fn: LossFn, theta0: Tensor, *, tol: float = 1e-12, rtol: float = 1e-12, max_iter: int = 5000,
              memory: int = 10, newton: str = "trust-ncg", newton_max_iter: int = 200,
              evaluate: Evaluate | None = None) -> Convergence:
    """:func:`converge` without the BLAS thread limit (the caller sets it once: threadpoolctl's limits are
    process-wide, so threads must not each set and restore them); ``evaluate(x) -> (loss, gradient)``
    replaces ``loss_fn`` for the loss and gradient (:mod:`.lockstep`: a batched evaluation)."""
    if newton not in NEWTON_METHODS:
        raise ValueError(f"newton={newton!r} is invalid: expected one of {list(NEWTON_METHODS)}")
    start = check_start(theta0)
    x0 = start.cpu().numpy()
    track = _Tracker(loss_fn, start, evaluate)
    f0, g0 = track.fun(x0)
    g02 = track.history[0]
    target = min(tol, rtol * g02) if finite(g02) else tol
    stops: list[str] = []
    lbfgs_iterations = newton_iterations = 0
    if not finite(f0, g02):
        stops.append("lbfgs:nonfinite")
    elif g02 <= target:
        stops.append("lbfgs:target")
    else:
        result = _minimize(track, x0, "L-BFGS-B", target,
                           {"maxiter": int(max_iter), "maxfun": 2 * int(max_iter), "maxcor": int(memory),
                            "gtol": 0.0, "ftol": 0.0})
        lbfgs_iterations = int(result.nit)
        stops.append("lbfgs:" + _stop(track, target, result))
        if track.best[0] > target and newton != "none":
            x = track.best[2]
            result = _minimize(track, x, newton, target, {"maxiter": int(newton_max_iter),
                                                          "gtol": math.sqrt(target)}, hessp=True)
            newton_iterations = int(result.nit)
            stops.append("newton:" + _stop(track, target, result))
    if track.best is None:
        theta, f, g2 = start, f0, track.history[0]
    else:
        g2, f, x = track.best
        theta = torch.from_numpy(x).to(start.device)
    return Convergence(theta=theta, start_loss=f0, loss=f, start_grad_norm2=g02, grad_norm2=g2,
                       distance=float((theta - start).norm()), lbfgs_iterations=lbfgs_iterations,
                       newton_iterations=newton_iterations, num_grads=track.num_grads, num_hvps=track.num_hvps,
                       stop=" ".join(stops), target=target, history=track.history)


def _minimize(track: _Tracker, x: np.ndarray, method: str, target: float, options: dict, hessp: bool = False):
    def reached(intermediate_result=None) -> None:
        if track.best is not None and track.best[0] <= target:
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns when the trust region hits its floor
        return scipy.optimize.minimize(track.fun, x, jac=True, method=method, callback=reached,
                                       hessp=track.hessp if hessp else None, options=options)


def _stop(track: _Tracker, target: float, result) -> str:
    if track.best is not None and track.best[0] <= target:
        return "target"
    if not np.isfinite(result.fun):
        return "nonfinite"
    text = str(result.message).lower()
    return "budget" if ("maximum" in text or "limit" in text or "exceeded" in text) else "stalled"


def certify(loss_fn: LossFn, theta: Tensor, *, start_grad_norm2: float | None = None, distance: float = 0.0,
            start_norm: float = 0.0, cutoff: float = DEFAULT_CUTOFF,
            relative_cutoff: float | None = DEFAULT_RELATIVE_CUTOFF, max_distance: float = math.inf,
            smooth: bool = True, flat_threshold: float = DEFAULT_FLAT_THRESHOLD,
            index_options: dict[str, Any] | None = None, eigen_tol: float = 1e-8) -> Certificate:
    """Certify ``theta`` [P] as a critical point of ``loss_fn`` and classify it (module docstring):
    :func:`screen`, then, where the gradient passes, the index of :func:`surfacekit.curvature.index`
    and ``lambda_max`` (block Lanczos) judged by :func:`classify_curvature`.

    Args:
        start_grad_norm2: ``||g_0||^2`` at the start it was reached from (None: no relative test).
        distance, start_norm: ``||theta - theta_0||`` and ``||theta_0||``; diverged when
            ``distance > max_distance * max(1, start_norm)``.
        cutoff, relative_cutoff: the gradient tests (relative_cutoff None: absolute only).
        smooth: False where the objective is not twice differentiable near theta (a ReLU
            pre-activation at 0): then the point is never certified ("non-smooth").
        flat_threshold: the gradient-flat cutoff of :func:`~surfacekit.critical.flatness_ratio`.
        index_options: keyword arguments of :func:`surfacekit.curvature.index` (threshold,
            relative_threshold, method, dense_limit, tol, structure, ...).
        eigen_tol: relative residual tolerance of ``lambda_max`` (block Lanczos, no certificate).

    Cost: one gradient; where it passes, the index (dense: P products, fewer with an affine first
    layer's ``structure``; Lanczos: typically a few hundred) and ``lambda_max`` (tens); where it
    fails, the flatness ratio (two Lanczos runs and one product).

    Raises:
        ValueError: a cutoff <= 0, or invalid index options (see :func:`surfacekit.curvature.index`).
        NonFiniteError: a non-finite Hessian-vector product at a finite point.
    """
    refused, common = screen(loss_fn, theta, start_grad_norm2=start_grad_norm2, distance=distance,
                             start_norm=start_norm, cutoff=cutoff, relative_cutoff=relative_cutoff,
                             max_distance=max_distance, smooth=smooth, flat_threshold=flat_threshold)
    if refused is not None:
        return refused
    return curvature_certificate(loss_fn, theta, common, index_options, eigen_tol)


def curvature_certificate(loss_fn: LossFn, theta: Tensor, common: dict, index_options: dict[str, Any] | None = None,
                          eigen_tol: float = 1e-8) -> Certificate:
    """The second-order half of :func:`certify` for a point that passed :func:`screen` (``common``: what
    it returned): the index (:func:`surfacekit.curvature.index` with ``index_options``), ``lambda_max``
    (and ``lambda_min`` after an inertia count) by block Lanczos, judged by :func:`classify_curvature`;
    "not certified" with reason ``index`` where the Lanczos count did not converge."""
    point = check_start(theta)
    try:
        idx = index(loss_fn, point, **(index_options or {}))
    except NotConvergedError:
        return _refusal(common, "index")
    ends = ["largest"] + (["smallest"] if idx.method == "inertia" and idx.count > 0 else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        found = [extreme_eigenvalues(loss_fn, point, 1, which, tol=eigen_tol, on_fail="warn", certify=False)
                 for which in ends]
    lam_min = float(found[1].eigenvalues[0]) if len(found) > 1 else None  # the inertia path keeps no smallest one
    return classify_curvature(common, idx, float(found[0].eigenvalues[0]), lam_min, sum(e.num_hvps for e in found))


def screen(loss_fn: LossFn, theta: Tensor, *, start_grad_norm2: float | None = None, distance: float = 0.0,
           start_norm: float = 0.0, cutoff: float = DEFAULT_CUTOFF,
           relative_cutoff: float | None = DEFAULT_RELATIVE_CUTOFF, max_distance: float = math.inf,
           smooth: bool = True, flat_threshold: float = DEFAULT_FLAT_THRESHOLD) -> tuple[Certificate | None, dict]:
    """The first-order half of :func:`certify` (same arguments): the refusal (a :class:`Certificate`,
    not certified, with its reason: diverged, non-smooth, gradient-flat or budget), or None where the
    point passes the gradient tests and its curvature decides (:func:`classify_curvature`); and the
    fields every certificate of this point shares (loss, ``||g||^2``, the criteria, smooth).

    Cost: one gradient, and where the gradient fails, the flatness ratio. Batched certification
    (``task=certify``) screens each point, then computes the curvature of all that passed at once.

    Raises:
        ValueError: a cutoff <= 0.
    """
    if not cutoff > 0 or (relative_cutoff is not None and not relative_cutoff > 0):
        raise ValueError(f"cutoff={cutoff} and relative_cutoff={relative_cutoff} must be > 0")
    point = check_start(theta)
    t = point.clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss_fn(t)
        (grad,) = torch.autograd.grad(value, t)
    f, g2 = float(value.detach()), float(grad.detach() @ grad.detach())
    relative = g2 / start_grad_norm2 if start_grad_norm2 else math.nan
    common = dict(loss=f, grad_norm2=g2, grad_norm2_relative=relative, cutoff=cutoff,
                  relative_cutoff=math.nan if relative_cutoff is None else relative_cutoff, smooth=smooth)
    if not finite(f, g2) or distance > max_distance * max(1.0, start_norm):
        return _refusal(common, "diverged"), common
    gradient_ok = g2 < cutoff and (relative_cutoff is None or start_grad_norm2 is None
                                   or g2 <= relative_cutoff * start_grad_norm2)
    if not smooth:
        return _refusal(common, "non-smooth"), common
    if not gradient_ok:
        flat, norm = flatness_ratio(loss_fn, point, grad.detach())
        return _refusal(common, "gradient-flat" if flat < flat_threshold else "budget", flat, norm), common
    return None, common


def classify_curvature(common: dict, idx: IndexResult, lambda_max: float, lambda_min: float | None = None,
                       extra_hvps: int = 0) -> Certificate:
    """The certificate of a point that passed :func:`screen` (``common``: its shared fields), from its
    index ``idx`` and largest eigenvalue ``lambda_max``: ``minimum`` (index 0, a complete count) or
    ``saddle``. ``lambda_min`` None: the smallest counted eigenvalue (the dense and Lanczos paths
    return every counted one; the inertia path does not, so pass it), or the index's certificate
    (the first eigenvalue not counted) when none is counted. ``extra_hvps``: products spent on the
    extreme eigenvalues, added to the index's."""
    if lambda_min is None:
        lambda_min = float(idx.eigenvalues[0]) if idx.count > 0 and idx.eigenvalues is not None \
            and len(idx.eigenvalues) else float(idx.certificate)
    lam_min = float(lambda_min)
    klass = "minimum" if idx.count == 0 and not idx.at_least else "saddle"
    return Certificate(True, klass, "", index=idx, index_count=idx.count, index_fraction=idx.fraction,
                       index_threshold=idx.threshold, lambda_min=lam_min, lambda_max=float(lambda_max),
                       flat_ratio=math.nan, spectral_norm=max(abs(lam_min), abs(float(lambda_max))),
                       num_hvps=idx.num_hvps + extra_hvps, **common)


def _refusal(common: dict, reason: str, flat: float = math.nan, norm: float = math.nan) -> Certificate:
    nan = math.nan
    return Certificate(False, "not certified", reason, index=None, index_count=-1, index_fraction=nan,
                       index_threshold=nan, lambda_min=nan, lambda_max=nan, flat_ratio=flat, spectral_norm=norm,
                       num_hvps=0, **common)
