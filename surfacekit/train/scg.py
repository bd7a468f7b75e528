"""Scaled conjugate gradient (Moller 1993, "A scaled conjugate gradient algorithm for fast supervised
learning", Neural Networks 6), full batch, batched over the members of a population.

Moller's algorithm, with the exact Hessian-vector product ``s = H p`` (:mod:`surfacekit.curvature`,
one product for all members) in place of his finite difference ``(E'(w + sigma p) - E'(w)) / sigma``;
per member k and iteration (his step numbers):

2. after a successful step: ``delta = p^T H p``;
3. scale: ``delta += (lambda - lambda_bar) |p|^2``;
4. if ``delta <= 0`` (H + lambda I not positive definite along p): ``lambda_bar = 2 (lambda - delta / |p|^2)``,
   ``delta = -delta + lambda |p|^2``, ``lambda = lambda_bar``;
5. ``mu = p^T r`` (r = -E'), step ``alpha = mu / delta``;
6. comparison ``Delta = 2 delta (E(w) - E(w + alpha p)) / mu^2``;
7. if ``Delta >= 0``: take the step, ``r_new = -E'(w_new)``, ``lambda_bar = 0``; restart (p = r_new) every
   N iterations, else ``p = r_new + beta p`` with ``beta = (|r_new|^2 - r_new^T r) / mu``; if ``Delta >= 0.75``:
   ``lambda = lambda / 4``. Otherwise ``lambda_bar = lambda`` and the step is not taken;
8. if ``Delta < 0.25``: ``lambda = lambda + delta (1 - Delta) / |p|^2``.

The scale update is **Moller's** (lambda / 4 and lambda + delta (1 - Delta) / |p|^2), not Netlab's
(x 1/2 and x 4). Two safeguards the paper does not state: a direction with ``p^T r <= 0`` (not a
descent direction) is replaced by r before its product is taken (as Netlab does), and a non-finite
trial loss counts as ``Delta = -1``. A member with r = 0 is stationary and is left alone. With
``lambda_1 = 0`` on a convex quadratic every step is accepted with ``Delta = 1`` and the iterates are
those of linear conjugate gradient (tested).

Cost per iteration: one HVP after a successful step, one loss evaluation, one gradient after a
successful step (``hvps`` counts the products per member).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

import torch
from torch import Tensor

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, param_shapes
from surfacekit.population import Params, flatten
from surfacekit.train.common import TrainResult
from surfacekit.train.full_batch import (
    Problem, curvature_operator, network_problem, objective_values, train_loop, values_and_gradients,
)


@dataclass
class State:
    """Per-member SCG state: theta [K, P], F [K], r = -grad F [K, P], direction p [K, P], scales lambda and
    lambda_bar [K], delta [K], success [K] (bool), iterations [K] (Moller's k), hvps [K] (cumulative)."""

    theta: Tensor
    loss: Tensor
    r: Tensor
    p: Tensor
    scale: Tensor
    scale_bar: Tensor
    delta: Tensor
    success: Tensor
    iterations: Tensor
    hvps: Tensor

    @classmethod
    def start(cls, problem: Problem, theta: Tensor, lambda_init: float) -> "State":
        """Moller's step 1 at theta [K, P]: p = r = -E'(theta), lambda = lambda_init, lambda_bar = 0."""
        loss, grad = values_and_gradients(problem, theta)
        k = theta.shape[0]
        zeros = torch.zeros(k, dtype=theta.dtype, device=theta.device)
        return cls(theta.detach().clone(), loss, -grad, -grad, zeros + float(lambda_init), zeros.clone(), zeros.clone(),
                   torch.ones(k, dtype=torch.bool, device=theta.device),
                   torch.zeros(k, dtype=torch.int64, device=theta.device),
                   torch.zeros(k, dtype=torch.int64, device=theta.device))

    def curves(self) -> dict[str, Tensor]:
        """Per-member values recorded at every evaluation: scale (lambda), hvps."""
        return {"scale": self.scale, "hvps": self.hvps}


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


def scg_iteration(problem: Problem, state: State, active: Tensor | None = None, *, restart_every: int) -> dict[str, Tensor]:
    """One SCG iteration (steps 2-8 of the module docstring) for every active member that is not
    stationary; updates ``state`` in place. Returns per-member values [K]: ``loss`` (F now),
    ``step_size`` (alpha; 0 where the step was rejected), ``comparison`` (Delta)."""
    s = state
    active = torch.ones_like(s.success) if active is None else active
    active = active & (_dot(s.r, s.r) > 0)
    fresh = active & s.success
    if bool(fresh.any()):
        uphill = fresh & (_dot(s.p, s.r) <= 0)
        s.p = torch.where(uphill[:, None], s.r, s.p)
        hp = curvature_operator(problem, s.theta, "hessian", members=fresh)(s.p)
        s.hvps += fresh
        s.delta = torch.where(fresh, _dot(s.p, hp), s.delta)
    pp = _dot(s.p, s.p)
    pp_safe = torch.where(active, pp, torch.ones_like(pp))
    delta = s.delta + (s.scale - s.scale_bar) * pp
    negative = active & (delta <= 0)
    scale_bar = torch.where(negative, 2.0 * (s.scale - delta / pp_safe), s.scale_bar)
    delta = torch.where(negative, -delta + s.scale * pp, delta)
    scale = torch.where(negative, scale_bar, s.scale)
    mu = _dot(s.p, s.r)
    mu_safe = torch.where(active, mu, torch.ones_like(mu))
    alpha = torch.where(active, mu / torch.where(active, delta, torch.ones_like(delta)), torch.zeros_like(mu))
    trial_theta = s.theta + alpha[:, None] * s.p
    trial = objective_values(problem, trial_theta)
    comparison = 2.0 * delta * (s.loss - trial) / mu_safe.pow(2)
    comparison = torch.where(torch.isfinite(comparison), comparison, torch.full_like(comparison, -1.0))
    ok = active & (comparison >= 0)
    s.iterations += active
    if bool(ok.any()):
        loss_new, grad_new = values_and_gradients(problem, torch.where(ok[:, None], trial_theta, s.theta))
        r_new = -grad_new
        restart = ok & (s.iterations % restart_every == 0)
        beta = (_dot(r_new, r_new) - _dot(r_new, s.r)) / mu_safe
        p_new = torch.where(restart[:, None], r_new, r_new + beta[:, None] * s.p)
        s.theta = torch.where(ok[:, None], trial_theta, s.theta)
        s.loss = torch.where(ok, loss_new, s.loss)
        s.p = torch.where(ok[:, None], p_new, s.p)
        s.r = torch.where(ok[:, None], r_new, s.r)
    scale_bar = torch.where(ok, torch.zeros_like(scale_bar), torch.where(active, scale, scale_bar))
    scale = torch.where(ok & (comparison >= 0.75), scale / 4.0, scale)
    scale = torch.where(active & (comparison < 0.25), scale + delta * (1.0 - comparison) / pp_safe, scale)
    s.scale, s.scale_bar = torch.where(active, scale, s.scale), scale_bar
    s.delta = torch.where(active, delta, s.delta)
    s.success = torch.where(active, ok, s.success)
    return {"loss": s.loss, "step_size": torch.where(ok, alpha, torch.zeros_like(alpha)),
            "comparison": torch.where(active, comparison, torch.full_like(comparison, float("nan")))}


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """trainer.weight_decay on every parameter (the optimizer group is not used)."""
    return {name: float(trainer_cfg["weight_decay"]) for name in param_shapes(spec)}


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
    """SCG training of stacked ``params`` [K, ...] on the full training set of ``data``.

    trainer_cfg as composed from ``conf/trainer/scg.yaml``: ``epochs`` SCG iterations, eval_every,
    grad_tol, divergence_loss, snapshots, lambda_init, restart_every (null: P) and weight_decay. The
    optimizer group is not used and nothing is random. Extra curves [K, T]: ``step_size`` and
    ``comparison`` (Delta) of each member's latest iteration, ``scale`` (lambda now), ``hvps``
    (cumulative Hessian-vector products per member).

    Raises:
        ValueError: population.lr_scale given (no learning rate), batch norm, an invalid objective or
            bn_mode.
    """
    if lr_scale is not None:
        raise ValueError("population.lr_scale is not supported by trainer=scg (it has no learning rate)")
    theta = flatten(params)
    restart = trainer_cfg["restart_every"]
    restart = theta.shape[1] if restart is None else int(restart)
    problem = network_problem(spec, data.x_train, data.y_train, loss, float(trainer_cfg["weight_decay"]))
    state = State.start(problem, theta, float(trainer_cfg["lambda_init"]))
    return train_loop(spec, data, params, optimizer_cfg, trainer_cfg, loss, problem=problem, state=state,
                      iterate=partial(scg_iteration, restart_every=restart), chunk_size=chunk_size,
                      progress=progress, objective=objective, bn_mode=bn_mode)
