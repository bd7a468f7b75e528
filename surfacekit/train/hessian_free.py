"""Hessian-free optimization (Martens 2010, "Deep learning via Hessian-free optimization"), full batch,
batched over the members of a population.

One outer iteration per member, all members at once (:func:`hessian_free_iteration`):

1. F and g = grad F on the full training set (F: data loss + (weight_decay/2)|theta|^2);
2. truncated CG (:mod:`surfacekit.train.conjugate_gradient`) on ``(B + lambda I) p = -g`` with B the
   generalized Gauss-Newton matrix (products ``J^T H_z J v``, :mod:`surfacekit.curvature.ggn`; PSD for
   cross-entropy and squared error) or, with ``curvature="hessian"``, the exact Hessian (CG then
   stops at the first direction of non-positive curvature); started from ``warm_start`` x the
   previous CG solution (Martens: 0.95) and stopped by Martens' relative-progress rule
   (Section 4.4: ``k = max(10, 0.1 i)``, ``epsilon = 5e-4``) or after ``cg_max_iter`` steps;
3. CG backtracking (Section 4.6): among the iterates kept at ``i = ceil(1.3^j)`` and the last, walk
   back from the last while the next earlier one has a lower F;
4. Levenberg-Marquardt damping (Section 4.1): reduction ratio ``rho = (F(theta + p) - F) / phi(p)``
   with ``phi(p) = g^T p + 1/2 p^T (B + lambda I) p`` the damped quadratic model CG minimized;
   ``lambda x 3/2`` when ``rho < 1/4``, ``x 2/3`` when ``rho > 3/4``;
5. an Armijo backtracking line search on the chosen p: ``alpha = 1, beta alpha, ...`` until
   ``F(theta + alpha p) <= F + c alpha g^T p`` (c = 1e-2, beta = 0.8); after ``max_line_search``
   rejections the step is dropped (``alpha = 0``).

What is left out of Martens' recipe: curvature minibatches (the whole training set is used for
both the gradient and the products) and the diagonal preconditioner of CG.

Cost per outer iteration: one gradient, one curvature graph, ``cg iterations`` products (each
about one gradient; counted per member in the ``curvature_products`` curve), and one loss
evaluation per backtracking and line-search trial.

No maintained package fits: the PyTorch implementations found (e.g. PyTorchHessianFree) are
optimizers over one module's parameters with one damping and one CG, so a population would need
K separate instances, a loop over members; the PyPI ``hessianfree`` package (2016) is for
numpy/Theano networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
from torch import Tensor

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, param_shapes
from surfacekit.population import Params, flatten
from surfacekit.train.common import TrainResult
from surfacekit.train.conjugate_gradient import conjugate_gradient
from surfacekit.train.full_batch import (
    Problem, curvature_operator, network_problem, objective_values, train_loop, values_and_gradients,
)

# CG also stops when its relative residual falls below this (an exactly solved system).
CG_RESIDUAL_TOL = 1e-10


@dataclass(frozen=True)
class Settings:
    """The hyperparameters of :func:`hessian_free_iteration` (``conf/trainer/hessian_free.yaml`` documents them)."""

    curvature: str = "gauss_newton"
    cg_max_iter: int = 250
    cg_tol: float = 5e-4
    warm_start: float = 0.95
    backtrack_growth: float = 1.3
    armijo: float = 1e-2
    armijo_shrink: float = 0.8
    max_line_search: int = 60

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Settings":
        return cls(**{name: type(getattr(cls, name))(cfg[name]) for name in cls.__dataclass_fields__})


@dataclass
class State:
    """Per-member state between outer iterations: theta [K, P], damping lambda [K], the previous CG
    solution [K, P] (the warm start) and the cumulative count of curvature products [K]."""

    theta: Tensor
    damping: Tensor
    previous: Tensor
    products: Tensor

    @classmethod
    def start(cls, theta: Tensor, damping: float) -> "State":
        k = theta.shape[0]
        return cls(theta.detach().clone(), torch.full((k,), float(damping), dtype=theta.dtype, device=theta.device),
                   torch.zeros_like(theta), torch.zeros(k, dtype=torch.int64, device=theta.device))

    def curves(self) -> dict[str, Tensor]:
        """Per-member values recorded at every evaluation: damping, curvature_products."""
        return {"damping": self.damping, "curvature_products": self.products}


@dataclass
class Step:
    """What one outer iteration did, per member [K]: F before and after, CG iterations and stop reason,
    the reduction ratio rho, the Armijo step size alpha (0: no step)."""

    loss_before: Tensor
    loss: Tensor
    cg_iterations: Tensor
    cg_stop: list[str]
    rho: Tensor
    step_size: Tensor


def _damped(curvature, damping: Tensor, v: Tensor) -> Tensor:
    """(B_k + lambda_k I) v_k row by row."""
    return curvature(v) + damping[:, None] * v


def backtrack(problem: Problem, theta: Tensor, cg, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Martens' CG backtracking: from each member's last iterate, move to the next earlier saved iterate
    while it has a lower F. Returns (p [K, P], F(theta + p) [K], phi(p) [K]). Cost: one loss evaluation of
    the population per step back (at least one)."""
    p, phi = cg.solution.clone(), cg.phi.clone()
    best = objective_values(problem, theta + p)
    walking = active.clone()
    for j in range(len(cg.saved) - 1, -1, -1):
        candidates = walking & cg.saved_valid[j]
        if not bool(walking.any()):
            break
        if not bool(candidates.any()):
            continue
        f = objective_values(problem, theta + cg.saved[j])
        better = candidates & (f < best)
        p[better], phi[better], best[better] = cg.saved[j][better], cg.saved_phi[j][better], f[better]
        walking &= ~(candidates & ~better)
    return p, best, phi


