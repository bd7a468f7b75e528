"""Critical-point finders on any ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P].

One finder per module, all counted in gradients and Hessian-vector products (HVPs) and all
independent of the units of the loss:

* ``newton_mr`` (:mod:`.newton_mr`): minimum-length least-squares Newton steps ``d = -H^+ g``
  (:mod:`.minimum_length`, equivalent to MINRES-QLP), Armijo on ``||g||^2``; any index.
* ``gradnorm`` (:mod:`.gradnorm`): minimizes ``||g||^2 / 2`` by L-BFGS or gradient descent; known
  to stall at gradient-flat points.
* ``newton`` (:mod:`.newton`): pseudo-inverse Newton over Ritz pairs of a Lanczos subspace; any index.
* ``saddle_free`` (:mod:`.saddle_free`): Dauphin et al.'s ``|Lambda|`` step, Armijo on f; minima.
* ``levenberg_marquardt`` (:mod:`.levenberg_marquardt`): damped Newton on ``g = 0``; any index.

Shared pieces: :mod:`.line_search` (Armijo), :mod:`.trace` (stopping rules, what a run returns),
:mod:`.evaluate` (counted evaluations), :mod:`.classify` (acceptance, gradient-flat
classification, index), :mod:`.starts` (start points from trajectories). :func:`find` runs a
finder and classifies its endpoint. See docs/critical.md.
"""

from .classify import (
    CRITERIA,
    DEFAULT_CUTOFF,
    DEFAULT_FLAT_THRESHOLD,
    DEFAULT_HTOL,
    DEFAULT_RTOL,
    DEFAULT_STOL,
    STATUSES,
    CriticalPoint,
    acceptance_ratio,
    classify,
    classify_endpoint,
    flatness_ratio,
    newton_step,
    spectral_norm,
)
from .evaluate import value_and_grad
from .finders import FINDERS, METHODS, find
from .gradnorm import gradnorm, two_loop
from .levenberg_marquardt import levenberg_marquardt
from .line_search import armijo
from .minimum_length import KrylovSolve, minimum_length_solve
from .newton import newton
from .newton_mr import newton_mr
from .saddle_free import saddle_free
from .starts import sample_uniform_in_loss
from .trace import STOPS, FinderRun

__all__ = [
    "CRITERIA", "DEFAULT_CUTOFF", "DEFAULT_FLAT_THRESHOLD", "DEFAULT_HTOL", "DEFAULT_RTOL", "DEFAULT_STOL", "FINDERS", "METHODS",
    "STATUSES", "STOPS", "CriticalPoint", "FinderRun", "KrylovSolve", "acceptance_ratio", "armijo", "classify",
    "classify_endpoint", "find", "flatness_ratio", "gradnorm", "levenberg_marquardt", "minimum_length_solve",
    "newton", "newton_mr", "sample_uniform_in_loss", "saddle_free", "newton_step", "spectral_norm", "two_loop", "value_and_grad",
]
