"""What a finder returns (:class:`FinderRun`) and the record it keeps while it runs (:class:`Trace`).

Stopping rules shared by every finder: ``tolerance`` once ``||g||^2 <= tol * ||g_0||^2`` (relative
to the start, so it does not depend on the units of the loss), ``max_iter`` after that many
accepted steps, ``nonfinite`` when the start's loss or gradient is not finite; each finder adds
``line_search`` (no acceptable step) and, where it applies, ``stalled`` (the step predicts no
decrease of ``||g||^2``: g lies in the kernel of H to rounding, a least-squares point of g = 0) and
``resolution`` (after a step whose full Newton step was at most ``XTOL ||theta||`` long: theta
cannot move further in float64, so ``||g||`` is at its rounding floor; without this test a start
that is already critical would take ``max_iter`` steps of rounding noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .evaluate import Evaluations, finite

STOPS = ("tolerance", "max_iter", "line_search", "stalled", "resolution", "nonfinite")
XTOL = 1e-12


@dataclass
class FinderRun:
    """A finder's endpoint before classification.

    theta [P]: endpoint; iterations: accepted steps; num_hvps / num_grads: cost;
    history: ``||g||^2`` at the start and after every accepted step (gradient units squared);
    losses: ``f`` at the same points; stop: one of :data:`STOPS`;
    solve_residuals: per step, the relative residual ``||H d + g|| / ||g||`` of the inner solve
    (Newton-MR, Krylov Newton, Levenberg-Marquardt; empty otherwise);
    kernel_components: per step, ``||H d + g||`` of a least-squares (pseudo-inverse) Newton step
    (Newton-MR, Krylov Newton): the part of g that no step can remove, i.e. g's component outside
    the range of H when the solve converged (gradient units; empty for the other finders);
    kernel_dims: per step, how many directions of the Krylov subspace the solve treated as the
    kernel of H (Newton-MR only); step_norms: ``||theta_{k+1} - theta_k||`` per accepted step;
    start_norm: ``||theta_0||`` (parameter units; nan if not recorded).
    """

    theta: Tensor
    iterations: int
    num_hvps: int
    num_grads: int
    history: list[float]
    losses: list[float]
    stop: str
    solve_residuals: list[float] = field(default_factory=list)
    kernel_components: list[float] = field(default_factory=list)
    kernel_dims: list[int] = field(default_factory=list)
    step_norms: list[float] = field(default_factory=list)
    start_norm: float = float("nan")


class Trace:
    """The running record of one finder: ``||g||^2`` and ``f`` per accepted point, and the stop test."""

    def __init__(self, loss: float, grad: Tensor, theta0: Tensor):
        gn2 = float(grad @ grad)
        self.start_norm = float(theta0.norm())
        self.history = [gn2]
        self.losses = [loss]
        self.step_norms: list[float] = []
        self.solve_residuals: list[float] = []
        self.kernel_components: list[float] = []
        self.kernel_dims: list[int] = []

    @property
    def grad_norm2(self) -> float:
        return self.history[-1]

    @property
    def iterations(self) -> int:
        return len(self.history) - 1

    def record(self, loss: float, grad: Tensor, step_norm: float) -> None:
        """Append an accepted point."""
        self.history.append(float(grad @ grad))
        self.losses.append(loss)
        self.step_norms.append(step_norm)

    @staticmethod
    def resolved(newton_step: Tensor, theta: Tensor) -> bool:
        """True if the full (undamped) step ``newton_step`` [P] is at most ``XTOL ||theta||`` long."""
        return float(newton_step.norm()) <= XTOL * float(theta.norm())

    def check(self, max_iter: int, tol: float) -> str | None:
        """The stop reason before the next step ("nonfinite", "tolerance", "max_iter"), or None to go on."""
        if not finite(self.history[0], self.losses[0]):
            return "nonfinite"
        if self.grad_norm2 <= tol * self.history[0]:
            return "tolerance"
        if self.iterations >= max_iter:
            return "max_iter"
        return None

    def result(self, theta: Tensor, evaluations: Evaluations, stop: str) -> FinderRun:
        return FinderRun(theta, self.iterations, evaluations.num_hvps, evaluations.num_grads, self.history,
                         self.losses, stop, self.solve_residuals, self.kernel_components, self.kernel_dims,
                         self.step_norms, self.start_norm)
