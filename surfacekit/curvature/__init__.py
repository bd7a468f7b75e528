"""Hessian tools for any ``loss_fn(theta) -> scalar`` over a flat float64 vector ``theta`` [P].

Hessian-vector products, generalized Gauss-Newton products, the dense Hessian, certified extreme
eigenvalues by block Lanczos, the spectral density by stochastic Lanczos quadrature, Hutchinson's
trace, the (exact, certified) index and, where no exact count is within reach, a labelled estimate
with its interval. Populations: the exact spectra of many members at once from their dense Hessians
(``population``), assembled through the structure of an affine first layer where the loss offers
it (``affine``). See docs/curvature.md.
"""

from .affine import AffineInput, affine_input_hessians
from .dense import assemble_hessian, dense_hessian
from .density import SpectralDensity, density_on_grid, spectral_density
from .errors import ConvergenceWarning, MemoryLimitError, NonFiniteError, NotConvergedError, PrecisionWarning
from .estimate import CountEstimate, count_estimate
from .ggn import GaussNewtonOperator, gauss_newton_operator
from .hvp import HessianOperator, hessian_operator, hessian_vector_product
from .index import (
    IndexResult, ThresholdCount, check_threshold, count_below, dense_index, index, index_method, inertia_below,
)
from .krylov import miss_probability
from .lanczos import EigenResult, LanczosResult, eigsh, extreme_eigenvalues, lanczos, ritz
from .memory import dense_bytes, dense_members
from .population import (
    DenseSpectrum, PopulationHessian, PopulationSpectrum, dense_spectrum, first_order, population_eigenvalues,
    population_hessians, population_spectrum,
)
from .trace import TraceEstimate, hutchinson_trace

__all__ = [
    "AffineInput",
    "ConvergenceWarning",
    "CountEstimate",
    "DenseSpectrum",
    "EigenResult",
    "GaussNewtonOperator",
    "HessianOperator",
    "IndexResult",
    "LanczosResult",
    "MemoryLimitError",
    "NonFiniteError",
    "NotConvergedError",
    "PopulationHessian",
    "PopulationSpectrum",
    "PrecisionWarning",
    "SpectralDensity",
    "ThresholdCount",
    "TraceEstimate",
    "affine_input_hessians",
    "assemble_hessian",
    "check_threshold",
    "count_below",
    "count_estimate",
    "dense_bytes",
    "dense_hessian",
    "dense_index",
    "dense_members",
    "dense_spectrum",
    "density_on_grid",
    "eigsh",
    "extreme_eigenvalues",
    "first_order",
    "gauss_newton_operator",
    "hessian_operator",
    "hessian_vector_product",
    "hutchinson_trace",
    "index",
    "index_method",
    "inertia_below",
    "lanczos",
    "miss_probability",
    "population_eigenvalues",
    "population_hessians",
    "population_spectrum",
    "ritz",
    "spectral_density",
]
