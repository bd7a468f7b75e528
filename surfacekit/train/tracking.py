"""The sharpness during training (``trainer.track_sharpness=N``): lambda_max of every member's
full-batch training objective every N optimizer steps, stored as the group ``/tracked_sharpness``.

The objective is the one training minimizes (``objective.objective_fn``: the mean data loss over the
whole training set plus the trainer's L2 term, batch norm with full-training-set statistics), in
float64 on a float64 copy of the training data, whatever the training dtype. This is the quantity of
the edge-of-stability analysis (Cohen et al. 2021): under full-batch gradient descent with step eta
it rises until it reaches about 2 / eta. Note the loss convention: ``model.loss=mse`` has no factor
1/2, so its lambda_max is twice that of 0.5 |f - y|^2 at the same point.

Method: explicitly restarted Lanczos (``curvature.lanczos`` and ``curvature.ritz``, full
reorthogonalization), warm-started from the member's previous top Ritz vector plus a random
component of norm 0.1 (so that an eigenvalue overtaking the previous top one is still found), with
8, 16, 32, ... steps per restart from the best Ritz vector until the Ritz residual |H y - lambda y|
is at most ``sharpness_tol * |lambda|`` (so lambda is within that relative error of an eigenvalue) or
``sharpness_max_hvps`` products are spent. A warm start near the top eigenvector typically needs
one short run; a cold start needs several. Every check's products are counted and stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from surfacekit import curvature, jobs
from surfacekit.data import Dataset
from surfacekit.objective import l2_coefficients, objective_fn
from surfacekit.population import Params, flatten
from surfacekit.seeds import stream_generators
from surfacekit.train.common import ResultGroup, TrainResult

FIRST_STEPS = 8    # Lanczos steps of the first run of a check; doubled at every restart
MIX = 0.1          # norm of the random component added to a warm start


@dataclass
class Tracker:
    """Settings, the objective and the warm starts of the tracking; ``rows`` holds one entry per check:
    lambda_max, residual, hvps, converged [K] and step, epoch."""

    every: int
    tol: float
    max_hvps: int
    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    generators: list[torch.Generator]
    info: dict[str, Any]
    vectors: list[torch.Tensor | None]
    rows: dict[str, list] = field(default_factory=lambda: {k: [] for k in (
        "lambda_max", "residual", "hvps", "converged", "step", "epoch")})


def top_eigenvalue(loss_fn, theta: torch.Tensor, start: torch.Tensor | None, generator: torch.Generator,
                   tol: float, max_hvps: int) -> tuple[float, float, int, bool, torch.Tensor]:
    """The largest Hessian eigenvalue of ``loss_fn`` at ``theta`` [P] (float64) by restarted Lanczos.

    start: a warm start [P] (the previous top Ritz vector) or None (random). Returns (lambda_max,
    residual norm, Hessian-vector products, converged, Ritz vector [P]); a non-finite loss, gradient
    or product (the curvature package's NonFiniteError) ends the run with converged False (and NaN
    when it came first).
    """
    size = theta.numel()
    noise = torch.randn(size, generator=generator, dtype=theta.dtype).to(theta.device)
    v = noise if start is None else start + MIX * noise / noise.norm()
    steps, value, residual, vector = FIRST_STEPS, float("nan"), float("inf"), v
    try:
        operator = curvature.hessian_operator(loss_fn, theta)
    except curvature.NonFiniteError:  # a non-finite loss or gradient at theta
        return value, residual, 0, False, vector
    while operator.num_hvps < max_hvps:
        try:
            run = curvature.lanczos(operator, v, num_steps=min(steps, max_hvps - operator.num_hvps))
        except curvature.NonFiniteError:
            break
        ritz_values, ritz_vectors, residuals = curvature.ritz(run)
        value, residual, vector = float(ritz_values[-1]), float(residuals[-1]), ritz_vectors[-1]
        if residual <= tol * abs(value) or run.num_hvps == size:
            return value, residual, operator.num_hvps, True, vector
        v, steps = vector, 2 * steps
    return value, residual, operator.num_hvps, False, vector


def start(trainer_cfg: Mapping[str, Any], optimizer_cfg: Mapping[str, Any], spec, data: Dataset, loss: str,
          seeds: list[int], objective: str, chunk_size: int | None, params: Params) -> Tracker | None:
    """A tracker for ``trainer.track_sharpness`` (None when it is 0) on the job's ``objective``, with its
    first check at the starting ``params`` [K, ...] (step 0)."""
    every = int(trainer_cfg.get("track_sharpness", 0) or 0)
    if every <= 0:
        return None
    x, y = data.x_train.to(torch.float64), data.y_train
    y = y.to(torch.float64) if y.is_floating_point() else y
    trainer = {"method": "backprop", **dict(trainer_cfg)}
    loss_fn = objective_fn(spec, x, y, loss, optimizer_cfg=optimizer_cfg, trainer_cfg=trainer, objective=objective,
                           bn_mode="batch", chunk_size=chunk_size)
    l2 = l2_coefficients(spec, trainer["method"], optimizer_cfg, trainer, objective)
    info = {"every": every, "tol": float(trainer_cfg["sharpness_tol"]), "max_hvps": int(trainer_cfg["sharpness_max_hvps"]),
            "objective": objective, "weight_decay": max(l2.values(), default=0.0), "bn_mode": "batch",
            "dtype": "float64", "split": "train", "num_examples": int(x.shape[0]),
            "method": "warm-started Lanczos, restarted from the top Ritz vector (8, 16, ... steps)",
            "units": "loss per squared parameter unit; model.loss=mse has no factor 1/2"}
    tracker = Tracker(every, info["tol"], info["max_hvps"], loss_fn, stream_generators(seeds, "lanczos", x.device),
                      info, [None] * len(seeds))
    observe(tracker, params, 0, 0.0, torch.ones(len(seeds), dtype=torch.bool))
    return tracker


def observe(t: Tracker, params: Params, step: int, epoch: float, active: torch.Tensor, force: bool = False) -> None:
    """Measure every active member when ``step`` is a multiple of the period (or ``force``); frozen
    members get NaN."""
    if (step % t.every and not force) or (t.rows["step"] and t.rows["step"][-1] == step):
        return
    thetas = flatten({n: p.detach() for n, p in params.items()}).to(torch.float64)
    k = thetas.shape[0]
    row = {"lambda_max": np.full(k, np.nan), "residual": np.full(k, np.nan), "hvps": np.zeros(k, dtype=np.int64),
           "converged": np.zeros(k, dtype=bool)}
    for i in range(k):
        if not bool(active[i]) or not bool(torch.isfinite(t.loss_fn(thetas[i]))):
            continue
        value, residual, hvps, ok, vector = top_eigenvalue(t.loss_fn, thetas[i], t.vectors[i], t.generators[i],
                                                           t.tol, t.max_hvps)
        row["lambda_max"][i], row["residual"][i], row["hvps"][i], row["converged"][i] = value, residual, hvps, ok
        t.vectors[i] = vector
    for name, value in row.items():
        t.rows[name].append(value)
    t.rows["step"].append(step)
    t.rows["epoch"].append(epoch)


def finish(t: Tracker, result: TrainResult, params: Params, step: int, epoch: float, active: torch.Tensor) -> TrainResult:
    """Measure the final parameters (if the last check was earlier) and add the group
    ``tracked_sharpness`` to ``result``: lambda_max, residual, hvps, converged [K, S] at step, epoch [S];
    attributes every, tol, max_hvps, objective, weight_decay, bn_mode, dtype, split, num_examples,
    method, units, and not_converged (the count of checks that missed the tolerance)."""
    observe(t, params, step, epoch, active, force=True)
    arrays = {name: np.stack(t.rows[name], axis=1) for name in ("lambda_max", "residual", "hvps", "converged")}
    arrays.update(step=np.asarray(t.rows["step"]), epoch=np.asarray(t.rows["epoch"], dtype=np.float64))
    missed = int((~arrays["converged"] & np.isfinite(arrays["lambda_max"])).sum())
    if missed:
        checked = int(np.isfinite(arrays["lambda_max"]).sum())
        jobs.warn(f"trainer.track_sharpness: {missed} of {checked} lambda_max checks did not reach trainer.sharpness_tol="
                  f"{t.tol:g} within trainer.sharpness_max_hvps={t.max_hvps} products (estimates from below, flagged in "
                  "/tracked_sharpness/converged)")
    dims = {"tracked_sharpness": "member,check", "tracked_sharpness/step": "check", "tracked_sharpness/epoch": "check"}
    result.groups["tracked_sharpness"] = ResultGroup(arrays, dims, {**t.info, "not_converged": missed})
    return result
