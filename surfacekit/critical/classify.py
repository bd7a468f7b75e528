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

**Classification.** Accepted endpoints are "critical". A rejected endpoint is "gradient_flat" when
its flatness ratio ``||H g|| / (||H||_2 ||g||)`` is below ``flat_threshold`` (default 0.05): g lies
nearly in the kernel of H, so ``||g||^2`` is (nearly) stationary though g is not zero (Frye et
al.); otherwise "rejected". Non-finite endpoints are "rejected". The index is the exact count of
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
from .trace import FinderRun

Criterion = Literal["scale_free", "absolute"]
CRITERIA = ("scale_free", "absolute")
DEFAULT_RTOL = 1e-6
DEFAULT_HTOL = 1e-10
DEFAULT_CUTOFF = 1e-10
DEFAULT_FLAT_THRESHOLD = 0.05
STATUSES = ("critical", "gradient_flat", "rejected")


@dataclass
class CriticalPoint:
    """A classified finder endpoint.

    theta [P]: endpoint; method: the finder; loss / start_loss: f at the end and the start (loss
    units); grad_norm2 / start_grad_norm2: ``||g||^2`` there (absolute, gradient units squared);
    grad_norm2_relative: their ratio; grad_norm_scaled: ``||g|| / ||H||_2`` (parameter units,
    scale-free); spectral_norm: ``||H||_2`` at the endpoint (from extreme_eigenvalues);
    acceptance_ratio: ``||g|| / (rtol ||g_0|| + htol ||H||_2)`` (scale-free, accepted iff <= 1
    under the default criterion); criterion, rtol, htol, cutoff: the settings; accepted: by
    ``criterion``; accepted_absolute: ``grad_norm2 < cutoff`` whatever the criterion;
    flat_ratio: ``||H g|| / (||H||_2 ||g||)`` (nan where g or H is exactly 0);
    gradient_flat: rejected and flat_ratio < flat_threshold; status: "critical",
    "gradient_flat" or "rejected"; index: the exact index (None if not asked or not finite);
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


def classify(accepted: bool, flat_ratio: float, flat_threshold: float = DEFAULT_FLAT_THRESHOLD) -> str:
    """"critical" if accepted; else "gradient_flat" if ``flat_ratio < flat_threshold``; else
    "rejected" (a nan ratio is never flat)."""
    if accepted:
        return "critical"
    if flat_ratio < flat_threshold:  # False for nan
        return "gradient_flat"
    return "rejected"


def check_acceptance(criterion: str, rtol: float, htol: float, cutoff: float) -> None:
    """Raise ValueError unless the acceptance settings are valid (criterion known, tolerances >= 0, cutoff > 0)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff}")
    if rtol < 0 or htol < 0 or rtol + htol == 0:
        raise ValueError(f"rtol and htol must be >= 0 and not both 0, got {rtol}, {htol}")


def classify_endpoint(loss_fn: LossFn, run: FinderRun, method: str, *, criterion: Criterion = "scale_free",
                      rtol: float = DEFAULT_RTOL, htol: float = DEFAULT_HTOL, cutoff: float = DEFAULT_CUTOFF,
                      flat_threshold: float = DEFAULT_FLAT_THRESHOLD, compute_index: bool = True,
                      index_options: dict[str, Any] | None = None) -> CriticalPoint:
    """Evaluate a finder's endpoint: ``||g||^2``, ``||H||_2``, flatness, acceptance, status and index.

    Cost: one gradient, :func:`spectral_norm` and one HVP, plus :func:`surfacekit.curvature.index`
    (with ``index_options``) when ``compute_index``.

    Raises:
        ValueError: invalid acceptance settings (see :func:`check_acceptance`).
    """
    check_acceptance(criterion, rtol, htol, cutoff)
    theta = run.theta
    f, g = value_and_grad(loss_fn, theta)
    gn2 = float(g @ g)
    start = run.history[0]
    ok = finite(f, gn2)
    ratio, norm = flatness_ratio(loss_fn, theta, g) if ok else (float("nan"), float("nan"))
    accept_ratio = acceptance_ratio(gn2, start, norm, rtol=rtol, htol=htol)
    absolute = ok and gn2 < cutoff
    accepted = absolute if criterion == "absolute" else bool(accept_ratio <= 1)  # False for nan
    status = classify(accepted, ratio, flat_threshold) if ok else "rejected"
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
    )
