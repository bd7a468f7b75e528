"""Hessian-vector products of a scalar loss over a flat parameter vector.

Two backends compute the same product ``H(theta) @ v``:

* ``"graph"``: one reverse pass with ``create_graph=True`` builds the gradient graph once; every
  product is then a single backward pass through it (``torch.autograd.grad``). This is the default:
  on float64 MLPs it measured about 1.5-2x a gradient per vector, against 3-5x for ``"jvp"``
  (see ``benchmarks/curvature.py``).
* ``"jvp"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``. Stateless, and it
  works on functions where a retained graph is awkward, but it re-runs the forward and backward
  pass for every product.

Nothing here changes dtype: products are computed in the dtype of ``theta`` (float64 expected).
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

LossFn = Callable[[Tensor], Tensor]
Backend = Literal["graph", "jvp"]
DEFAULT_BACKEND: Backend = "graph"


def check_theta(theta: Tensor) -> None:
    """Raise ValueError unless ``theta`` is a 1-D floating-point tensor."""
    if not isinstance(theta, Tensor) or theta.ndim != 1 or not theta.is_floating_point():
        raise ValueError("theta must be a 1-D floating-point tensor [P]")


class HessianOperator:
    """The symmetric linear map ``v -> H(theta) v`` at a fixed ``theta``, counting products.

    Call it with ``v`` of shape [P] or [m, P]; the result has the same shape. ``num_hvps`` counts
    Hessian-vector products (an [m, P] call counts m). ``size`` is P. With the ``"graph"``
    backend the gradient graph is built once at construction and kept until the operator is freed.
    """

    def __init__(self, loss_fn: LossFn, theta: Tensor, backend: Backend = DEFAULT_BACKEND):
        check_theta(theta)
        if backend not in ("graph", "jvp"):
            raise ValueError(f"unknown HVP backend {backend!r}; use 'graph' or 'jvp'")
        self.backend = backend
        self.size = theta.numel()
        self.dtype = theta.dtype
        self.device = theta.device
        self.num_hvps = 0
        self._batched_ok = True
        if backend == "graph":
            self._theta = theta.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(self._theta)
                (grad,) = torch.autograd.grad(
                    loss, self._theta, create_graph=True, allow_unused=True
                )
            # A loss that is constant or linear in theta has no second-order graph: H = 0.
            self._grad = grad if grad is not None and grad.requires_grad else None
        else:
            self._theta = theta.detach()
            self._grad_fn = torch.func.grad(loss_fn)

    def __call__(self, v: Tensor) -> Tensor:
        if v.shape[-1] != self.size or v.ndim not in (1, 2):
            raise ValueError(f"v must have shape [P] or [m, P] with P={self.size}, got {tuple(v.shape)}")
        v = v.to(dtype=self.dtype, device=self.device)
        self.num_hvps += 1 if v.ndim == 1 else v.shape[0]
        if v.ndim == 1:
            return self._single(v)
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
