"""Generalized Gauss-Newton (GGN) vector products of a loss that is a function of model outputs.

For ``loss(theta) = ell(z(theta))`` with outputs z [...] and the loss on outputs ell, the GGN is
``G = J^T H_z J`` with J = dz/dtheta and H_z = d^2 ell / dz^2 (Schraudolph 2002; Martens 2010,
Section 4.2). It drops the term ``sum_j (d ell / dz_j) d^2 z_j / dtheta^2`` of the Hessian, so it
is positive semi-definite whenever ell is convex in z (cross-entropy on logits, squared error),
which makes it the curvature matrix of Hessian-free optimization. For a model linear in theta
(a single affine layer) G equals the Hessian.

A product costs about one gradient: the graph of ``z(theta)`` and of ``J^T u`` (u a dummy output
cotangent) is built once per point; then ``J v`` is one backward pass through the ``J^T u`` graph
(the double-backward trick), ``H_z (J v)`` one backward pass through the loss on outputs, and
``J^T (H_z J v)`` one backward pass through the model. Measured (``benchmarks/second_order.py``,
8 members of 64-25-10 tanh on 1000 digits, float64, one thread): 0.87x a gradient per product,
against 1.47x for an exact Hessian-vector product and 3.6x for a forward-mode (``torch.func.jvp``)
GGN product.

The precision policy is that of :mod:`.hvp`: products are computed in float64 (a ``theta`` of
another dtype is upcast with a PrecisionWarning; outputs of lower precision at a float64 point are
refused), and a non-finite product raises :class:`~surfacekit.curvature.errors.NonFiniteError`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .errors import NonFiniteError, require_finite
from .hvp import as_float64


class GaussNewtonOperator:
    """The symmetric PSD map ``v -> J^T H_z J v`` at a fixed ``theta`` [P], counting products.

    ``output_fn(theta) -> z`` (any shape) and ``output_loss(z) -> scalar``; the loss whose GGN this
    is equals ``output_loss(output_fn(theta))``. Call with v [P]; the product is float64;
    ``num_products`` counts calls; ``size`` is P. The graphs are kept until the operator is freed
    (memory: about two backward graphs of ``output_fn``).

    Raises:
        ValueError: ``theta`` is not a 1-D floating tensor, ``output_fn`` does not return float64 at a
            float64 point, or ``v`` has the wrong shape.
        NonFiniteError: the outputs at ``theta`` (at construction) or a product (at its call) are not finite.
    """

    def __init__(self, output_fn: Callable[[Tensor], Tensor], output_loss: Callable[[Tensor], Tensor], theta: Tensor):
        theta = as_float64(theta)
        self.size = theta.numel()
        self.num_products = 0
        self._theta = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            self._outputs = output_fn(self._theta)
            if self._outputs.dtype != torch.float64:
                raise ValueError(f"output_fn returned {self._outputs.dtype} at a float64 theta: convert the model and "
                                 "its data to float64")
            require_finite(self._outputs.detach(), "the outputs at theta")
            self._cotangent = torch.zeros_like(self._outputs, requires_grad=True)
            (self._transposed,) = torch.autograd.grad(self._outputs, self._theta, self._cotangent, create_graph=True,
                                                      allow_unused=True)
            self._leaf = self._outputs.detach().requires_grad_(True)
            (grad_z,) = torch.autograd.grad(output_loss(self._leaf), self._leaf, create_graph=True, allow_unused=True)
        # A loss linear in z (or a model constant in theta) has no curvature through this path: G = 0.
        self._grad_z = grad_z if grad_z is not None and grad_z.requires_grad else None
        self._linear = self._transposed is not None and self._transposed.requires_grad

    def jacobian_vector_product(self, v: Tensor) -> Tensor:
        """``J v``, shaped like the outputs (a backward pass through the ``J^T u`` graph)."""
        if not self._linear:
            return torch.zeros_like(self._outputs)
        (jv,) = torch.autograd.grad(self._transposed, self._cotangent, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self._outputs) if jv is None else jv.detach()

    def __call__(self, v: Tensor) -> Tensor:
        if v.shape != (self.size,):
            raise ValueError(f"v must have shape [P] with P={self.size}, got {tuple(v.shape)}")
        self.num_products += 1
        v = v.to(self._theta)
        if self._grad_z is None or not self._linear:
            return torch.zeros_like(v)
        jv = self.jacobian_vector_product(v)
        (hjv,) = torch.autograd.grad(self._grad_z, self._leaf, jv, retain_graph=True, allow_unused=True)
        if hjv is None:
            return torch.zeros_like(v)
        (out,) = torch.autograd.grad(self._outputs, self._theta, hjv, retain_graph=True, allow_unused=True)
        out = torch.zeros_like(v) if out is None else out.detach()
        if not bool(out.isfinite().all()):
            raise NonFiniteError(f"Gauss-Newton product {self.num_products} is not finite for a vector of norm "
                                 f"{float(v.norm()):.3g}")
        return out


def gauss_newton_operator(output_fn: Callable[[Tensor], Tensor], output_loss: Callable[[Tensor], Tensor],
                          theta: Tensor) -> GaussNewtonOperator:
    """The GGN ``J^T H_z J`` of ``output_loss(output_fn(theta))`` at ``theta`` [P] as a reusable,
    product-counting operator (see :class:`GaussNewtonOperator`)."""
    return GaussNewtonOperator(output_fn, output_loss, theta)
