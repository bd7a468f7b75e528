"""Difference target propagation (DTP) and vanilla target propagation (TP), batched over a population.

Notation (1-based hidden layers, as in Lee, Zhang, Fischer, Bengio 2015): h_0 = x, hidden layers
h_l = f_l(h_{l-1}) = act(W_l h_{l-1} + b_l) for l = 1..D, output o = W_{D+1} h_D + b_{D+1}. Forward
layer f_l is the model's ``layers.{l-1}``. Each hidden layer l = 2..D has an approximate inverse
g_l(h_l) = tanh(V_l h_l + c_l), stored as ``inverse.{l}.weight`` [K, w_{l-1}, w_l] and
``inverse.{l}.bias`` [K, w_{l-1}] (there is no inverse for layer 1).

Targets, computed on a minibatch with every forward quantity detached:

* top hidden layer: h^_D = h_D - eta * dC/dh_D, with C the output loss reduced over the batch as
  ``target_reduction`` says: ``sum`` (sum of per-example losses: the per-example target step is eta,
  whatever the batch size) or ``mean`` (the paper's batch-mean cost: the step is eta / B);
* DTP (``difference_correction=true``): h^_{l-1} = h_{l-1} - g_l(h_l) + g_l(h^_l);
* TP (``difference_correction=false``): h^_{l-1} = g_l(h^_l).

Updates: hidden forward layer l minimizes ||f_l(h_{l-1}) - h^_l||^2 (sum over units, mean over
the batch; input and target detached); the output layer minimizes the batch-mean loss with h_D
detached; inverse l minimizes ||g_l(f_l(h_{l-1} + e)) - (h_{l-1} + e)||^2, e ~ N(0, sigma^2), with
f_l detached. Schedule per epoch (as in the paper): a full pass of inverse updates over the
member's minibatches, then a full pass of forward updates over a fresh order.

Optimizer (``trainer.optimizer``, separate learning rates for forward and inverse parameters):
RMSprop with momentum in the paper's form, v <- d v + (1-d) g^2, m <- d m + (1-d) g (centered),
u <- mu u - lr g / sqrt(v - m^2 + eps), p <- p + u. It is element-wise, so the population equals K
separate runs. The job's ``optimizer`` config group is not used by this trainer.

Diagnostics: at every evaluation the per-layer cosine between the DTP update direction (gradient
of the layer's local loss) and the true backprop gradient of the batch-mean loss, both on the same
probe batch (the first ``batch_size`` training examples), is stored as ``cosine_layer{i}`` [K, T],
i the index of ``layers.{i}`` (the top hidden layer ``layers.{D-1}`` is exactly parallel).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, forward, init_weight, layer, layer_param_names, member_losses, param_name
from surfacekit.objective import check_choices
from surfacekit.population import Params
from surfacekit.seeds import STREAMS, derive_seed, stream_generators
from surfacekit.train.common import Freezer, Recorder, TrainResult, epochs_with_checkpoints, minibatches


class RootRMSprop:
    """RMSprop with momentum, optional centering and epsilon inside the square root (element-wise).

    v <- d v + (1 - d) g^2; centered: m <- d m + (1 - d) g and v' = v - m^2 (else v' = v);
    u <- mu u - lr g / sqrt(max(v', 0) + eps); p <- p + u. With eps = 0 and a constant lr this is
    ``torch.optim.RMSprop(alpha=d, momentum=mu, centered=..., eps=0)`` (tested); torch adds eps
    outside the root instead. ``lr`` may be a float or a [K] tensor of per-member learning rates.
    """

    def __init__(self, tensors: list[torch.Tensor], decay: float, momentum: float, eps: float, centered: bool):
        self.tensors = tensors
        self.decay, self.momentum, self.eps, self.centered = float(decay), float(momentum), float(eps), bool(centered)
        self.sq = [torch.zeros_like(t) for t in tensors]
        self.mean = [torch.zeros_like(t) for t in tensors]
        self.velocity = [torch.zeros_like(t) for t in tensors]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float | torch.Tensor) -> None:
        d = self.decay
        for p, g, sq, mean, vel in zip(self.tensors, grads, self.sq, self.mean, self.velocity):
            sq.mul_(d).addcmul_(g, g, value=1.0 - d)
            var = sq
            if self.centered:
                mean.mul_(d).add_(g, alpha=1.0 - d)
                var = sq - mean * mean
            rate = lr.reshape((-1,) + (1,) * (p.dim() - 1)) if torch.is_tensor(lr) else lr
            vel.mul_(self.momentum).sub_(rate * g / torch.sqrt(var.clamp_min(0.0) + self.eps))
            p.add_(vel)


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raises ValueError for a target_reduction other than sum / mean or a schedule other than passes / interleaved."""
    if cfg["target_reduction"] not in ("sum", "mean"):
        raise ValueError(f"trainer.target_reduction={cfg['target_reduction']!r}; choose sum or mean")
    if cfg["schedule"] not in ("passes", "interleaved"):
        raise ValueError(f"trainer.schedule={cfg['schedule']!r}; choose passes or interleaved")


def check_spec(spec: MLPSpec) -> None:
    """Raises ValueError for batch norm, residual connections or maxout (target propagation needs plain
    element-wise layers)."""
    if spec.batch_norm or spec.residual or spec.activation == "maxout":
        raise ValueError("target propagation supports plain MLPs only (model.batch_norm=false, model.residual=false, "
                         "an element-wise model.activation)")


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """None: the trainer applies no weight decay (the optimizer group, and its weight_decay, are not used)."""
    return {}


def inverse_names(spec: MLPSpec) -> list[int]:
    """Hidden layers l (1-based) that have an inverse g_l: 2..D."""
    return list(range(2, len(spec.widths) + 1))


def init_inverses(spec: MLPSpec, seeds: list[int], dtype, device) -> Params:
    """Stacked inverse parameters [K, ...], member k drawn from its ``aux_init`` stream (``surfacekit.seeds``),
    weights with the model's init scheme, biases zero."""
    dims = spec.dims
    names = [param_name(l, kind, "inverse") for l in inverse_names(spec) for kind in ("weight", "bias")]
    members = []
    for s in seeds:
        gen = torch.Generator().manual_seed(derive_seed(s, STREAMS["aux_init"]))
        member = {}
        for l in inverse_names(spec):
            member[param_name(l, "weight", "inverse")] = init_weight(spec, dims[l - 1], dims[l], gen, dtype)
            member[param_name(l, "bias", "inverse")] = torch.zeros(dims[l - 1], dtype=dtype)
        members.append(member)
    return {n: torch.stack([m[n] for m in members]).to(device) for n in names}


def inverse(inv: Mapping[str, torch.Tensor], l: int, h: torch.Tensor) -> torch.Tensor:
    """g_l(h_l) = tanh(V_l h_l + c_l): [K, B, w_l] -> [K, B, w_{l-1}]."""
    weight, bias = inv[param_name(l, "weight", "inverse")], inv[param_name(l, "bias", "inverse")]
    return torch.tanh(torch.matmul(h, weight.transpose(1, 2)) + bias.unsqueeze(1))


def hiddens(spec: MLPSpec, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """[h_0 = x, h_1, ..., h_D], all detached, each [K, B, width]."""
    k = next(iter(params.values())).shape[0]
    h = [x.expand(k, *x.shape) if x.dim() == 2 else x]
    with torch.no_grad():
        for i in range(len(spec.widths)):
            h.append(layer(spec, params, i, h[-1]))
    return h


def targets(spec: MLPSpec, params, inv, h: list[torch.Tensor], y: torch.Tensor, loss: str, cfg) -> dict[int, torch.Tensor]:
    """Targets h^_l for hidden layers l = 1..D (detached)."""
    depth = len(spec.widths)
    top = h[depth].detach().requires_grad_(True)
    with torch.enable_grad():
        cost = member_losses(layer(spec, params, depth, top), y, loss)
        if cfg["target_reduction"] == "sum":
            cost = cost * top.shape[1]
        (grad,) = torch.autograd.grad(cost.sum(), top)
    out = {depth: (h[depth] - float(cfg["target_step"]) * grad).detach()}
    with torch.no_grad():
        for l in range(depth, 1, -1):
            back = inverse(inv, l, out[l])
            out[l - 1] = h[l - 1] - inverse(inv, l, h[l]) + back if cfg["difference_correction"] else back
    return out


def local_losses(spec: MLPSpec, params, h, tgt, y, loss: str) -> list[torch.Tensor]:
    """Per-layer local losses [K] for layers.0..layers.D (output: its own batch-mean loss)."""
    depth = len(spec.widths)
    out = [(layer(spec, params, l - 1, h[l - 1]) - tgt[l]).pow(2).sum(-1).mean(-1) for l in range(1, depth + 1)]
    out.append(member_losses(layer(spec, params, depth, h[depth]), y, loss))
    return out


def inverse_losses(spec: MLPSpec, params, inv, h, noise: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    """Denoising reconstruction losses [K] of every inverse (forward parameters detached)."""
    out = []
    for l in inverse_names(spec):
        corrupted = h[l - 1] + noise[l]
        with torch.no_grad():
            fwd = layer(spec, params, l - 1, corrupted)
        out.append((inverse(inv, l, fwd) - corrupted).pow(2).sum(-1).mean(-1))
    return out


def cosines(spec: MLPSpec, params, inv, x, y, loss: str, cfg) -> list[torch.Tensor]:
    """Per-layer cosine [K] between the TP/DTP update direction and the backprop gradient on (x, y)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        h = hiddens(spec, leaves, x)
        tgt = targets(spec, leaves, inv, h, y, loss, cfg)
        local = torch.stack(local_losses(spec, leaves, h, tgt, y, loss)).sum()
        g_tp = dict(zip(leaves, torch.autograd.grad(local, list(leaves.values()))))
        true = member_losses(forward(spec, leaves, x), y, loss).sum()
        g_bp = dict(zip(leaves, torch.autograd.grad(true, list(leaves.values()))))
    out = []
    for i in range(spec.num_layers):
        a = torch.cat([g_tp[n].flatten(1) for n in layer_param_names(spec, i)], dim=1)
        b = torch.cat([g_bp[n].flatten(1) for n in layer_param_names(spec, i)], dim=1)
        out.append(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-300))
    return out


def _member_noise(gens: list[torch.Generator], shape: tuple[int, ...], std: float, like: torch.Tensor) -> torch.Tensor:
    # One generator per member keeps the population identical to separate runs.
    return std * torch.stack([torch.randn(shape, generator=g, dtype=like.dtype, device=like.device) for g in gens])


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
    """Train stacked ``params`` [K, ...] by (difference) target propagation; see the module docstring.

    trainer_cfg (complete, as composed from ``conf/trainer/dtp.yaml`` or ``tp.yaml``): epochs,
    batch_size, eval_every, divergence_loss, snapshots as for backprop, plus difference_correction,
    target_step, target_reduction, noise_std, forward_lr, inverse_lr, optimizer {decay, momentum,
    eps, centered}, schedule (passes | interleaved). ``optimizer_cfg`` is ignored. lr_scale [K]
    multiplies both learning rates per member. objective, bn_mode: as for backprop (the trained
    objective of this method is the data loss: it applies no weight decay).

    Raises:
        ValueError: batch norm or residual connections (``check_spec``), an invalid target_reduction or
            schedule (``check_config``), an invalid objective or bn_mode.
    """
    check_spec(spec)
    check_config(trainer_cfg)
    check_choices(objective, bn_mode)
    cfg = trainer_cfg
    device, dtype = data.x_train.device, data.x_train.dtype
    leaves = {k: v.detach().clone() for k, v in params.items()}
    init_params = {k: v.detach().clone() for k, v in params.items()}
    inv = init_inverses(spec, seeds, dtype, device)
    init_inv = {k: v.clone() for k, v in inv.items()}
    opt_cfg = dict(cfg["optimizer"])
    fwd_opt = RootRMSprop(list(leaves.values()), **opt_cfg)
    inv_opt = RootRMSprop(list(inv.values()), **opt_cfg)
    scale = torch.ones(len(seeds), dtype=dtype, device=device) if lr_scale is None else lr_scale.to(device, dtype)
    fwd_lr, inv_lr = float(cfg["forward_lr"]) * scale, float(cfg["inverse_lr"]) * scale

    gens = stream_generators(seeds, "order", device)
    noise_gens = stream_generators(seeds, "noise", device)
    freezer = Freezer({**leaves, **inv})
    recorder = Recorder(spec, data, loss, chunk_size, bool(cfg["snapshots"]), l2_coefficients(spec, {}, cfg), bn_mode)

    epochs = int(cfg["epochs"])
    batch_size = cfg["batch_size"]
    eval_every = max(1, int(cfg["eval_every"]))
    divergence_loss = float(cfg["divergence_loss"])
    n = data.x_train.shape[0]
    k = len(seeds)
    probe = slice(0, n if batch_size is None else min(n, int(batch_size)))
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    steps_taken = torch.zeros(k, dtype=torch.int64, device=device)
    cos_rows: list[list[np.ndarray]] = [[] for _ in range(spec.num_layers)]
    step = 0

    def checkpoint(epoch: float) -> None:
        recorder.record(leaves, step, epoch)
        for i, c in enumerate(cosines(spec, leaves, inv, data.x_train[probe], data.y_train[probe], loss, cfg)):
            cos_rows[i].append(c.cpu().numpy())

    def batch(idx):
        return (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])

    def inverse_step(idx) -> None:
        x, _ = batch(idx)
        h = hiddens(spec, leaves, x)
        noise = {l: _member_noise(noise_gens, h[l - 1].shape[1:], float(cfg["noise_std"]), x) for l in inverse_names(spec)}
        if not noise:
            return
        ins = {kk: v.requires_grad_(True) for kk, v in inv.items()}
        with torch.enable_grad():
            total = torch.stack(inverse_losses(spec, leaves, ins, h, noise)).sum(0)
            total = torch.where(freezer.active, total, torch.zeros_like(total)).sum()
            grads = torch.autograd.grad(total, list(ins.values()))
        for v in inv.values():
            v.requires_grad_(False)
        inv_opt.step(list(grads), inv_lr)

    def forward_step(idx) -> None:
        nonlocal step
        x, y = batch(idx)
        h = hiddens(spec, leaves, x)
        tgt = targets(spec, leaves, inv, h, y, loss, cfg)
        ins = {kk: v.requires_grad_(True) for kk, v in leaves.items()}
        with torch.enable_grad():
            parts = local_losses(spec, ins, h, tgt, y, loss)
            out_loss = parts[-1].detach()
            bad = (~torch.isfinite(out_loss) | (out_loss > divergence_loss)) & freezer.active
            if bool(bad.any()):
                diverged.logical_or_(bad)
                freezer.freeze(bad, {**leaves, **inv})
            total = torch.stack(parts).sum(0)
            total = torch.where(freezer.active, total, torch.zeros_like(total)).sum()
            grads = torch.autograd.grad(total, list(ins.values()))
        for v in leaves.values():
            v.requires_grad_(False)
        fwd_opt.step(list(grads), fwd_lr)
        freezer.restore({**leaves, **inv})
        steps_taken.add_(freezer.active.to(torch.int64))
        step += 1

    desc = "dtp" if cfg["difference_correction"] else "tp"
    for _ in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, desc, progress):
        if cfg["schedule"] == "passes":
            for idx in minibatches(n, batch_size, gens, device):
                inverse_step(idx)
            freezer.restore({**leaves, **inv})
            for idx in minibatches(n, batch_size, gens, device):
                forward_step(idx)
        else:
            for idx in minibatches(n, batch_size, gens, device):
                inverse_step(idx)
                forward_step(idx)

    extra = {f"cosine_layer{i}": np.stack(rows, axis=1) for i, rows in enumerate(cos_rows)}
    return TrainResult(
        params={kk: v.detach() for kk, v in leaves.items()},
        init_params=init_params,
        diverged=diverged.cpu().numpy(),
        converged=np.zeros(k, dtype=bool),
        steps=steps_taken.cpu().numpy(),
        **recorder.result_fields(),
        extra_curves=extra,
        aux_params={kk: v.detach() for kk, v in inv.items()},
        init_aux_params=init_inv,
    )
