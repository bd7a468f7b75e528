"""Plain backprop training of a whole population at once.

The population loss is the sum of member losses, each on the member's own minibatch, so one
element-wise optimizer over the stacked tensors equals K independent runs. With batch norm, every
training step normalizes with its minibatch's moments and updates each member's running statistics
as torch does; at the end the exact full-training-set statistics are stored for evaluation mode.
A plain MLP (no batch norm, residual connections or maxout) with loss cross_entropy or mse takes the
fused step (``trainer.fused_step``, :mod:`surfacekit.models.fused`): the same gradients by a
hand-written forward and backward pass into buffers reused from step to step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from surfacekit.data import Dataset
from surfacekit.models import Spec, forward, fused, init_statistics, member_losses, param_shapes, update_statistics
from surfacekit.objective import check_choices, l2_coefficients as objective_l2
from surfacekit.optim import build_optimizer, coupled_weight_decay, learning_rate, optimizer_config
from surfacekit.population import Params, gather_rows
from surfacekit.seeds import stream_generators
from surfacekit.train import coupling as couplings, tracking
from surfacekit.train.common import (
    Freezer, Recorder, TrainResult, epochs_with_checkpoints, final_buffers, minibatches,
)


def l2_coefficients(spec: Spec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """The optimizer's coupled weight decay on every parameter (``optim.coupled_weight_decay``; 0 for rprop)."""
    wd = coupled_weight_decay(optimizer_config(optimizer_cfg))
    return {name: wd for name in param_shapes(spec)}


@torch.no_grad()
def scale_updates(params: Params, before: Params, scale: torch.Tensor) -> None:
    """params <- before + scale_k * (params - before), member by member (scale [K])."""
    for name, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        p.copy_(before[name] + scale.reshape(shape) * (p - before[name]))


def _batch_sizes(n: int, batch_size: int | None) -> set[int]:
    if batch_size is None or batch_size >= n:
        return {n}
    return {int(batch_size)} | ({n % int(batch_size)} if n % int(batch_size) else set())


