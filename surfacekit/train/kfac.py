"""K-FAC (Martens and Grosse 2015, "Optimizing neural networks with Kronecker-factored approximate
curvature"): Kronecker factors of each layer's Fisher block, computed directly on a stacked
population, and a trainer that preconditions SGD with them.

For layer i with input a (with a 1 appended for the bias) and pre-activations z = W~ a
(W~ = [W | b], [rows, in + 1]), the Fisher block of vec(W~) is ``E[a a^T kron g g^T]``, g = dl/dz at a
target drawn from the model's predictive distribution; K-FAC approximates it by
``A kron G`` with ``A = E[a a^T]`` [K, in+1, in+1] and ``G = E[g g^T]`` [K, rows, rows] (Section 3).
With W~ flattened row by row (the layout of ``/params``), the matrix is ``G kron A`` and its inverse
applied to a gradient M [rows, in+1] is ``G^{-1} M A^{-1}``.

The predictive distributions (the loss as a negative log-likelihood): ``cross_entropy``: categorical
with softmax probabilities p; ``mse`` (sum of squares, no 1/2): Gaussian N(z, I/2). ``targets="sampled"``
draws one target per example (Martens and Grosse's estimator): g from ``p - e_y`` or ``sqrt(2) xi``;
``targets="exact"`` takes the expectation over the target exactly: ``G = E_n[J_n^T R_n R_n^T J_n]`` with
``R_n R_n^T = H_z`` (``diag(p) - p p^T``, or ``2 I``), one backward pass per output. For a single linear
layer with squared error, ``G = 2 I`` and ``G kron A`` is exactly the Gauss-Newton matrix (= Hessian)
of the mean loss (tested).

Damping (Section 6.3, factored Tikhonov): ``(A + pi gamma I) kron (G + gamma / pi I)`` with
``gamma = sqrt(damping)`` and ``pi = sqrt((tr A / dim A) / (tr G / dim G))``.

Per-example gradients with respect to pre-activations come from zero perturbations added to them
(``models.layer(..., perturbation=...)``): the gradient of sum_n r_n^T z_out,n with respect to
the perturbation of example n is ``J_n^T r_n``. The maintained PyTorch K-FAC packages work
through module hooks, which do not see a stacked population.

The trainer (``trainer=kfac``) recomputes the factors and their damped inverses every
``update_every`` steps on ``stats_samples`` examples (a fresh sample each time, not the paper's
running averages), and between updates applies the ``optimizer`` group's SGD (plain, momentum,
Nesterov) to the preconditioned minibatch gradient of the loss plus ``(weight_decay/2)|theta|^2``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec, forward, layer, member_losses, param_name, param_shapes, preactivation_width
from surfacekit.objective import check_choices, l2_coefficients as objective_l2
from surfacekit.optim import build_optimizer, coupled_weight_decay, learning_rate, optimizer_config
from surfacekit.population import Params
from surfacekit.seeds import stream_generators
from surfacekit.train.backprop import scale_updates
from surfacekit.train.common import Freezer, Recorder, TrainResult, epochs_with_checkpoints, minibatches
from surfacekit.train.prong import OPTIMIZERS, statistics_sample

TARGETS = ("sampled", "exact")
Factors = list[tuple[Tensor, Tensor]]


def check_spec(spec: MLPSpec, loss: str) -> None:
    """Raises ValueError for batch norm or a loss without a predictive distribution (hinge)."""
    if spec.batch_norm:
        raise ValueError("trainer=kfac supports plain MLPs and maxout (model.batch_norm=false)")
    if loss not in ("cross_entropy", "mse"):
        raise ValueError(f"K-FAC needs a loss with a predictive distribution (cross_entropy or mse), got {loss!r}")


def output_factors(outputs: Tensor, loss: str, targets: str,
                   generators: list[torch.Generator] | None = None) -> Tensor:
    """R [K, B, C, m] with ``E[R R^T] = H_z`` per example: m = C columns of a square root of H_z
    (``exact``) or m = 1 gradient of the loss at a target drawn from the model (``sampled``,
    each member from its own generator).

    Raises:
        ValueError: an unknown loss or targets, or ``sampled`` without generators.
    """
    if targets not in TARGETS or loss not in ("cross_entropy", "mse"):
        raise ValueError(f"K-FAC: targets={targets!r}, loss={loss!r}; expected targets in {list(TARGETS)} and "
                         "loss cross_entropy or mse")
    k, b, c = outputs.shape
    if targets == "exact":
        if loss == "mse":
            return math.sqrt(2.0) * torch.eye(c, dtype=outputs.dtype, device=outputs.device).expand(k, b, c, c)
        p = torch.softmax(outputs, dim=-1)
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return (eye - p.unsqueeze(-1)) * p.sqrt().unsqueeze(-2)  # column j: sqrt(p_j) (e_j - p)
    if generators is None:
        raise ValueError("K-FAC: targets=sampled needs one generator per member")
    if loss == "mse":
        noise = torch.stack([torch.randn(b, c, generator=g, dtype=outputs.dtype, device=outputs.device)
                             for g in generators])
        return (math.sqrt(2.0) * noise).unsqueeze(-1)
    p = torch.softmax(outputs, dim=-1)
    drawn = torch.stack([torch.multinomial(p[m], 1, generator=g).squeeze(-1) for m, g in enumerate(generators)])
    return (p - torch.nn.functional.one_hot(drawn, c).to(p.dtype)).unsqueeze(-1)


def kfac_factors(spec: MLPSpec, params: Mapping[str, Tensor], x: Tensor, loss: str,
                 targets: str = "exact", generators: list[torch.Generator] | None = None) -> Factors:
    """The factors (A_i [K, in+1, in+1], G_i [K, rows, rows]) of every layer i on examples x [B, in] or
    [K, B, in] (the bias row/column of A is dropped without biases). The data's own targets play no
    part: the Fisher's targets come from the model.

    Cost: one forward pass and m backward passes over the batch (m = C outputs for ``exact``, 1 for
    ``sampled``), plus the [K, B, d] x [K, B, d] products of the factors.

    Raises:
        ValueError: as :func:`output_factors`.
    """
    k = next(iter(params.values())).shape[0]
    h = x if x.dim() == 3 else x.expand(k, *x.shape)
    batch = h.shape[1]
    inputs, perturbations = [], []
    params = {name: p.detach() for name, p in params.items()}
    with torch.enable_grad():
        for i in range(spec.num_layers):
            inputs.append(h)
            e = torch.zeros(k, batch, preactivation_width(spec, i), dtype=h.dtype, device=h.device, requires_grad=True)
            perturbations.append(e)
            h = layer(spec, params, i, h, perturbation=e)
        r = output_factors(h.detach(), loss, targets, generators)
        gs = [torch.zeros(k, e.shape[2], e.shape[2], dtype=h.dtype, device=h.device) for e in perturbations]
        for j in range(r.shape[-1]):
            grads = torch.autograd.grad(h, perturbations, r[..., j], retain_graph=j < r.shape[-1] - 1)
            for i, g in enumerate(grads):
                gs[i] += torch.bmm(g.transpose(1, 2), g) / batch
    factors = []
    for i, a in enumerate(inputs):
        a = a.detach()
        if spec.bias:
            a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)
        factors.append((torch.bmm(a.transpose(1, 2), a) / batch, gs[i]))
    return factors


def damped_inverses(factors: Factors, damping: float) -> Factors:
    """``((A + pi gamma I)^{-1}, (G + gamma / pi I)^{-1})`` per layer, gamma = sqrt(damping), pi per member
    from the factors' mean eigenvalues (Martens and Grosse, Section 6.3). Cost: two Cholesky inverses.

    Raises:
        ValueError: damping <= 0.
    """
    if damping <= 0:
        raise ValueError(f"K-FAC damping={damping} must be > 0")
    gamma = math.sqrt(damping)
    out = []
    for a, g in factors:
        mean_a = torch.diagonal(a, dim1=1, dim2=2).mean(dim=1)
        mean_g = torch.diagonal(g, dim1=1, dim2=2).mean(dim=1)
        pi = torch.sqrt(mean_a / mean_g.clamp_min(torch.finfo(g.dtype).tiny)).clamp(1e-8, 1e8)
        eye_a = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
        eye_g = torch.eye(g.shape[1], dtype=g.dtype, device=g.device)
        a_d = a + (pi * gamma)[:, None, None] * eye_a
        g_d = g + (gamma / pi)[:, None, None] * eye_g
        out.append((torch.cholesky_inverse(torch.linalg.cholesky(a_d)),
                    torch.cholesky_inverse(torch.linalg.cholesky(g_d))))
    return out


def precondition(spec: MLPSpec, grads: Mapping[str, Tensor], inverses: Factors) -> dict[str, Tensor]:
    """Apply ``G_i^{-1} [dW_i | db_i] A_i^{-1}`` layer by layer to gradients [K, ...] named as the parameters."""
    out = {}
    for i, (a_inv, g_inv) in enumerate(inverses):
        w, b = param_name(i, "weight"), param_name(i, "bias")
        m = grads[w] if not spec.bias else torch.cat([grads[w], grads[b].unsqueeze(-1)], dim=2)
        m = torch.bmm(torch.bmm(g_inv, m), a_inv)
        out[w] = m[..., : grads[w].shape[2]]
        if spec.bias:
            out[b] = m[..., -1]
    return out


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """optimizer.weight_decay on every parameter (added to the gradient before preconditioning)."""
    wd = coupled_weight_decay(optimizer_config(optimizer_cfg))
    return {name: wd for name in param_shapes(spec)}


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
    """K-FAC-preconditioned SGD of stacked ``params`` [K, ...] (see the module docstring).

    trainer_cfg as composed from ``conf/trainer/kfac.yaml``: epochs, batch_size, eval_every, grad_tol,
    divergence_loss, snapshots, update_every (T), stats_samples (null: all), damping, targets.
    optimizer_cfg: sgd, momentum or nesterov; its weight_decay is part of the preconditioned gradient.
    lr_scale [K]: per-member multipliers of each update.

    Raises:
        ValueError: another optimizer, batch norm, the hinge loss, an invalid objective or bn_mode.
    """
    check_choices(objective, bn_mode)
    check_spec(spec, loss)
    optimizer_cfg = optimizer_config(optimizer_cfg)
    if optimizer_cfg["name"] not in OPTIMIZERS:
        raise ValueError(f"trainer=kfac takes optimizer {' / '.join(OPTIMIZERS)}, got {optimizer_cfg['name']}")
    device = data.x_train.device
    n, k = data.x_train.shape[0], len(seeds)
    epochs, batch_size = int(trainer_cfg["epochs"]), trainer_cfg["batch_size"]
    eval_every = max(1, int(trainer_cfg["eval_every"]))
    grad_tol, divergence_loss = float(trainer_cfg["grad_tol"]), float(trainer_cfg["divergence_loss"])
    period, damping = int(trainer_cfg["update_every"]), float(trainer_cfg["damping"])
    samples, targets = trainer_cfg["stats_samples"], str(trainer_cfg["targets"])
    wd = coupled_weight_decay(optimizer_cfg)

    init_params = {name: v.detach().clone() for name, v in params.items()}
    leaves = {name: v.detach().clone().requires_grad_(True) for name, v in params.items()}
    optimizer = build_optimizer(leaves.values(), {**optimizer_cfg, "weight_decay": 0.0})
    gens = stream_generators(seeds, "order", device)
    stats_gens = stream_generators(seeds, "statistics", device)
    target_gens = stream_generators(seeds, "noise", device)
    l2 = objective_l2(spec, "kfac", optimizer_cfg, trainer_cfg, objective)
    recorder = Recorder(spec, data, loss, chunk_size, bool(trainer_cfg["snapshots"]), l2, bn_mode)
    freezer = Freezer(leaves)
    steps_per_epoch = 1 if batch_size is None else math.ceil(n / int(batch_size))
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    steps_taken = torch.zeros(k, dtype=torch.int64, device=device)
    inverses: Factors = []
    step = 0

    def checkpoint(epoch: float) -> None:
        now = recorder.record(leaves, step, epoch)
        if grad_tol > 0:
            done = (now["grad_norm"] < grad_tol) & freezer.active
            converged.logical_or_(done)
            freezer.freeze(done, leaves)

    for epoch in epochs_with_checkpoints(epochs, eval_every, freezer, recorder, checkpoint, "kfac", progress):
        for i, idx in enumerate(minibatches(n, batch_size, gens, device)):
            if step % period == 0:
                x_stats = statistics_sample(data.x_train, samples, stats_gens)
                inverses = damped_inverses(kfac_factors(spec, leaves, x_stats, loss, targets, target_gens), damping)
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
            with torch.no_grad():
                grads = {name: leaf.grad + wd * leaf for name, leaf in leaves.items()}
                for name, g in precondition(spec, grads, inverses).items():
                    leaves[name].grad.copy_(g)
            before = None if lr_scale is None else {name: v.detach().clone() for name, v in leaves.items()}
            optimizer.step()
            if before is not None:
                scale_updates(leaves, before, lr_scale)
            freezer.restore(leaves)
            steps_taken += active
            step += 1

    final = {name: v.detach().clone() for name, v in leaves.items()}
    return TrainResult(params=final, init_params=init_params, diverged=diverged.cpu().numpy(),
                       converged=converged.cpu().numpy(), steps=steps_taken.cpu().numpy(), **recorder.result_fields())
