"""Full-batch objectives of a population as batched functions of member rows ``theta`` [K, P].

The second-order trainers (``hessian_free``, ``scg``) work on flat parameter rows, one per member,
and need per-member values, gradients and curvature products. A :class:`Problem` holds the
objective as outputs and a loss on them, ``F_k(theta_k) = output_loss(output_fn(theta))[k] +
(l2 / 2) |theta_k|^2``, where member k's outputs depend on row k only; the population objective
is the sum over members, so its gradient and curvature are block diagonal and one batched product
serves every member. A network gives one with :func:`network_problem`; tests build others (a
quadratic, Rosenbrock's function as least squares) the same way.

Curvature products come from :mod:`surfacekit.curvature`: the exact Hessian
(``hessian_operator``) or the generalized Gauss-Newton matrix (``gauss_newton_operator``), in
both cases plus ``l2 I``. The whole training set is one batch (no chunking): memory is that of
one forward and two backward graphs over all N examples for all K members. :func:`train_loop` is
the training loop both trainers share (evaluations, freezing, curves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from surfacekit.curvature import gauss_newton_operator, hessian_operator
from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, forward, member_losses
from surfacekit.objective import check_choices, l2_coefficients as objective_l2
from surfacekit.population import Params, unflatten
from surfacekit.train.common import Freezer, Recorder, TrainResult, epochs_with_checkpoints

CURVATURES = ("gauss_newton", "hessian")


@dataclass(frozen=True)
class Problem:
    """A population objective: ``output_fn(theta [K, P]) -> outputs [K, ...]`` (row k's outputs depend
    on row k only), ``output_loss(outputs) -> [K]`` (per-member losses, convex in the outputs for a
    PSD Gauss-Newton matrix) and an L2 coefficient ``l2`` on every parameter."""

    output_fn: Callable[[Tensor], Tensor]
    output_loss: Callable[[Tensor], Tensor]
    l2: float = 0.0


def _network_outputs(spec: MLPSpec, x: Tensor, theta: Tensor) -> Tensor:
    return forward(spec, unflatten(theta, spec), x.to(theta.dtype))  # float64 for curvature products


def network_problem(spec: MLPSpec, x: Tensor, y: Tensor, loss: str, l2: float = 0.0) -> Problem:
    """The mean data loss of every member over (x [N, in], y [N] or [N, C]) plus (l2/2)|theta|^2, with
    theta rows in the canonical flat order (``population.flatten``).

    Raises:
        ValueError: a batch-norm spec (plain MLPs and maxout only).
    """
    if spec.batch_norm:
        raise ValueError("the full-batch second-order trainers support plain MLPs and maxout (model.batch_norm=false)")
    return Problem(partial(_network_outputs, spec, x), partial(member_losses, targets=y, loss=loss), float(l2))


def objective_values(problem: Problem, theta: Tensor) -> Tensor:
    """F_k for every row of theta [K, P]: [K], without gradients. Cost: one forward pass."""
    with torch.no_grad():
        return _values(problem, theta)


def _values(problem: Problem, theta: Tensor) -> Tensor:
    f = problem.output_loss(problem.output_fn(theta))
    return f + 0.5 * problem.l2 * theta.pow(2).sum(dim=1) if problem.l2 else f


def values_and_gradients(problem: Problem, theta: Tensor) -> tuple[Tensor, Tensor]:
    """(F [K], grad F [K, P]) at theta [K, P], detached. Cost: one forward and one backward pass."""
    leaf = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f = _values(problem, leaf)
        (grad,) = torch.autograd.grad(f.sum(), leaf)
    return f.detach(), grad.detach()


def curvature_operator(problem: Problem, theta: Tensor, curvature: str,
                       members: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``v [K, P] -> (B_k + l2 I) v_k`` row by row at theta [K, P], B the exact Hessian (``"hessian"``,
    ``curvature.hessian_operator``) or the generalized Gauss-Newton matrix (``"gauss_newton"``,
    ``curvature.gauss_newton_operator``) of the output loss; for the rows in ``members`` [K] bool
    (default all), 0 for the others (e.g. diverged or converged members, whose point need not be
    finite).

    Products follow :mod:`surfacekit.curvature`'s precision policy: computed in float64 (theta and the
    problem's data upcast; ``output_fn`` must follow theta's dtype, as :func:`network_problem`'s does)
    and returned in theta's dtype. Building it costs a forward and a backward pass with a retained
    graph; each product then about one gradient, for all selected members at once.

    Raises:
        ValueError: an unknown curvature.
        surfacekit.curvature.NonFiniteError: a selected member's loss, gradient or product is not finite.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is invalid: expected one of {list(CURVATURES)}")
    rows = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device) if members is None else members
    return partial(_apply, _operator(problem, theta.detach()[rows].to(torch.float64), curvature), problem.l2, rows)


def _operator(problem: Problem, theta: Tensor, curvature: str) -> Callable[[Tensor], Tensor]:
    """The curvature of the selected rows theta [k, P] (float64) as a map of flat [k * P] vectors."""
    k, p = theta.shape
    if k == 0:
        return lambda v: torch.zeros_like(v)
    if curvature == "hessian":
        return hessian_operator(lambda t: problem.output_loss(problem.output_fn(t.view(k, p))).sum(), theta.reshape(-1))
    return gauss_newton_operator(lambda t: problem.output_fn(t.view(k, p)), lambda z: problem.output_loss(z).sum(),
                                 theta.reshape(-1))


def _apply(operator: Callable[[Tensor], Tensor], l2: float, rows: Tensor, v: Tensor) -> Tensor:
    out = torch.zeros_like(v)
    selected = v[rows]
    product = operator(selected.to(torch.float64).reshape(-1)).view(selected.shape).to(v.dtype)
    out[rows] = product + l2 * selected
    return out


def train_loop(spec: MLPSpec, data: Dataset, params: Params, optimizer_cfg: Mapping[str, Any],
               trainer_cfg: Mapping[str, Any], loss: str, *, problem: Problem, state: Any,
               iterate: Callable[..., dict[str, Tensor]], chunk_size: int | None, progress: bool, objective: str,
               bn_mode: str) -> TrainResult:
    """The loop the full-batch trainers share: ``epochs`` iterations of ``iterate(problem, state, active)``
    (it updates ``state.theta`` [K, P] in place for the active members and returns per-member values [K]:
    ``loss`` (F after the iteration) and the method's curves), with the shared evaluations
    (``common.Recorder``), freezing (grad_tol, divergence_loss) and snapshots.

    Extra curves [K, T] at every evaluation: the values ``iterate`` returned at each member's latest
    iteration (NaN before the first) and ``state.curves()`` (e.g. cumulative products).

    Raises:
        ValueError: an invalid objective or bn_mode.
    """
    check_choices(objective, bn_mode)
    epochs, eval_every = int(trainer_cfg["epochs"]), max(1, int(trainer_cfg["eval_every"]))
    grad_tol, divergence_loss = float(trainer_cfg["grad_tol"]), float(trainer_cfg["divergence_loss"])
    init_params = {name: v.detach().clone() for name, v in params.items()}
    l2 = objective_l2(spec, trainer_cfg["method"], optimizer_cfg, trainer_cfg, objective)
    recorder = Recorder(spec, data, loss, chunk_size, bool(trainer_cfg["snapshots"]), l2, bn_mode)
    freezer = Freezer({"theta": state.theta})
    k, device = state.theta.shape[0], state.theta.device
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    steps = torch.zeros(k, dtype=torch.int64, device=device)
    last: dict[str, Tensor] = {}
    rows: dict[str, list[np.ndarray]] = {}

    def checkpoint(epoch: float) -> None:
        now = recorder.record(unflatten(state.theta, spec), int(steps.max()), epoch)
        for name, value in {**last, **state.curves()}.items():
            rows.setdefault(name, [np.full(k, np.nan)] * len(recorder.steps[:-1])).append(value.cpu().numpy().copy())
        if grad_tol > 0:
            done = (now["grad_norm"] < grad_tol) & freezer.active
            converged.logical_or_(done)
            freezer.freeze(done, {"theta": state.theta})

    for _ in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, trainer_cfg["method"], progress):
        active = freezer.active.clone()
        values = iterate(problem, state, active)
        bad = active & (~torch.isfinite(values["loss"]) | (values["loss"] > divergence_loss))
        diverged |= bad
        freezer.freeze(bad, {"theta": state.theta})
        freezer.restore({"theta": state.theta})
        steps += active
        for name, value in values.items():
            if name != "loss":
                old = last.get(name, torch.full((k,), math.nan, dtype=torch.float64, device=device))
                last[name] = torch.where(active, value.to(torch.float64), old)

    final = {name: v.detach().clone() for name, v in unflatten(state.theta, spec).items()}
    return TrainResult(params=final, init_params=init_params, diverged=diverged.cpu().numpy(),
                       converged=converged.cpu().numpy(), steps=steps.cpu().numpy(), **recorder.result_fields(),
                       extra_curves={name: np.stack(values, axis=1) for name, values in rows.items()})