def train(
    spec: Spec,
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
    statistics: Params | None = None,
) -> TrainResult:
    """Train stacked ``params`` [K, ...] on ``data`` (already on the target device and dtype).

    trainer_cfg (complete, as composed from ``conf/trainer/backprop.yaml``): epochs, batch_size (null:
    full batch), eval_every (epochs), grad_tol (a member whose full-data gradient norm falls below
    it is converged and frozen; 0 disables), divergence_loss (a member whose minibatch loss is
    non-finite or above it is marked diverged and frozen), snapshots, fused_step (plain MLPs with loss
    cross_entropy or mse: the hand-written forward and backward pass of :mod:`surfacekit.models.fused`
    instead of autograd; other networks and losses always use autograd). optimizer_cfg: an
    ``optimizer`` group config (missing fields take the YAML defaults).
    lr_scale [K]: per-member learning-rate multipliers, applied by scaling each member's update (exact
    for every optimizer whose step is proportional to lr, i.e. all but rprop).
    objective, bn_mode: the objective whose gradient norm is recorded and tested against grad_tol
    (``surfacekit.objective``): by default the trained one (data loss + the optimizer's coupled
    weight decay), batch norm with full-training-set statistics.
    statistics: initial running batch-norm statistics [K, width] (``layers.{i}.bn_mean`` / ``bn_var``;
    a warm start's, :mod:`surfacekit.warm_start`); None: torch's means 0 and variances 1.

    Raises:
        ValueError: batch norm with a batch of one example (running variance undefined), an invalid
            objective or bn_mode, or an invalid optimizer config (``optim.build_optimizer``).
    """
    check_choices(objective, bn_mode)
    device = data.x_train.device
    n, k = data.x_train.shape[0], len(seeds)
    epochs = int(trainer_cfg["epochs"])
    batch_size = trainer_cfg["batch_size"]
    if spec.batch_norm and min(_batch_sizes(n, batch_size)) < 2:
        raise ValueError(f"trainer.batch_size={batch_size} with {n} training examples leaves a batch of one example; "
                         "batch norm needs at least 2 per batch")
    eval_every = max(1, int(trainer_cfg["eval_every"]))
    grad_tol = float(trainer_cfg["grad_tol"])
    divergence_loss = float(trainer_cfg["divergence_loss"])
    optimizer_cfg = optimizer_config(optimizer_cfg)
    fused_step = bool(trainer_cfg["fused_step"]) and fused.supported(spec, loss)

    leaves = {name: v.detach().clone().requires_grad_(True) for name, v in params.items()}
    init_params = {name: v.detach().clone() for name, v in params.items()}
    running = init_statistics(spec, k, data.x_train.dtype, device)
    for name, value in (statistics or {}).items():
        running[name] = value.detach().to(running[name]).clone()
    optimizer = build_optimizer(leaves.values(), optimizer_cfg)
    gens = stream_generators(seeds, "order", device)
    freezer = Freezer({**leaves, **running})
    l2 = objective_l2(spec, "backprop", optimizer_cfg, trainer_cfg, objective)
    recorder = Recorder(spec, data, loss, chunk_size, bool(trainer_cfg["snapshots"]), l2, bn_mode)
    coupling = couplings.start(trainer_cfg, leaves, recorder)  # None unless trainer.coupling is set
    tracker = tracking.start(trainer_cfg, optimizer_cfg, spec, data, loss, seeds, objective, chunk_size, leaves)

    steps_per_epoch = 1 if batch_size is None else math.ceil(n / int(batch_size))
    tape = None  # the fused step's buffers, reused from step to step
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    steps_taken = torch.zeros(k, dtype=torch.int64, device=device)
    step = 0

    def checkpoint(epoch: float) -> None:
        now = recorder.record(leaves, step, epoch, running)
        if coupling is not None:
            couplings.record(coupling, leaves, step, epoch, freezer.active)
        if grad_tol > 0:
            done = (now["grad_norm"] < grad_tol) & freezer.active
            converged.logical_or_(done)
            freezer.freeze(done, {**leaves, **running})

    for epoch in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, "train", progress):
        for i, idx in enumerate(minibatches(n, batch_size, gens, device)):
            lr = learning_rate(optimizer_cfg, epoch + i / steps_per_epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if fused_step:  # the minibatch gathered into, and every product written over, the last step's buffers
                losses, tape = fused.forward(spec, leaves, data.x_train, data.y_train, loss, index=idx, reuse=tape)
                moments = {}
            else:
                x, y = (data.x_train, data.y_train) if idx is None else (gather_rows(data.x_train, idx),
                                                                         gather_rows(data.y_train, idx))
                outputs, moments = forward(spec, leaves, x, return_statistics=True)
                losses = member_losses(outputs, y, loss)
            bad = (~torch.isfinite(losses) | (losses > divergence_loss)) & freezer.active
            if bool(bad.any()):
                diverged.logical_or_(bad)
                freezer.freeze(bad, {**leaves, **running})
            active = freezer.active
            optimizer.zero_grad()
            if fused_step:
                for name, grad in fused.gradients(spec, leaves, tape, active).items():
                    leaves[name].grad = grad
            else:
                torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
            keep = lr_scale is not None or coupling is not None
            before = {name: v.detach().clone() for name, v in leaves.items()} if keep else None
            optimizer.step()
            if lr_scale is not None:
                scale_updates(leaves, before, lr_scale)
            if coupling is not None:
                couplings.step(coupling, leaves, before, active)
            update_statistics(spec, running, moments, n if idx is None else idx.shape[1])
            freezer.restore({**leaves, **running})
            steps_taken += active
            step += 1
            if tracker is not None:
                tracking.observe(tracker, leaves, step, epoch + (i + 1) / steps_per_epoch, freezer.active)

    final = {name: v.detach() for name, v in leaves.items()}
    buffers = final_buffers(spec, final, data.x_train, chunk_size, running)
    recorder.finish(final, buffers)
    result = TrainResult(
        params=final,
        init_params=init_params,
        diverged=diverged.cpu().numpy(),
        converged=converged.cpu().numpy(),
        steps=steps_taken.cpu().numpy(),
        **recorder.result_fields(),
        buffers=buffers,
    )
    if coupling is not None:
        result = couplings.finish(coupling, result, divergence_loss)
    if tracker is not None:
        result = tracking.finish(tracker, result, final, step, float(recorder.epochs[-1]), freezer.active)
    return result
