"""PRONG, projected natural gradient descent (Desjardins, Simonyan, Pascanu, Kavukcuoglu 2015, "Natural
Neural Networks", Algorithm 1), batched over the members of a population.

Layer i of the network computes ``f(V_i U_i (h_i - c_i) + d_i)``: its input h_i is centred by c_i and
whitened by U_i, and V_i, d_i are the trained parameters. The canonical parameters, those of the
plain network, are ``W_i = V_i U_i`` and ``b_i = d_i - W_i c_i``; the forward pass, the recorded
curves and the stored ``/params`` all use them, so every analysis sees an ordinary MLP.

Every ``reparam_every`` (T) optimizer steps, starting at step 0 (:func:`reparametrize`):

1. the canonical parameters are formed from the current (V, d, U, c);
2. each layer's input is computed on N_s training examples under the current network (each member
   its own sample, from its ``statistics`` random stream; all examples when N_s >= N);
3. ``c_i`` = their mean, and with ``Sigma_i + epsilon I = Q diag(l) Q^T`` (eigendecomposition, Sigma with
   divisor N_s): ``U_i = Q diag(l^{-1/2}) Q^T`` (ZCA whitening) and ``U_i^{-1} = Q diag(l^{1/2}) Q^T``;
4. ``V_i = W_i U_i^{-1}`` and ``d_i = b_i + W_i c_i``, so the network's function is unchanged
   (the paper's projection; ``U_i^{-1}`` comes from the same eigendecomposition, so no solve is needed).

Between reparametrisations the ``optimizer`` group's SGD (plain, momentum or Nesterov) updates V and
d on minibatches. A momentum buffer is carried across a reparametrisation as the displacement of the
canonical parameters it represents (``dW = B_V U``, ``db = B_d - dW c`` before, mapped back with the
new U and c), so the reparametrisation does not change what the buffer would add.

With the layer input whitened, the Fisher block of (V_i, d_i) is that of a layer with white input;
the paper's approximation is that this makes it close to the identity, so an SGD step in (V, d) is
an approximate natural-gradient step in (W, b). For a single linear layer with squared error and
whitening statistics from the whole batch (T = 1, N_s = N, epsilon = 0), the Gauss-Newton matrix
in (V, d) is exactly 2 I and an SGD step of size 1/2 is an exact Gauss-Newton step (tested).

The stored curve ``reparam_change`` [K, T] is the largest change of any output on the statistics
sample over the reparametrisations since the previous evaluation (NaN where none happened): a
running check that the projection preserves the function (float64: ~1e-14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, forward, layer, member_losses, param_name
from surfacekit.objective import check_choices, l2_coefficients as objective_l2
from surfacekit.optim import build_optimizer, learning_rate, optimizer_config
from surfacekit.population import Params
from surfacekit.seeds import stream_generators
from surfacekit.train.backprop import scale_updates
from surfacekit.train.common import Freezer, Recorder, TrainResult, epochs_with_checkpoints, minibatches

OPTIMIZERS = ("sgd", "momentum", "nesterov")


@dataclass
class Whitening:
    """Per layer i: ``centers[i]`` c_i [K, in_i], ``matrices[i]`` U_i [K, in_i, in_i], ``inverses[i]`` U_i^{-1}."""

    centers: list[Tensor]
    matrices: list[Tensor]
    inverses: list[Tensor]

    @classmethod
    def identity(cls, spec: MLPSpec, k: int, dtype: torch.dtype, device) -> "Whitening":
        """c = 0 and U = I for every layer (the network as initialized)."""
        dims = spec.dims[:-1]
        eye = [torch.eye(d, dtype=dtype, device=device).expand(k, d, d).clone() for d in dims]
        return cls([torch.zeros(k, d, dtype=dtype, device=device) for d in dims], eye, [e.clone() for e in eye])

    def tensors(self) -> dict[str, Tensor]:
        """Named tensors (for freezing and for ``/aux_params``): ``whitening.{i}.center`` and ``.matrix``."""
        out = {}
        for i, (c, u) in enumerate(zip(self.centers, self.matrices)):
            out[param_name(i, "center", "whitening")] = c
            out[param_name(i, "matrix", "whitening")] = u
        return out


def check_spec(spec: MLPSpec) -> None:
    """Raises ValueError for batch norm or a network without biases (centering needs b)."""
    if spec.batch_norm or not spec.bias:
        raise ValueError("trainer=prong supports MLPs with biases and without batch norm (model.bias=true, "
                         "model.batch_norm=false)")


def canonical(spec: MLPSpec, whitened: Mapping[str, Tensor], whitening: Whitening) -> Params:
    """The plain network's parameters ``W_i = V_i U_i``, ``b_i = d_i - W_i c_i`` [K, ...] (differentiable
    in the whitened V, d). Cost per layer: one [K, rows, in] x [K, in, in] product."""
    out = {}
    for i in range(spec.num_layers):
        weight = torch.bmm(whitened[param_name(i, "weight")], whitening.matrices[i])
        out[param_name(i, "weight")] = weight
        out[param_name(i, "bias")] = whitened[param_name(i, "bias")] - torch.bmm(
            weight, whitening.centers[i].unsqueeze(-1)).squeeze(-1)
    return out


def layer_inputs(spec: MLPSpec, params: Mapping[str, Tensor], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The input of every layer, h_0 = x, h_{i+1} = layer i (h_i), each [K, B, in_i], and the outputs."""
    h = x if x.dim() == 3 else x.expand(next(iter(params.values())).shape[0], *x.shape)
    inputs = []
    for i in range(spec.num_layers):
        inputs.append(h)
        h = layer(spec, params, i, h)
    return inputs, h


