"""Flatness measures of a network's endpoint: Keskar's epsilon-sharpness, adaptive sharpness
lambda_max(T H T) and the magnitude-aware PAC-Bayes sigma (lambda_max and the trace come from
:mod:`surfacekit.curvature`). See docs/sharpness.md.

Every measure takes the objective as ``loss_fn(theta) -> scalar`` over a flat float64 vector
``theta`` [P] (``objective.objective_fn`` or ``store.job_objective``: the trained objective, with
its weight decay, on the full training set), or, for the PAC-Bayes sigma, the training error of a
batch of parameter vectors.

* Keskar, Mudigere, Nocedal, Smelyanskiy, Tang (ICLR 2017), "On large-batch training ...", Metric
  2.1: with the box C_eps = {y : |y_i| <= eps (|x_i| + 1)},
  sharpness = 100 (max_{y in C_eps} f(x + y) - f(x)) / (1 + f(x)), the maximum approximated by
  L-BFGS-B with box bounds (scipy.optimize; the paper uses 10 iterations and eps 1e-3 or 5e-4).
* Kwon, Kim, Park, Choi (ICML 2021), "ASAM": adaptive sharpness with the normalization
  T = diag(|w| + eta); its second-order form is lambda_max(T H T) rho^2 / 2. With eta = 0 and T over
  every parameter (biases included), lambda_max(T H T) is unchanged by any positive diagonal
  rescaling that leaves the function unchanged (Dinh et al. 2017's (W1, b1) -> c (W1, b1),
  W2 -> W2 / c for ReLU networks), whereas lambda_max(H), the trace and Keskar's measure change.
  (The ASAM code leaves biases out; then the invariance fails.)
* Jiang, Neyshabur, Mobahi, Krishnan, Bengio (ICLR 2020), "Fantastic generalization measures",
  the magnitude-aware perturbation bound: the largest sigma such that perturbing every parameter
  by u_i ~ N(0, sigma^2 w_i^2 + eps^2) lowers the expected training accuracy by at most a stated
  amount (0.1 in the paper), found by bisection; their measure is 1 / sigma^2.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from scipy.optimize import minimize

from surfacekit import curvature

LossFn = Callable[[torch.Tensor], torch.Tensor]
ErrorFn = Callable[[torch.Tensor], torch.Tensor]


class KeskarSharpness(NamedTuple):
    """sharpness: 100 (f_max - f) / (1 + f) (percent, >= 0); value: f(x); maximum: the largest f(x + y)
    found (the start y = 0 included); epsilon; iterations: L-BFGS-B iterations done (of at most the
    requested number); evaluations: loss-and-gradient evaluations; at_boundary: the fraction of
    coordinates of the maximizer on the box's boundary."""

    sharpness: float
    value: float
    maximum: float
    epsilon: float
    iterations: int
    evaluations: int
    at_boundary: float


class AdaptiveSharpness(NamedTuple):
    """lambda_max: the largest eigenvalue of T H T, T = diag(|theta| + eta) (loss units, scale-free in
    theta); residual: its Ritz residual; num_hvps; converged; eta."""

    lambda_max: float
    residual: float
    num_hvps: int
    converged: bool
    eta: float


class PacBayesSigma(NamedTuple):
    """sigma: the largest tested sigma whose expected accuracy drop is at most ``drop``; sigma_above:
    the smallest tested sigma above it whose drop exceeded ``drop`` (inf when none did up to
    ``sigma_max``); flatness: 1 / sigma^2 (Jiang et al.'s measure; inf when sigma = 0); error: the
    unperturbed training error; drop_at_sigma: the measured drop at ``sigma``; drop, epsilon, draws,
    evaluations (batches of ``draws`` perturbed networks evaluated)."""

    sigma: float
    sigma_above: float
    flatness: float
    error: float
    drop_at_sigma: float
    drop: float
    epsilon: float
    draws: int
    evaluations: int


