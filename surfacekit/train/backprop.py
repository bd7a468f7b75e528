"""Plain backprop training of a whole population at once.

The population loss is the sum of member losses, each on the member's own minibatch, so one
element-wise optimizer over the stacked tensors equals K independent runs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, forward, member_losses
from surfacekit.optim import build_optimizer, learning_rate
from surfacekit.population import Params
from surfacekit.train.common import (
    Freezer, Recorder, TrainResult, epochs_with_checkpoints, member_generators, minibatches,
)


@torch.no_grad()
def scale_updates(params: Params, before: Params, scale: torch.Tensor) -> None:
    """params <- before + scale_k * (params - before), member by member (scale [K])."""
    for name, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        p.copy_(before[name] + scale.reshape(shape) * (p - before[name]))


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
) -> TrainResult:
    """Train stacked ``params`` [K, ...] on ``data`` (already on the target device and dtype).

    trainer_cfg: epochs, batch_size (null: full batch), eval_every (epochs), grad_tol (a member whose
    full-data gradient norm falls below it is converged and frozen; 0 disables), divergence_loss
    (a member whose minibatch loss is non-finite or above it is marked diverged and frozen), snapshots.
    lr_scale [K]: per-member learning-rate multipliers, applied by scaling each member's update (exact
    for every optimizer whose step is proportional to lr, i.e. all but rprop).
    """
    device = data.x_train.device
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    init_params = {k: v.detach().clone() for k, v in params.items()}
    optimizer = build_optimizer(leaves.values(), optimizer_cfg)
    gens = member_generators(seeds, device)
    freezer = Freezer(leaves)
    recorder = Recorder(spec, data, loss, chunk_size, bool(trainer_cfg.get("snapshots", False)))

    epochs = int(trainer_cfg["epochs"])
    batch_size = trainer_cfg.get("batch_size")
    eval_every = max(1, int(trainer_cfg.get("eval_every", 1)))
    grad_tol = float(trainer_cfg.get("grad_tol", 0.0))
    divergence_loss = float(trainer_cfg.get("divergence_loss", 1e10))
    n = data.x_train.shape[0]
    steps_per_epoch = 1 if batch_size is None else math.ceil(n / int(batch_size))
    k = len(seeds)
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    steps_taken = torch.zeros(k, dtype=torch.int64, device=device)
    step = 0

    def checkpoint(epoch: float) -> None:
        now = recorder.record(leaves, step, epoch)
        if grad_tol > 0:
            done = (now["grad_norm"] < grad_tol) & freezer.active
            converged.logical_or_(done)
            freezer.freeze(done, leaves)

    for epoch in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, "train", progress):
        for i, idx in enumerate(minibatches(n, batch_size, gens, device)):
            lr = learning_rate(optimizer_cfg, epoch + i / steps_per_epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
            losses = member_losses(forward(spec, leaves, x), y, loss)
            bad = (~torch.isfinite(losses) | (losses > divergence_loss)) & freezer.active
            if bool(bad.any()):
                diverged.logical_or_(bad)
                freezer.freeze(bad, leaves)
            active = freezer.active
            optimizer.zero_grad()
            torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
            before = None if lr_scale is None else {k: v.detach().clone() for k, v in leaves.items()}
            optimizer.step()
            if before is not None:
                scale_updates(leaves, before, lr_scale)
            freezer.restore(leaves)
            steps_taken += active
            step += 1

    return TrainResult(
        params={k: v.detach() for k, v in leaves.items()},
        init_params=init_params,
        diverged=diverged.cpu().numpy(),
        converged=converged.cpu().numpy(),
        steps=steps_taken.cpu().numpy(),
        **recorder.result_fields(),
    )