def armijo(problem: Problem, theta: Tensor, p: Tensor, f0: Tensor, f1: Tensor, slope: Tensor, settings: Settings,
           active: Tensor) -> tuple[Tensor, Tensor]:
    """Backtracking line search along p [K, P] from F = f0 [K] with F(theta + p) = f1 already known and
    directional derivative ``slope`` = g^T p [K]. Returns (alpha [K], F(theta + alpha p) [K]); alpha = 0
    where no trial passed or p is not a descent direction."""
    alpha = torch.ones_like(f0)
    f = f1.clone()
    searching = active & (slope < 0)
    ok = searching & torch.isfinite(f) & (f <= f0 + settings.armijo * alpha * slope)
    searching &= ~ok
    for _ in range(settings.max_line_search):
        if not bool(searching.any()):
            break
        alpha = torch.where(searching, alpha * settings.armijo_shrink, alpha)
        trial = objective_values(problem, theta + alpha[:, None] * p)
        f = torch.where(searching, trial, f)
        passed = searching & torch.isfinite(trial) & (trial <= f0 + settings.armijo * alpha * slope)
        ok |= passed
        searching &= ~passed
    alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
    return alpha, torch.where(ok, f, f0)


def hessian_free_iteration(problem: Problem, state: State, settings: Settings, active: Tensor | None = None) -> Step:
    """One outer Hessian-free iteration for every active member; updates ``state`` in place (see the
    module docstring for the algorithm). ``active`` [K] bool: inactive members are left unchanged."""
    theta = state.theta
    active = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device) if active is None else active
    f0, g = values_and_gradients(problem, theta)
    curvature = curvature_operator(problem, theta, settings.curvature, members=active)
    lam = state.damping
    cg = conjugate_gradient(partial(_damped, curvature, lam), -g, settings.warm_start * state.previous,
                            max_iter=settings.cg_max_iter, tol=CG_RESIDUAL_TOL, progress_tol=settings.cg_tol,
                            save_growth=settings.backtrack_growth, active=active)
    state.products += cg.products
    p, f1, phi = backtrack(problem, theta, cg, active)
    rho = torch.where(phi < 0, (f1 - f0) / torch.where(phi < 0, phi, -torch.ones_like(phi)),
                      torch.full_like(phi, -math.inf))
    rho = torch.where(torch.isfinite(f1), rho, torch.full_like(rho, -math.inf))
    factor = torch.where(rho < 0.25, 1.5, torch.where(rho > 0.75, 2.0 / 3.0, 1.0)).to(lam.dtype)
    state.damping = torch.where(active, lam * factor, lam)
    alpha, f_new = armijo(problem, theta, p, f0, f1, (g * p).sum(dim=1), settings, active)
    state.theta = torch.where(active[:, None], theta + alpha[:, None] * p, theta)
    state.previous = torch.where(active[:, None], cg.solution, state.previous)
    return Step(loss_before=f0, loss=torch.where(active, f_new, f0), cg_iterations=cg.iterations, cg_stop=cg.stop,
                rho=rho, step_size=alpha)


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """trainer.weight_decay on every parameter (the optimizer group is not used)."""
    return {name: float(trainer_cfg["weight_decay"]) for name in param_shapes(spec)}


def _iterate(problem: Problem, state: State, active: Tensor, settings: Settings) -> dict[str, Tensor]:
    step = hessian_free_iteration(problem, state, settings, active)
    return {"loss": step.loss, "cg_iterations": step.cg_iterations, "rho": step.rho, "step_size": step.step_size}


def train(
    spec: MLPSpec,
    data: Dataset,
    params: Params,
    seeds: list[int],
    optimizer_cfg: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    loss: str,
    chunk_size: int | None = None,
    progress: bool = True,
    lr_scale: torch.Tensor | None = None,
    objective: str = "trained",
    bn_mode: str = "batch",
) -> TrainResult:
    """Hessian-free training of stacked ``params`` [K, ...] on the full training set of ``data``.

    trainer_cfg as composed from ``conf/trainer/hessian_free.yaml``: ``epochs`` outer iterations,
    eval_every, grad_tol, divergence_loss, snapshots and the :class:`Settings` fields, ``damping``
    (initial lambda) and ``weight_decay``. The optimizer group is not used; ``seeds`` only size the
    population (nothing is random). Extra curves [K, T]: ``cg_iterations``, ``rho`` and ``step_size``
    (Armijo alpha) of each member's latest iteration, ``damping`` (lambda now) and
    ``curvature_products`` (cumulative products with the curvature matrix, per member).

    Raises:
        ValueError: population.lr_scale given (no learning rate), batch norm, an invalid objective or
            bn_mode.
    """
    if lr_scale is not None:
        raise ValueError("population.lr_scale is not supported by trainer=hessian_free (it has no learning rate)")
    state = State.start(flatten(params), float(trainer_cfg["damping"]))
    problem = network_problem(spec, data.x_train, data.y_train, loss, float(trainer_cfg["weight_decay"]))
    return train_loop(spec, data, params, optimizer_cfg, trainer_cfg, loss, problem=problem, state=state,
                      iterate=partial(_iterate, settings=Settings.from_config(trainer_cfg)), chunk_size=chunk_size,
                      progress=progress, objective=objective, bn_mode=bn_mode)
