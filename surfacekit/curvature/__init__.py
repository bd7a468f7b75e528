"""Hessian tools for any ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P].

Hessian-vector products, generalized Gauss-Newton products, the dense Hessian, extreme eigenvalues
by Lanczos, the spectral density by stochastic Lanczos quadrature, Hutchinson's trace and the
(exact) index. See docs/curvature.md.
"""

from .dense import dense_hessian
from .ggn import GaussNewtonOperator, gauss_newton_operator
from .density import SpectralDensity, density_on_grid, spectral_density
from .hvp import HessianOperator, hessian_operator, hessian_vector_product
from .index import IndexResult, index
from .lanczos import (
    ConvergenceWarning,
    EigenResult,
    LanczosResult,
    NotConvergedError,
    eigsh,
    extreme_eigenvalues,
    lanczos,
    ritz,
)
from .trace import TraceEstimate, hutchinson_trace

__all__ = [
    "ConvergenceWarning",
    "EigenResult",
    "GaussNewtonOperator",
    "HessianOperator",
    "IndexResult",
    "LanczosResult",
    "NotConvergedError",
    "SpectralDensity",
    "TraceEstimate",
    "dense_hessian",
    "density_on_grid",
    "eigsh",
    "extreme_eigenvalues",
    "gauss_newton_operator",
    "hessian_operator",
    "hessian_vector_product",
    "hutchinson_trace",
    "index",
    "lanczos",
    "ritz",
    "spectral_density",
]