def keskar_sharpness(loss_fn: LossFn, theta: torch.Tensor, *, epsilon: float = 1e-3, iterations: int = 10,
                     seed: int = 0) -> KeskarSharpness:
    """Keskar et al.'s epsilon-sharpness of ``loss_fn`` at ``theta`` [P] (float64; see the module docstring).

    The maximization of f(x + y) over the box starts at a uniformly random point of the box (seeded:
    at a critical point the gradient at y = 0 vanishes and L-BFGS-B would stop at once) and runs at
    most ``iterations`` L-BFGS-B iterations with scipy's gradient and function tolerances off, so
    the iteration count alone ends it. The loss and its gradient come from the same data (the whole
    set ``loss_fn`` covers). Cost: ``evaluations`` gradients (about 1-3 per iteration).

    Raises:
        ValueError: epsilon <= 0, iterations < 1, a non-float64 theta, or f(x) non-finite or <= -1.
    """
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"epsilon={epsilon} and iterations={iterations}: expected epsilon > 0 and iterations >= 1")
    if theta.dtype != torch.float64:
        raise ValueError(f"theta is {theta.dtype}; Keskar's sharpness is computed in float64")
    x = theta.detach()
    value = float(loss_fn(x))
    if not math.isfinite(value) or value <= -1:
        raise ValueError(f"the loss at theta is {value}; Keskar's sharpness needs a finite loss above -1 "
                         "(it divides by 1 + f(x))")
    radius = (epsilon * (x.abs() + 1.0)).cpu().numpy()
    start = np.random.default_rng(seed).uniform(-radius, radius)
    result = minimize(_negative_loss_and_gradient, start, args=(loss_fn, x), jac=True, method="L-BFGS-B",
                      bounds=list(zip(-radius, radius)), options={"maxiter": int(iterations), "ftol": 0.0, "gtol": 0.0})
    maximum = max(value, -float(result.fun))  # L-BFGS-B's iterates only increase f(x + y)
    boundary = float(np.mean(np.isclose(np.abs(result.x), radius, rtol=1e-9, atol=0.0)))
    return KeskarSharpness(100.0 * (maximum - value) / (1.0 + value), value, maximum, float(epsilon), int(result.nit),
                           int(result.nfev), boundary)


def _negative_loss_and_gradient(y: np.ndarray, loss_fn: LossFn, x: torch.Tensor) -> tuple[float, np.ndarray]:
    """-f(x + y) and its gradient in y, as scipy's minimizers take them (a NaN loss counts as +inf)."""
    point = (x + torch.from_numpy(y).to(x)).requires_grad_(True)
    with torch.enable_grad():
        f = loss_fn(point)
        (grad,) = torch.autograd.grad(f, point)
    value = float(f.detach())
    if math.isnan(value):
        return math.inf, np.zeros_like(y)
    return -value, -grad.detach().cpu().numpy()


def adaptive_sharpness(loss_fn: LossFn, theta: torch.Tensor, *, eta: float = 0.0, tol: float = 1e-8,
                       max_steps: int = 1000, seed: int = 0) -> AdaptiveSharpness:
    """lambda_max(T H T) with T = diag(|theta| + eta) at ``theta`` [P]: the Hessian at u = 0 of
    u -> loss_fn(theta + T u), by ``curvature.extreme_eigenvalues`` (thick-restart Lanczos,
    ``tol`` relative residual, at most ``max_steps`` Hessian-vector products; a miss is flagged
    ``converged=False`` with a ConvergenceWarning).

    Raises:
        ValueError: eta < 0 or a non-float64 theta.
    """
    if eta < 0:
        raise ValueError(f"eta={eta}: expected eta >= 0")
    if theta.dtype != torch.float64:
        raise ValueError(f"theta is {theta.dtype}; adaptive sharpness is computed in float64")
    x = theta.detach()
    scale = x.abs() + eta

    def scaled(u: torch.Tensor) -> torch.Tensor:
        return loss_fn(x + scale * u)

    res = curvature.extreme_eigenvalues(scaled, torch.zeros_like(x), k=1, which="largest", tol=tol, max_steps=max_steps,
                                        on_fail="warn", seed=seed)
    return AdaptiveSharpness(float(res.eigenvalues[0]), float(res.residuals[0]), int(res.num_hvps), bool(res.converged),
                             float(eta))


