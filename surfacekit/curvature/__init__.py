"""Hessian tools for any ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P].

Hessian-vector products, generalized Gauss-Newton products, the dense Hessian, certified extreme
eigenvalues by block Lanczos, the spectral density by stochastic Lanczos quadrature, Hutchinson's
trace and the (exact, certified) index. See docs/curvature.md.
"""

from .dense import assemble_hessian, dense_hessian
from .density import SpectralDensity, density_on_grid, spectral_density
from .errors import ConvergenceWarning, MemoryLimitError, NonFiniteError, NotConvergedError, PrecisionWarning
from .ggn import GaussNewtonOperator, gauss_newton_operator
from .hvp import HessianOperator, hessian_operator, hessian_vector_product
from .index import IndexResult, ThresholdCount, check_threshold, count_below, index
from .krylov import miss_probability
from .lanczos import EigenResult, LanczosResult, eigsh, extreme_eigenvalues, lanczos, ritz
from .trace import TraceEstimate, hutchinson_trace

__all__ = [
    "ConvergenceWarning",
    "EigenResult",
    "GaussNewtonOperator",
    "HessianOperator",
    "IndexResult",
    "LanczosResult",
    "MemoryLimitError",
    "NonFiniteError",
    "NotConvergedError",
    "PrecisionWarning",
    "SpectralDensity",
    "ThresholdCount",
    "TraceEstimate",
    "assemble_hessian",
    "check_threshold",
    "count_below",
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
    "miss_probability",
    "ritz",
    "spectral_density",
]
