"""Hessian-vector products of a scalar loss over a flat parameter vector.

Two backends compute the same product ``H(theta) @ v``:

* ``"graph"``: one reverse pass with ``create_graph=True`` builds the gradient graph once; every
  product is then a single backward pass through it (``torch.autograd.grad``). This is the default:
  on float64 MLPs it measured about 1.5-2x a gradient per vector, against 3-5x for ``"jvp"``
  (see ``benchmarks/curvature.py``).
* ``"jvp"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``. Stateless, and it
  works on functions where a retained graph is awkward, but it re-runs the forward and backward
  pass for every product.

A block of vectors [m, P] is one vmapped call (``is_grads_batched`` / ``vmap``), except with the
``"graph"`` backend on the CPU, where it is a loop of single products: there the vmapped call
measured slower per vector (float64 digits MLPs, one thread, min of repeats: 1.0-1.5x a gradient
per vector in a loop against 1.1-3.1x vmapped at blocks of 2-8, and 2.7x slower at blocks of 64 for
P = 17,560), while for ``"jvp"`` vmapping halves the cost (1.6x against 3.7x at a block of 8).

Products are computed in float64: a ``theta`` of another floating dtype is upcast with a
:class:`~surfacekit.curvature.errors.PrecisionWarning`, and a ``loss_fn`` that still returns a lower
precision at a float64 point (a float32 model or data) is refused. Every product is checked: a NaN
or infinite product raises :class:`~surfacekit.curvature.errors.NonFiniteError`.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

import torch
from torch import Tensor

from .errors import NonFiniteError, PrecisionWarning, require_finite

LossFn = Callable[[Tensor], Tensor]
Backend = Literal["graph", "jvp"]
DEFAULT_BACKEND: Backend = "graph"


def check_theta(theta: Tensor) -> None:
    """Raise ValueError unless ``theta`` is a 1-D floating-point tensor."""
    if not isinstance(theta, Tensor) or theta.ndim != 1 or not theta.is_floating_point():
        raise ValueError("theta must be a 1-D floating-point tensor [P]")


def as_float64(theta: Tensor) -> Tensor:
    """``theta`` [P] detached and in float64; any other floating dtype is upcast with a PrecisionWarning.

    Why: in float32 a Ritz residual no longer bounds the eigenvalue error (products carry 1e-7
    relative noise), so a tolerance of 1e-8 would be reported as met when it is not.
    """
    check_theta(theta)
    if theta.dtype == torch.float64:
        return theta.detach()
    warnings.warn(
        f"theta is {theta.dtype}; curvature is computed in float64 (in lower precision a Ritz residual no "
        "longer bounds the eigenvalue error, so 'converged' would be wrong). The upcast costs twice the memory "
        "per vector and typically 1-3x the time per Hessian-vector product; pass a float64 theta and model "
        "to avoid it.", PrecisionWarning, stacklevel=3)
    return theta.detach().to(torch.float64)


class HessianOperator:
    """The symmetric linear map ``v -> H(theta) v`` at a fixed ``theta``, counting products.

    Call it with ``v`` of shape [P] or [m, P]; the result has the same shape, in float64.
    ``num_hvps`` counts Hessian-vector products (an [m, P] call counts m). ``size`` is P; ``point``
    the float64 ``theta`` [P] (detached); ``loss``
    and ``grad_norm`` are the loss and gradient norm at ``theta`` (evaluated once at construction,
    also with the ``"jvp"`` backend, for the checks below). With the ``"graph"`` backend the
    gradient graph is built once at construction and kept until the operator is freed.

    Raises:
        ValueError: ``theta`` is not a 1-D floating tensor; ``loss_fn`` does not return a float64
            scalar at a float64 point (a float32 model or data: refused, see :func:`as_float64`).
        NonFiniteError: the loss or gradient at ``theta`` is not finite (at construction), or a
            product is not finite (at the call that computed it; the message names the product's
            number, the vector's norm, and the loss and gradient norm at the point).
    """

    def __init__(self, loss_fn: LossFn, theta: Tensor, backend: Backend = DEFAULT_BACKEND):
        if backend not in ("graph", "jvp"):
            raise ValueError(f"unknown HVP backend {backend!r}; use 'graph' or 'jvp'")
        upcast = isinstance(theta, Tensor) and theta.is_floating_point() and theta.dtype != torch.float64
        theta = as_float64(theta)
        self.backend = backend
        self.size = theta.numel()
        self.dtype = theta.dtype
        self.device = theta.device
        self.num_hvps = 0
        self.point = theta
        self._batched_ok = backend == "jvp" or theta.device.type != "cpu"  # see the module docstring
        try:
            loss, grad = self._first_order(loss_fn, theta)
        except RuntimeError as exc:
            if not upcast:
                raise
            raise ValueError(f"loss_fn failed on the float64 copy of a lower-precision theta ({exc}); make the "
                             "model and its data float64") from exc
        self.loss = float(loss.detach())
        self.grad_norm = 0.0 if grad is None else float(grad.detach().norm())
        require_finite(loss.detach().reshape(1), "the loss at theta")
        if grad is not None:
            require_finite(grad.detach(), f"the gradient at theta (loss {self.loss:.6g})")
        if backend == "graph":
            # A loss that is constant or linear in theta has no second-order graph: H = 0.
            self._grad = grad if grad is not None and grad.requires_grad else None
        else:
            self._grad_fn = torch.func.grad(loss_fn)

    def _first_order(self, loss_fn: LossFn, theta: Tensor) -> tuple[Tensor, Tensor | None]:
        """Loss and gradient at ``theta``; with the graph backend the gradient keeps its graph."""
        if self.backend == "graph":
            self._theta = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = _checked_loss(loss_fn(self._theta))
                (grad,) = torch.autograd.grad(loss, self._theta, create_graph=True, allow_unused=True)
            return loss, grad
        self._theta = theta
        grad, loss = torch.func.grad_and_value(lambda t: _checked_loss(loss_fn(t)))(theta)
        return loss, grad

    def __call__(self, v: Tensor) -> Tensor:
        if v.shape[-1] != self.size or v.ndim not in (1, 2):
            raise ValueError(f"v must have shape [P] or [m, P] with P={self.size}, got {tuple(v.shape)}")
        v = v.to(dtype=self.dtype, device=self.device)
        first = self.num_hvps + 1
        self.num_hvps += 1 if v.ndim == 1 else v.shape[0]
        if not bool(v.isfinite().all()):
            raise NonFiniteError(f"the vector given to Hessian-vector product {first} is not finite")
        out = self._product(v)
        if not bool(out.isfinite().all()):
            norms = v.norm(dim=-1).reshape(-1)
            bad = (~out.isfinite()).reshape(-1, self.size).any(dim=1)
            j = int(torch.nonzero(bad)[0])
            raise NonFiniteError(
                f"Hessian-vector product {first + j} is not finite ({int(out.isnan().sum())} NaN, "
                f"{int(out.isinf().sum())} infinite entries) for a vector of norm {float(norms[j]):.3g}, while the "
                f"loss ({self.loss:.6g}) and gradient norm ({self.grad_norm:.3g}) at this point are finite: the "
                "second derivative of loss_fn does not exist or overflows here (e.g. |z|^1.5 at z = 0)")
        return out

    def _product(self, v: Tensor) -> Tensor:
        if v.ndim == 1:
            return self._single(v)
        if v.shape[0] == 1:
            return self._single(v[0])[None]
        if self._batched_ok:
            try:
                return self._batched(v)
            except RuntimeError:  # an op without a vmap rule: fall back to a loop, once and for all
                self._batched_ok = False
        return torch.stack([self._single(u) for u in v])

    def to_scipy(self):
        """This operator as a symmetric ``scipy.sparse.linalg.LinearOperator`` on float64 numpy vectors
        (``matvec`` and ``rmatvec`` are the same product; each call counts as one HVP here)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def product(v):
            v = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).reshape(-1)
            return self(v.to(dtype=self.dtype, device=self.device)).cpu().numpy().astype(np.float64, copy=False)

        return LinearOperator((self.size, self.size), matvec=product, rmatvec=product, dtype=np.float64)

    def _single(self, v: Tensor) -> Tensor:
        if self.backend == "jvp":
            return torch.func.jvp(self._grad_fn, (self._theta,), (v,))[1].detach()
        if self._grad is None:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(self._grad, self._theta, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if hv is None else hv.detach()

    def _batched(self, v: Tensor) -> Tensor:
        if self.backend == "jvp":
            one = lambda u: torch.func.jvp(self._grad_fn, (self._theta,), (u,))[1]  # noqa: E731
            return torch.func.vmap(one)(v).detach()
        if self._grad is None:
            return torch.zeros_like(v)
        (hv,) = torch.autograd.grad(
            self._grad, self._theta, v, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        return torch.zeros_like(v) if hv is None else hv.detach()


def _checked_loss(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    if loss.dtype != torch.float64:
        raise ValueError(
            f"loss_fn returned {loss.dtype} at a float64 theta: the model or its data compute in lower precision, "
            "where Hessian eigenvalues cannot be certified. Convert the model and data to float64 "
            "(e.g. model.double(), x.double()).")
    return loss.reshape(())


def hessian_operator(loss_fn: LossFn, theta: Tensor, backend: Backend = DEFAULT_BACKEND) -> HessianOperator:
    """Return the Hessian of ``loss_fn`` at ``theta`` [P] as a reusable, product-counting operator.

    A ``loss_fn`` with its own ``hessian_operator(theta, backend)`` method provides the operator
    (``surfacekit.module_objective.ModuleObjective``: products a batch at a time, bounded memory).
    """
    own = getattr(loss_fn, "hessian_operator", None)
    return own(theta, backend) if own is not None else HessianOperator(loss_fn, theta, backend)


def hessian_vector_product(
    loss_fn: LossFn, theta: Tensor, v: Tensor, backend: Backend = DEFAULT_BACKEND
) -> Tensor:
    """``H(theta) @ v`` for ``v`` of shape [P], or row-wise for ``v`` of shape [m, P] (same shape out).

    For many products at one ``theta`` build :func:`hessian_operator` once instead.
    """
    return hessian_operator(loss_fn, theta, backend)(v)
