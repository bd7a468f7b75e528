"""The ways a curvature computation says that it cannot answer: one place for the exception types."""

from __future__ import annotations

from torch import Tensor


class ConvergenceWarning(UserWarning):
    """An iterative eigen-computation stopped before its tolerance was met."""


class NotConvergedError(RuntimeError):
    """An iterative eigen-computation stopped before its tolerance was met."""


class NonFiniteError(ValueError):
    """A Hessian-vector product (or a value it depends on) was NaN or infinite.

    The message names what was non-finite: which product, the norm of the vector it was applied
    to, and the loss and gradient norm at the point. Raised instead of handing NaNs to an
    eigensolver (which would fail with an unrelated "ill-conditioned" error) or averaging them.
    """


class PrecisionWarning(UserWarning):
    """A curvature input was not float64 and was upcast (every curvature routine computes in float64)."""


class MemoryLimitError(MemoryError):
    """A curvature computation would need more memory than allowed; raised before allocating, with the estimate."""


def require_finite(values: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` unless every entry of ``values`` is finite."""
    if bool(values.isfinite().all()):
        return
    nan = int(values.isnan().sum())
    inf = int(values.isinf().sum())
    raise NonFiniteError(f"{what} is not finite: {nan} NaN and {inf} infinite entries out of {values.numel()}")
