"""The finders by name, and :func:`find`: run one and classify its endpoint."""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .classify import (
    DEFAULT_CUTOFF,
    DEFAULT_FLAT_THRESHOLD,
    DEFAULT_HTOL,
    DEFAULT_RTOL,
    DEFAULT_STOL,
    CriticalPoint,
    Criterion,
    check_acceptance,
    classify_endpoint,
)
from .evaluate import LossFn
from .gradnorm import gradnorm
from .levenberg_marquardt import levenberg_marquardt
from .newton import newton
from .newton_mr import newton_mr
from .saddle_free import saddle_free
from .trace import FinderRun

FINDERS: dict[str, Callable[..., FinderRun]] = {
    "newton_mr": newton_mr, "gradnorm": gradnorm, "newton": newton, "saddle_free": saddle_free,
    "levenberg_marquardt": levenberg_marquardt,
}
METHODS = tuple(FINDERS)


def find(loss_fn: LossFn, theta0: Tensor, method: str = "newton_mr", *, criterion: Criterion = "scale_free",
         rtol: float = DEFAULT_RTOL, htol: float = DEFAULT_HTOL, cutoff: float = DEFAULT_CUTOFF,
         flat_threshold: float = DEFAULT_FLAT_THRESHOLD, stol: float = DEFAULT_STOL, compute_index: bool = True,
         index_options: dict[str, Any] | None = None, **options: Any) -> CriticalPoint:
    """Run finder ``method`` from ``theta0`` [P] and classify its endpoint (kept whether accepted or not).

    ``options`` go to the finder (``max_iter``, ``tol``, ``step0``, ...; see :data:`FINDERS`).
    Acceptance: ``criterion="scale_free"`` (default) accepts ``||g|| <= rtol ||g_0|| + htol ||H||_2``;
    ``"absolute"`` accepts ``||g||^2 < cutoff``; both are recorded; either way the point must also
    pass the point test ``(||g||^2 / ||H g||) / max(||theta||, 1) <= stol``, and an endpoint that
    passes the gradient test, lies farther out than its start and has a Newton step ``||H^+ g||``
    above ``stol max(||theta||, 1)`` is "asymptotic" (see
    :mod:`surfacekit.critical.classify`). A non-finite start returns at once, rejected with
    ``stop="nonfinite"`` (no exception). ``index_options`` go to
    :func:`surfacekit.curvature.index` (``threshold`` (negative), ``relative_threshold``,
    ``method``, ...).

    Raises:
        ValueError: unknown ``method``, invalid acceptance settings, or what the finder raises.
    """
    if method not in FINDERS:
        raise ValueError(f"unknown finder {method!r}; choose one of {list(FINDERS)}")
    check_acceptance(criterion, rtol, htol, cutoff, stol)
    run = FINDERS[method](loss_fn, theta0, **options)
    return classify_endpoint(loss_fn, run, method, criterion=criterion, rtol=rtol, htol=htol, cutoff=cutoff,
                             flat_threshold=flat_threshold, stol=stol, compute_index=compute_index, index_options=index_options)