def whiten(h: Tensor, epsilon: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centre and ZCA-whitening of samples h [K, N, d]: (c [K, d], U [K, d, d], U^{-1}, valid [K]) with
    ``U = (Sigma + epsilon I)^{-1/2}`` (Sigma with divisor N) from one eigendecomposition, computed in
    float64 whatever h's dtype (a float32 covariance of large activations has eigenvalues off by
    ~1e-7 of the largest) and returned in h's dtype.

    ``valid[k]`` is False where member k's samples are not finite or ``Sigma + epsilon I`` is not
    positive definite in float64 (epsilon = 0 with fewer samples than dimensions, or activations so
    large that rounding exceeds epsilon); those members get c = 0 and U = I, to be discarded.
    """
    h64 = h.to(torch.float64)
    finite = torch.isfinite(h64).flatten(1).all(dim=1)
    h64 = torch.where(finite[:, None, None], h64, torch.zeros_like(h64))
    center = h64.mean(dim=1)
    centred = h64 - center.unsqueeze(1)
    sigma = torch.bmm(centred.transpose(1, 2), centred) / h.shape[1]
    eye = torch.eye(h.shape[2], dtype=torch.float64, device=h.device)
    values, vectors = torch.linalg.eigh(0.5 * (sigma + sigma.transpose(1, 2)) + epsilon * eye)
    valid = finite & (values > 0).all(dim=1)
    values = torch.where(valid[:, None], values, torch.ones_like(values))
    vectors = torch.where(valid[:, None, None], vectors, eye)
    center = torch.where(valid[:, None], center, torch.zeros_like(center))
    matrix = (vectors * values.rsqrt().unsqueeze(1)) @ vectors.transpose(1, 2)
    inverse = (vectors * values.sqrt().unsqueeze(1)) @ vectors.transpose(1, 2)
    return center.to(h.dtype), matrix.to(h.dtype), inverse.to(h.dtype), valid


@torch.no_grad()
def reparametrize(spec: MLPSpec, whitened: Mapping[str, Tensor], whitening: Whitening, x: Tensor,
                  epsilon: float) -> tuple[Params, Whitening, Tensor, Tensor, list[Tensor]]:
    """The projection of Algorithm 1 (lines 6-9): new (V, d) and whitening with the same canonical
    parameters, the whitening estimated on x [N_s, in] or [K, N_s, in] under the current network.

    Returns (whitened params, whitening, valid [K], the largest output change on x per member [K],
    the layer inputs [K, N_s, in_i] the statistics came from). A member whose statistics cannot be
    whitened in some layer (``valid`` False, see :func:`whiten`) keeps its old (V, d) and whitening,
    and its change is NaN. Cost: two forward passes over x and one float64 eigendecomposition per
    layer and member.
    """
    params = canonical(spec, whitened, whitening)
    inputs, before = layer_inputs(spec, params, x)
    new, centers, matrices, inverses = {}, [], [], []
    valid = torch.ones(before.shape[0], dtype=torch.bool, device=before.device)
    for i, h in enumerate(inputs):
        center, matrix, inverse, ok = whiten(h, epsilon)
        valid &= ok
        weight = params[param_name(i, "weight")]
        new[param_name(i, "weight")] = torch.bmm(weight, inverse)
        new[param_name(i, "bias")] = params[param_name(i, "bias")] + torch.bmm(weight, center.unsqueeze(-1)).squeeze(-1)
        centers.append(center)
        matrices.append(matrix)
        inverses.append(inverse)
    keep = lambda fresh, old: torch.where(valid.reshape(-1, *[1] * (old.dim() - 1)), fresh, old)  # noqa: E731
    new = {name: keep(value, whitened[name].detach()) for name, value in new.items()}
    whitening_new = Whitening([keep(c, o) for c, o in zip(centers, whitening.centers)],
                              [keep(u, o) for u, o in zip(matrices, whitening.matrices)],
                              [keep(u, o) for u, o in zip(inverses, whitening.inverses)])
    after = forward(spec, canonical(spec, new, whitening_new), x)
    change = (after - before).abs().flatten(1).amax(dim=1)
    return new, whitening_new, valid, torch.where(valid, change, torch.full_like(change, float("nan"))), inputs


@torch.no_grad()
def map_momentum(spec: MLPSpec, buffers: Mapping[str, Tensor], old: Whitening, new: Whitening) -> None:
    """Carry momentum buffers of (V, d) (modified in place) across a reparametrisation from ``old`` to
    ``new``, keeping the canonical displacement ``dW = B_V U``, ``db = B_d - dW c`` they stand for."""
    for i in range(spec.num_layers):
        bv, bd = buffers.get(param_name(i, "weight")), buffers.get(param_name(i, "bias"))
        if bv is None or bd is None:
            continue
        dw = torch.bmm(bv, old.matrices[i])
        db = bd - torch.bmm(dw, old.centers[i].unsqueeze(-1)).squeeze(-1)
        bv.copy_(torch.bmm(dw, new.inverses[i]))
        bd.copy_(db + torch.bmm(dw, new.centers[i].unsqueeze(-1)).squeeze(-1))


def statistics_sample(x: Tensor, samples: int | None, gens: list[torch.Generator]) -> Tensor:
    """The examples statistics are estimated on: all of x [N, in] when ``samples`` is None or >= N, else
    each member's own ``samples`` examples without replacement, [K, samples, in]."""
    n = x.shape[0]
    if samples is None or samples >= n:
        return x
    idx = torch.stack([torch.randperm(n, generator=g, device=x.device)[:samples] for g in gens])
    return x[idx]


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """None: weight decay is refused (it would act on V, d, not as an L2 term of the network)."""
    return {}


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
    """PRONG training of stacked canonical ``params`` [K, ...] (see the module docstring).

    trainer_cfg as composed from ``conf/trainer/prong.yaml``: epochs, batch_size (null: full batch),
    eval_every, grad_tol, divergence_loss, snapshots, reparam_every (T), stats_samples (N_s; null: all),
    epsilon. optimizer_cfg: sgd, momentum or nesterov (weight_decay 0) with its lr and schedule.
    lr_scale [K]: per-member multipliers of each update. Stored: canonical ``params``, the final
    whitening under ``aux_params`` (``whitening.{i}.center`` [K, in_i], ``whitening.{i}.matrix``
    [K, in_i, in_i]; initial: 0 and I), the curve ``reparam_change``.

    A member whose layer inputs cannot be whitened at a reparametrisation (non-finite, or not positive
    definite within float64 rounding: activations blown up by too large a learning rate) is marked
    diverged and frozen, like one whose loss is non-finite.

    Raises:
        ValueError: another optimizer, weight decay, batch norm or no biases, an invalid objective or
            bn_mode.
    """
    check_choices(objective, bn_mode)
    check_spec(spec)
    optimizer_cfg = optimizer_config(optimizer_cfg)
    if optimizer_cfg["name"] not in OPTIMIZERS or float(optimizer_cfg["weight_decay"]) != 0:
        raise ValueError(f"trainer=prong takes optimizer {' / '.join(OPTIMIZERS)} without weight decay, got "
                         f"{optimizer_cfg['name']} with weight_decay={optimizer_cfg['weight_decay']}")
    device, dtype = data.x_train.device, data.x_train.dtype
    n, k = data.x_train.shape[0], len(seeds)
    epochs, batch_size = int(trainer_cfg["epochs"]), trainer_cfg["batch_size"]
    eval_every = max(1, int(trainer_cfg["eval_every"]))
    grad_tol, divergence_loss = float(trainer_cfg["grad_tol"]), float(trainer_cfg["divergence_loss"])
    period, epsilon = int(trainer_cfg["reparam_every"]), float(trainer_cfg["epsilon"])
    samples = trainer_cfg["stats_samples"]

    init_params = {name: v.detach().clone() for name, v in params.items()}
    whitening = Whitening.identity(spec, k, dtype, device)
    init_aux = {name: v.clone() for name, v in whitening.tensors().items()}
    leaves = {name: v.detach().clone().requires_grad_(True) for name, v in params.items()}
    optimizer = build_optimizer(leaves.values(), optimizer_cfg)
    gens = stream_generators(seeds, "order", device)
    stats_gens = stream_generators(seeds, "statistics", device)
    l2 = objective_l2(spec, "prong", optimizer_cfg, trainer_cfg, objective)
    recorder = Recorder(spec, data, loss, chunk_size, bool(trainer_cfg["snapshots"]), l2, bn_mode)
    freezer = Freezer({**leaves, **whitening.tensors()})
    steps_per_epoch = 1 if batch_size is None else math.ceil(n / int(batch_size))
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    steps_taken = torch.zeros(k, dtype=torch.int64, device=device)
    change = torch.full((k,), math.nan, dtype=torch.float64, device=device)
    changes: list[np.ndarray] = []
    step = 0

    def checkpoint(epoch: float) -> None:
        nonlocal change
        with torch.no_grad():
            now = recorder.record(canonical(spec, leaves, whitening), step, epoch)
        changes.append(change.cpu().numpy().copy())
        change = torch.full_like(change, math.nan)
        if grad_tol > 0:
            done = (now["grad_norm"] < grad_tol) & freezer.active
            converged.logical_or_(done)
            freezer.freeze(done, {**leaves, **whitening.tensors()})

    for epoch in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, "prong", progress):
        for i, idx in enumerate(minibatches(n, batch_size, gens, device)):
            if step % period == 0:
                x_stats = statistics_sample(data.x_train, samples, stats_gens)
                new, whitening_new, valid, moved, _ = reparametrize(spec, leaves, whitening, x_stats, epsilon)
                failed = ~valid & freezer.active
                if bool(failed.any()):  # activations no float64 whitening can handle: the member diverged
                    diverged.logical_or_(failed)
                    freezer.freeze(failed, {**leaves, **whitening.tensors()})
                buffers = {name: optimizer.state[leaf].get("momentum_buffer") for name, leaf in leaves.items()
                           if leaf in optimizer.state}
                map_momentum(spec, {n_: b for n_, b in buffers.items() if b is not None}, whitening, whitening_new)
                with torch.no_grad():
                    for name, leaf in leaves.items():
                        leaf.copy_(new[name])
                whitening = whitening_new
                freezer.restore({**leaves, **whitening.tensors()})
                change = torch.fmax(change, moved.to(torch.float64))  # fmax: NaN (invalid) does not count
            lr = learning_rate(optimizer_cfg, epoch + i / steps_per_epoch, epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx], data.y_train[idx])
            losses = member_losses(forward(spec, canonical(spec, leaves, whitening), x), y, loss)
            bad = (~torch.isfinite(losses) | (losses > divergence_loss)) & freezer.active
            if bool(bad.any()):
                diverged.logical_or_(bad)
                freezer.freeze(bad, {**leaves, **whitening.tensors()})
            active = freezer.active
            optimizer.zero_grad()
            torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
            before = None if lr_scale is None else {name: v.detach().clone() for name, v in leaves.items()}
            optimizer.step()
            if before is not None:
                scale_updates(leaves, before, lr_scale)
            freezer.restore({**leaves, **whitening.tensors()})
            steps_taken += active
            step += 1

    with torch.no_grad():
        final = {name: v.detach().clone() for name, v in canonical(spec, leaves, whitening).items()}
    return TrainResult(
        params=final, init_params=init_params, diverged=diverged.cpu().numpy(), converged=converged.cpu().numpy(),
        steps=steps_taken.cpu().numpy(), **recorder.result_fields(),
        extra_curves={"reparam_change": np.stack(changes, axis=1)},
        aux_params={name: v.detach().clone() for name, v in whitening.tensors().items()}, init_aux_params=init_aux,
    )
