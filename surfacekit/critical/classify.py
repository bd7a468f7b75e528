"""The acceptance protocol: is a finder's endpoint a critical point, and if not, what is it?

**Acceptance (default, scale-free).** An endpoint ``theta`` reached from ``theta_0`` is accepted
as a critical point when

    ||g(theta)|| <= rtol * ||g(theta_0)|| + htol * ||H(theta)||_2,

a termination test of Kelley's form (``||F(x)|| <= tau_r ||F(x_0)|| + tau_a``; C. T. Kelley,
*Iterative Methods for Linear and Nonlinear Equations*, SIAM 1995, Section 5.2) with the absolute
part measured in the Hessian's scale. Both sides scale alike when the loss is multiplied by a
constant, so the decision does not depend on the units of the loss. Defaults: ``rtol = 1e-6``
(``||g||^2`` reduced by a factor 1e12 from the start: the absolute cutoff 1e-10 for a start with
``||g_0|| = 10``, typical of random starts of small networks; from a start with a far larger
gradient the relative part is loose, so start finders where the gradient is of the loss's typical
scale, or lower ``rtol``) and ``htol = 1e-10`` (a gradient that the largest curvature
turns into a Newton step of at most 1e-10 parameter units; far above the float64 rounding floor
``~ 2e-16 ||H|| ||theta||``, and it lets a start that is already critical be accepted). The
quantity ``acceptance_ratio`` is the left side over the right (accepted iff <= 1).

**Absolute (``criterion="absolute"``).** ``||g||^2 < cutoff`` (default 1e-10), Frye et al.
(2021)'s rule; it depends on the units of the loss (multiplying the loss by 1e-9 accepts points
0.05 from a minimum). Whichever criterion decides, ``accepted_absolute`` records the absolute one.

**Point test (scale-free criterion).** The start-relative part alone depends on the start: from
a start with ``||g_0|| = 5.7e6`` it accepted a point of ``f = |t|_4^4 + (t_1 - 3)^2 / 2`` with
``||g||^2 = 4.6`` that the same finder rejects from a start near it. So an accepted endpoint must
also pass a test of the point itself,

    step_ratio = ||g|| / (||H||_2 max(||theta||, 1)) <= stol   (default 1e-3):

the gradient is small against what the Hessian's scale produces over the point's own size (a
lower bound on the relative Newton step ``||H^+ g|| / ||theta||``; the relative step test of Dennis
and Schnabel, *Numerical Methods for Unconstrained Optimization and Nonlinear Equations*, 1983,
Section 7.2, with typical parameter size 1, the unit ``htol`` uses too). It does not change when
the loss is multiplied by a constant, and degenerate critical points pass it (at the monkey saddle,
where H = 0, ``step_ratio = r / 2`` at distance r from it).

**Classification.** Accepted endpoints are "critical", except "asymptotic" ones, which are never
accepted (under either criterion): an endpoint whose gradient passes the criterion's test, that
the finder moved outward, and whose Newton step ``n = ||H^+ g||`` is not small relative to it,

    ||theta|| - ||theta_0|| > stol max(||theta||, 1)   and   n > stol max(||theta||, 1).

There the gradient vanished because the finder ran off towards an infimum at infinity (``exp(t)``
as ``t -> -inf``: ``n = 1`` at every t; separable logistic regression as ``||w|| -> inf``;
cross-entropy networks without weight decay that interpolate): the curvature along the escape
direction vanished with the gradient, so the Newton model keeps predicting a critical point a
fixed distance further out (or further), however far the finder went. At a critical point n shrinks with the
distance to it (quadratically at a nondegenerate one, linearly at a degenerate one), and a point
whose g lies in the exact kernel of H (``n`` = 0 with the pseudo-inverse: f is linear along g there,
a nearly critical point when g is small) is not asymptotic. ``n`` is the minimum-length solution
of ``H d = g`` (:func:`~surfacekit.critical.minimum_length.minimum_length_solve`, singular values
below ``1e-14 ||H||`` treated as kernel so that a curvature that decayed with g still counts); it
is computed only where the other conditions hold (gradient test passed, ``||theta||`` grew). Otherwise a rejected endpoint is "gradient_flat" when its flatness ratio
``||H g|| / (||H||_2 ||g||)`` is below ``flat_threshold`` (default 0.05): g lies nearly in the
kernel of H, so ``||g||^2`` is (nearly) stationary though g is not zero (Frye et al.); otherwise
"rejected". Non-finite endpoints (a non-finite start included: every finder stops at once with
``stop="nonfinite"``, no exception) are "rejected". The index is the exact count of
:func:`surfacekit.curvature.index`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from surfacekit.curvature import ConvergenceWarning, IndexResult, extreme_eigenvalues, hessian_operator, index

from .evaluate import LossFn, finite, value_and_grad
from .minimum_length import minimum_length_solve
from .trace import FinderRun

Criterion = Literal["scale_free", "absolute"]
CRITERIA = ("scale_free", "absolute")
DEFAULT_RTOL = 1e-6
DEFAULT_HTOL = 1e-10
DEFAULT_CUTOFF = 1e-10
DEFAULT_FLAT_THRESHOLD = 0.05
DEFAULT_STOL = 1e-3
NEWTON_RCOND = 1e-14
STATUSES = ("critical", "asymptotic", "gradient_flat", "rejected")


@dataclass
class CriticalPoint:
    """A classified finder endpoint.

    theta [P]: endpoint; method: the finder; loss / start_loss: f at the end and the start (loss
    units); grad_norm2 / start_grad_norm2: ``||g||^2`` there (absolute, gradient units squared);
    grad_norm2_relative: their ratio; grad_norm_scaled: ``||g|| / ||H||_2`` (parameter units,
    scale-free); spectral_norm: ``||H||_2`` at the endpoint (from extreme_eigenvalues);
    acceptance_ratio: ``||g|| / (rtol ||g_0|| + htol ||H||_2)`` (scale-free, the gradient test
    passes iff <= 1 under the default criterion); step_ratio: ``||g|| / (||H||_2 max(||theta||, 1))``
    (the scale-free criterion's point test passes iff <= stol); newton_step: ``||H^+ g||`` where
    the asymptotic test needed it, else nan; criterion, rtol, htol, cutoff, stol: the settings;
    accepted: by ``criterion`` (with the point test if scale-free), never if asymptotic; accepted_absolute: ``grad_norm2 < cutoff``
    whatever the criterion;
    flat_ratio: ``||H g|| / (||H||_2 ||g||)`` (nan where g or H is exactly 0);
    gradient_flat: status is "gradient_flat"; status: one of :data:`STATUSES` (see the module); index: the exact index (None if not asked or not finite);
    iterations, num_hvps, num_grads: the finder's cost (endpoint analysis not included); stop: why
    the finder stopped; history / losses: ``||g||^2`` and f per accepted step;
    solve_residuals, kernel_components, kernel_dims, step_norms: per step, see
    :class:`~surfacekit.critical.trace.FinderRun`; kernel_component: the last step's
    ``||H d + g||`` (nan for finders without a least-squares Newton solve).
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
    criterion: str = "scale_free"
    rtol: float = DEFAULT_RTOL
    htol: float = DEFAULT_HTOL
    accepted_absolute: bool = False
    acceptance_ratio: float = float("nan")
    grad_norm_scaled: float = float("nan")
    kernel_component: float = float("nan")
    kernel_components: list[float] = field(default_factory=list)
    kernel_dims: list[int] = field(default_factory=list)
    step_norms: list[float] = field(default_factory=list)
    stol: float = DEFAULT_STOL
    step_ratio: float = float("nan")
    newton_step: float = float("nan")


def spectral_norm(loss_fn: LossFn, theta: Tensor, tol: float = 1e-6, max_steps: int = 1000) -> float:
    """``||H||_2 = max(|lambda_max|, |lambda_min|)`` at ``theta`` [P] by ``curvature.extreme_eigenvalues``.

    Two thick-restart Lanczos runs (tens of HVPs each for tol 1e-6). Warns
    (:class:`~surfacekit.curvature.ConvergenceWarning`) with the residuals if either end did not
    converge within ``max_steps`` HVPs, and returns the unconverged estimate.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # The scale of H, not a spectrum: no completion certificate (it would double the products).
        ends = [extreme_eigenvalues(loss_fn, theta, k=1, which=which, tol=tol, max_steps=max_steps, on_fail="warn",
                                    certify=False)
                for which in ("largest", "smallest")]
    if not all(e.converged for e in ends):
        warnings.warn(f"spectral norm: Lanczos not converged ({[float(e.residuals[0]) for e in ends]} "
                      "residuals); the flatness ratio and acceptance use the unconverged estimate",
                      ConvergenceWarning, stacklevel=2)
    return max(abs(float(e.eigenvalues[0])) for e in ends)


def flatness_ratio(loss_fn: LossFn, theta: Tensor, grad: Tensor | None = None,
                   norm: float | None = None) -> tuple[float, float]:
    """``(||H g|| / (||H||_2 ||g||), ||H||_2)`` at ``theta`` [P]; the ratio is nan if g or H is 0.

    Near 0, g lies (nearly) in the kernel of H, so ``||g||^2`` is (nearly) stationary even though
    g is not zero: a gradient-flat point (Frye et al. 2021). ``grad`` and ``norm`` are computed if
    not given. Cost: one HVP plus :func:`spectral_norm`.
    """
    if grad is None:
        _, grad = value_and_grad(loss_fn, theta)
    norm = spectral_norm(loss_fn, theta) if norm is None else norm
    gnorm = float(grad.norm())
    if gnorm == 0 or norm == 0:
        return float("nan"), norm
    hg = hessian_operator(loss_fn, theta)(grad)
    return float(hg.norm()) / (norm * gnorm), norm


def acceptance_ratio(grad_norm2: float, start_grad_norm2: float, spectral_norm: float, *,
                     rtol: float = DEFAULT_RTOL, htol: float = DEFAULT_HTOL) -> float:
    """``||g|| / (rtol ||g_0|| + htol ||H||_2)``: at most 1 means accepted by the scale-free criterion.

    Inputs are ``||g||^2`` at the end and the start and ``||H||_2`` at the end. Returns 0 for
    ``g = 0``, inf when the right side is 0 and g is not, nan for non-finite inputs.
    """
    values = (grad_norm2, start_grad_norm2, spectral_norm)
    if not finite(*values):
        return float("nan")
    bound = rtol * math.sqrt(start_grad_norm2) + htol * spectral_norm
    g = math.sqrt(grad_norm2)
    if g == 0:
        return 0.0
    return g / bound if bound > 0 else float("inf")


def newton_step(loss_fn: LossFn, theta: Tensor, grad: Tensor, *, rcond: float = NEWTON_RCOND) -> float:
    """``||H^+ g||`` at ``theta`` [P] (parameter units): the minimum-length Newton step's length.

    By :func:`~surfacekit.critical.minimum_length.minimum_length_solve` (relative tolerance
    1e-10, singular values below ``rcond`` times the largest treated as kernel). Cost: up to
    ``min(P, 1000)`` HVPs. Returns nan if the solve met a non-finite product.
    """
    solve = minimum_length_solve(hessian_operator(loss_fn, theta), grad, rtol=1e-10, rcond=rcond)
    return float(solve.solution.norm()) if solve.reason != "nonfinite" else float("nan")


def step_ratio(grad_norm: float, flat_ratio: float, spectral_norm: float, theta_norm: float) -> float:
    """The point test's ratio ``(||g||^2 / ||H g||) / max(||theta||, 1)`` (scale-free in the loss).

    ``||H g||`` is recovered as ``flat_ratio * ||H||_2 * ||g||``. Returns 0 for ``g = 0``, inf
    when ``H g = 0`` and g is not, nan for non-finite inputs.
    """
    if not finite(grad_norm, spectral_norm, theta_norm):
        return float("nan")
    if grad_norm == 0:
        return 0.0
    hg = flat_ratio * spectral_norm * grad_norm if spectral_norm > 0 else 0.0
    if not finite(hg):
        return float("nan")
    return grad_norm ** 2 / hg / max(theta_norm, 1.0) if hg > 0 else float("inf")


def classify(accepted: bool, flat_ratio: float, flat_threshold: float = DEFAULT_FLAT_THRESHOLD, *,
             asymptotic: bool = False) -> str:
    """"asymptotic" if ``asymptotic`` (see the module); else "critical" if accepted; else "gradient_flat" if ``flat_ratio < flat_threshold``;
    else "rejected" (a nan ratio is never flat)."""
    if asymptotic:
        return "asymptotic"
    if accepted:
        return "critical"
    if flat_ratio < flat_threshold:  # False for nan
        return "gradient_flat"
    return "rejected"


def check_acceptance(criterion: str, rtol: float, htol: float, cutoff: float, stol: float = DEFAULT_STOL) -> None:
    """Raise ValueError unless the acceptance settings are valid (criterion known, tolerances >= 0, cutoff, stol > 0)."""
    if stol <= 0:
        raise ValueError(f"stol must be > 0, got {stol}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if rtol < 0 or htol < 0 or rtol + htol == 0:
        raise ValueError(f"rtol and htol must be >= 0 and not both 0, got {rtol}, {htol}")


def classify_endpoint(loss_fn: LossFn, run: FinderRun, method: str, *, criterion: Criterion = "scale_free",
                      rtol: float = DEFAULT_RTOL, htol: float = DEFAULT_HTOL, cutoff: float = DEFAULT_CUTOFF,
                      flat_threshold: float = DEFAULT_FLAT_THRESHOLD, stol: float = DEFAULT_STOL,
                      compute_index: bool = True, index_options: dict[str, Any] | None = None) -> CriticalPoint:
    """Evaluate a finder's endpoint: ``||g||^2``, ``||H||_2``, flatness, acceptance, status and index.

    ``run.theta`` is the endpoint; its start is the first point of ``run`` (``history[0]``,
    ``losses[0]``, and ``start_norm``, ``||theta_0||``).

    Cost: one gradient, :func:`spectral_norm` and one HVP, plus :func:`surfacekit.curvature.index`
    (with ``index_options``) when ``compute_index``.

    Raises:
        ValueError: invalid acceptance settings (see :func:`check_acceptance`).
    """
    check_acceptance(criterion, rtol, htol, cutoff, stol)
    theta = run.theta
    f, g = value_and_grad(loss_fn, theta)
    gn2 = float(g @ g)
    start = run.history[0]
    ok = finite(f, gn2)
    ratio, norm = flatness_ratio(loss_fn, theta, g) if ok else (float("nan"), float("nan"))
    accept_ratio = acceptance_ratio(gn2, start, norm, rtol=rtol, htol=htol)
    absolute = ok and gn2 < cutoff
    gradient_test = absolute if criterion == "absolute" else bool(accept_ratio <= 1)  # False for nan
    theta_norm = float(theta.norm())
    size = max(theta_norm, 1.0)
    point_ratio = (math.sqrt(gn2) / (norm * size) if norm > 0 else (0.0 if gn2 == 0 else float("inf"))) \
        if ok else float("nan")
    outward = theta_norm - run.start_norm  # nan (never asymptotic) if the start's norm was not recorded
    step = newton_step(loss_fn, theta, g) if ok and gradient_test and outward > stol * size else float("nan")
    asymptotic = bool(step > stol * size)  # False for nan
    accepted = gradient_test and not asymptotic and (criterion == "absolute" or bool(point_ratio <= stol))
    status = classify(accepted, ratio, flat_threshold, asymptotic=asymptotic) if ok else "rejected"
    idx = index(loss_fn, theta, **(index_options or {})) if compute_index and ok else None
    return CriticalPoint(
        theta=theta, method=method, loss=f, start_loss=run.losses[0], grad_norm2=gn2, start_grad_norm2=start,
        grad_norm2_relative=gn2 / start if start > 0 else float("nan"), iterations=run.iterations,
        num_hvps=run.num_hvps, num_grads=run.num_grads, accepted=accepted, flat_ratio=ratio,
        spectral_norm=norm, gradient_flat=status == "gradient_flat", status=status, cutoff=cutoff,
        flat_threshold=flat_threshold, index=idx, stop=run.stop, history=run.history, losses=run.losses,
        solve_residuals=run.solve_residuals, criterion=criterion, rtol=rtol, htol=htol,
        accepted_absolute=absolute, acceptance_ratio=accept_ratio,
        grad_norm_scaled=math.sqrt(gn2) / norm if ok and norm > 0 else float("nan"),
        kernel_component=run.kernel_components[-1] if run.kernel_components else float("nan"),
        kernel_components=run.kernel_components, kernel_dims=run.kernel_dims, step_norms=run.step_norms,
        stol=stol, step_ratio=point_ratio, newton_step=step,
    )