def pac_bayes_sigma(error_fn: ErrorFn, theta: torch.Tensor, *, drop: float = 0.1, epsilon: float = 1e-3,
                    draws: int = 10, iterations: int = 20, sigma_max: float = 1e3, seed: int = 0) -> PacBayesSigma:
    """Jiang et al.'s magnitude-aware sigma: the largest sigma with
    E[error(theta + u)] - error(theta) <= ``drop``, u_i = sigma |theta_i| z_i + epsilon z'_i, z, z' ~ N(0, 1).

    error_fn: parameter vectors [M, P] -> training error fractions [M] (e.g. ``population.evaluate``
    of ``unflatten(thetas)``). The expectation is the mean over ``draws`` perturbations whose normal
    draws are fixed for every sigma (common random numbers, so the estimated drop is a deterministic
    function of sigma). The bracket starts at [0, 1], doubles its top until the drop exceeds
    ``drop`` (up to ``sigma_max``; beyond it, ``sigma_above`` is inf) and is then halved
    ``iterations`` times. Cost: about ``iterations`` + log2(sigma_above) + 2 evaluations of
    ``draws`` perturbed networks. A drop above ``drop`` already at sigma = 0 (from the epsilon term
    alone) gives sigma = 0.

    Raises:
        ValueError: drop not in (0, 1], epsilon < 0, draws < 1, iterations < 1, a non-finite error.
    """
    if not 0 < drop <= 1 or epsilon < 0 or draws < 1 or iterations < 1:
        raise ValueError(f"drop={drop}, epsilon={epsilon}, draws={draws}, iterations={iterations}: expected "
                         "0 < drop <= 1, epsilon >= 0, draws >= 1, iterations >= 1")
    x = theta.detach()
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(2, draws, x.numel(), generator=gen, dtype=x.dtype).to(x.device)
    base = float(error_fn(x[None])[0])
    if not math.isfinite(base):
        raise ValueError(f"the training error at theta is {base}; the PAC-Bayes sigma needs a classification error")
    low, low_drop = 0.0, _mean_drop(error_fn, x, 0.0, z, epsilon, base)
    evaluations = 1
    if low_drop > drop:
        return PacBayesSigma(0.0, 0.0, math.inf, base, low_drop, drop, epsilon, draws, evaluations)
    high = 1.0
    while True:
        high_drop = _mean_drop(error_fn, x, high, z, epsilon, base)
        evaluations += 1
        if high_drop > drop:
            break
        low, low_drop = high, high_drop
        if high >= sigma_max:
            return PacBayesSigma(low, math.inf, 1.0 / low**2, base, low_drop, drop, epsilon, draws, evaluations)
        high *= 2.0
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        middle_drop = _mean_drop(error_fn, x, middle, z, epsilon, base)
        evaluations += 1
        if middle_drop <= drop:
            low, low_drop = middle, middle_drop
        else:
            high = middle
    flatness = math.inf if low == 0 else 1.0 / low**2
    return PacBayesSigma(low, high, flatness, base, low_drop, drop, epsilon, draws, evaluations)


def _mean_drop(error_fn: ErrorFn, x: torch.Tensor, sigma: float, z: torch.Tensor, epsilon: float, base: float) -> float:
    """Mean training error of the perturbed networks x + sigma |x| z[0] + epsilon z[1] [draws, P], minus
    ``base`` (a non-finite error counts as 1)."""
    errors = error_fn(x + sigma * x.abs() * z[0] + epsilon * z[1])
    return float(torch.nan_to_num(errors, nan=1.0).mean()) - base
