"""Quadratic-penalty training with auxiliary coordinates (MAC; Carreira-Perpinan and Wang 2014).

Full batch over the N training examples, batched over the population axis K. Every hidden layer
l = 1..D gets auxiliary coordinates Z_l [K, N, w_l] (Z_0 = x). With f_l the model's ``layers.{l-1}``
(activation included) and the output layer f_{D+1} linear, the monitored objective per member is

    E(W, Z; mu) = 1/N sum_n loss(f_{D+1}(z_{D,n}), y_n)
                + mu/2 * 1/N sum_n sum_l ||z_{l,n} - f_l(z_{l-1,n})||^2
                + weight_decay/2 * sum_l ||W_l||^2                         (weights only, not biases)

i.e. the paper's E_Q divided by N (same minimizers), every regularizer included. The constraint
violation is sum_l 1/N sum_n ||z_{l,n} - f_l(z_{l-1,n})||^2.

Schedule: mu = mu0 * mu_factor^s for stages s = 0..stages-1; in each stage ``alternations`` times a
W-step then a Z-step. W-step: given Z the objective separates into independent single-layer fits
(hidden layer l: least squares of Z_l on f_l(Z_{l-1}); output layer: the loss on f_{D+1}(Z_D)). With
``w_solver=gauss_newton`` (default) each hidden layer first takes ``gn_steps`` damped Gauss-Newton steps
(one small linear system per output unit, step halved until the layer term decreases); then all
layers take ``w_steps`` gradient steps with a per-(layer, member) step size and Armijo backtracking
(``w_solver=gradient``: only these).
Z-step: given W the objective separates over examples; ``z_steps`` gradient steps on all of an
example's codes jointly, with a per-(member, example) step size and Armijo backtracking. A trial
step is accepted only where its term decreases (and is finite); otherwise the step is halved, and
after ``max_backtracks`` halvings the old value is kept. So E never increases within a stage (up to
rounding). After the schedule Z is set to the forward pass and the output layer is refitted
(``refit_steps`` of the same kind) on the true nested loss.

Curves (extra, at every evaluation): ``objective`` [K, T] (E at the current mu), ``objective_w``
[K, T] (E after the W-step of that alternation; NaN at other points), ``violation`` [K, T],
``mu`` [T], ``stage`` [T] and ``phase`` [T] (0: start of a stage, 1: end of an alternation,
2: after the final refit). The Recorder's train/test loss is the nested network's loss.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import trange

from surfacekit.data import Dataset
from surfacekit.models import (
    MLPSpec, activation_derivative, example_losses, forward, layer, layer_param_names, member_losses,
)
from surfacekit.objective import check_choices, l2_coefficients as objective_l2
from surfacekit.population import Params
from surfacekit.train.common import Recorder, TrainResult
from surfacekit.train.dtp import check_spec


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raises ValueError unless stages, alternations >= 1, w_solver is gauss_newton or gradient, mu0 > 0
    and mu_factor >= 1."""
    for key in ("stages", "alternations"):
        if int(cfg[key]) < 1:
            raise ValueError(f"trainer.{key}={cfg[key]!r}; need an integer >= 1")
    if cfg["w_solver"] not in ("gauss_newton", "gradient"):
        raise ValueError(f"trainer.w_solver={cfg['w_solver']!r}; choose gauss_newton or gradient")
    if float(cfg["mu0"]) <= 0 or float(cfg["mu_factor"]) < 1:
        raise ValueError("trainer.mu0 must be > 0 and trainer.mu_factor >= 1")


def l2_coefficients(spec: MLPSpec, optimizer_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> dict[str, float]:
    """trainer.weight_decay on every weight matrix ``layers.{i}.weight``, not on biases (the term in E)."""
    return {layer_param_names(spec, i)[0]: float(trainer_cfg["weight_decay"]) for i in range(spec.num_layers)}


def descend(
    energy: Callable[[list[torch.Tensor]], torch.Tensor],
    tensors: list[torch.Tensor],
    rows: list[int | None],
    step: torch.Tensor,
    iterations: int,
    armijo: float,
    max_backtracks: int,
    grow: float,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradient descent with independent Armijo backtracking on each entry of an energy array.

    ``energy(tensors)`` returns an array S ([L, K] or [K, N]) whose entries depend on disjoint slices
    of the tensors: tensor j belongs to row ``rows[j]`` of an [L, K] energy (its leading axis is K),
    or, when rows[j] is None, S = [K, N] matches the tensor's two leading axes. ``step`` has shape S.
    Returns (tensors, step, energy); no entry of the energy ever increases.
    """

    def expand(t: torch.Tensor, j: int, like: torch.Tensor) -> torch.Tensor:
        v = t if rows[j] is None else t[rows[j]]
        return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))

    tensors = [t.detach() for t in tensors]
    with torch.no_grad():
        current = energy(tensors)
    for _ in range(iterations):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        with torch.enable_grad():
            grads = torch.autograd.grad(energy(leaves).sum(), leaves)
        sq = torch.zeros_like(current)
        for j, g in enumerate(grads):
            if rows[j] is None:
                sq = sq + g.pow(2).flatten(2).sum(-1)
            else:
                sq[rows[j]] += g.pow(2).flatten(1).sum(-1)
        t = step.clone()
        accepted = torch.zeros_like(current, dtype=torch.bool)
        first = None
        # An entry stops backtracking once the predicted decrease is below rounding of its energy.
        tiny = torch.finfo(current.dtype).eps * (current.abs() + torch.finfo(current.dtype).tiny)
        with torch.no_grad():
            for _ in range(max_backtracks):
                pending = ~accepted & (t * sq > tiny)
                if not bool(pending.any()):
                    break
                trial = [x - expand(t, j, x) * g for j, (x, g) in enumerate(zip(tensors, grads))]
                value = energy(trial)
                ok = pending & torch.isfinite(value) & (value <= current - armijo * t * sq)
                tensors = [torch.where(expand(ok, j, x), tr, x) for j, (x, tr) in enumerate(zip(tensors, trial))]
                current = torch.where(ok, value, current)
                accepted |= ok
                first = ok.clone() if first is None else first
                t = torch.where(accepted, t, 0.5 * t)
        # grow the step only where the first trial was accepted
        step = t if first is None else torch.where(first, t * grow, t)
    return tensors, step, current


def gauss_newton_direction(u: torch.Tensor, d: torch.Tensor, r: torch.Tensor, weight: torch.Tensor, mu: float,
                           weight_decay: float, decayed: torch.Tensor, damping: float) -> torch.Tensor:
    """The damped Gauss-Newton step [K, out, p] for one layer's term, every output unit j separately.

    The layer term, as a function of the augmented weight W = [weights | bias] [K, out, p], is
    mu/(2N) sum_n ||z_n - phi(W u_n)||^2 + wd/2 |decayed * W|^2. Linearizing phi around the current
    W gives, for unit j, the regularized least-squares problem in the step delta_j [p]

        min  mu/(2N) sum_n (r_nj - d_nj u_n . delta_j)^2 + wd/2 |decayed * (w_j + delta_j)|^2
             + (damping s_j)/2 |delta_j|^2,

    with u [K, N, p] the layer inputs (a trailing column of ones for the bias), d [K, N, out] the
    activation derivatives phi'(W u) and r [K, N, out] the residuals z - phi(W u); decayed [p] is 1
    where weight decay applies and 0 for the bias column; s_j is the mean diagonal of unit j's normal
    matrix (the damping is relative). Solved through its normal equations, one [p, p] system per
    unit and member ([K, out, p, p] in all: cost O(K out (N p^2 + p^3))). With damping 0 this is the
    least-squares solution (``torch.linalg.lstsq`` of the stacked problem; tested).
    """
    n, p = u.shape[1], u.shape[-1]
    a = (mu / n) * torch.einsum("knj,kna,knb->kjab", d * d, u, u)
    rhs = (mu / n) * torch.einsum("knj,kna->kja", d * r, u) - weight_decay * weight * decayed
    scale = torch.diagonal(a, dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    a = a + torch.diag_embed(weight_decay * decayed + damping * scale.expand(-1, -1, p))
    return torch.linalg.solve(a, rhs.unsqueeze(-1)).squeeze(-1)


def gauss_newton_layer(problem: "Problem", w: Params, z: list[torch.Tensor], mu: float, i: int, iterations: int,
                       max_backtracks: int, damping: float) -> Params:
    """Fit hidden layer ``layers.{i}`` to its codes by damped Gauss-Newton steps with backtracking.

    Each iteration takes the step of :func:`gauss_newton_direction` (fraction 1, 1/2, 1/4, ...),
    kept only where the layer term mu/(2N) sum_n ||z_{i+1} - f(W z_i + b)||^2 (+ weight decay) decreases.
    """
    spec, k = problem.spec, next(iter(w.values())).shape[0]
    zs = problem.inputs(z, k)
    u = zs[i]
    if spec.bias:
        u = torch.cat([u, torch.ones_like(u[..., :1])], dim=-1)
    p = u.shape[-1]
    decayed = torch.ones(p, dtype=u.dtype, device=u.device)
    if spec.bias:
        decayed[-1] = 0.0
    names = problem.names[i]

    def term(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return problem.layer_terms(params, z, mu, only=i)

    current = term(w)
    for _ in range(iterations):
        weight = w[names[0]] if not spec.bias else torch.cat([w[names[0]], w[names[1]].unsqueeze(-1)], dim=-1)
        post = layer(spec, w, i, zs[i])
        d = activation_derivative(spec.activation, post)
        delta = gauss_newton_direction(u, d, zs[i + 1] - post, weight, mu, problem.wd, decayed, damping)
        frac = torch.ones(k, dtype=u.dtype, device=u.device)
        done = torch.zeros(k, dtype=torch.bool, device=u.device)
        for _ in range(max_backtracks):
            trial_w = weight + frac.reshape(-1, 1, 1) * delta
            trial = dict(w)
            trial[names[0]] = trial_w[..., : p - 1] if spec.bias else trial_w
            if spec.bias:
                trial[names[1]] = trial_w[..., -1]
            value = term(trial)
            ok = ~done & torch.isfinite(value) & (value < current)
            for nm in names:
                w[nm] = torch.where(ok.reshape((-1,) + (1,) * (w[nm].dim() - 1)), trial[nm], w[nm])
            current = torch.where(ok, value, current)
            done |= ok
            if bool(done.all()):
                break
            frac = torch.where(done, frac, 0.5 * frac)
    return w


class Problem:
    """The penalty objective of one population on the full training set."""

    def __init__(self, spec: MLPSpec, x: torch.Tensor, y: torch.Tensor, loss: str, weight_decay: float):
        self.spec, self.x, self.y, self.loss, self.wd = spec, x, y, loss, float(weight_decay)
        self.depth = len(spec.widths)
        self.names = [layer_param_names(spec, i) for i in range(spec.num_layers)]

    def inputs(self, z: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        return [self.x.expand(k, *self.x.shape)] + list(z)

    def forward_codes(self, params: Params) -> list[torch.Tensor]:
        """Z set to the forward pass: [h_1, ..., h_D], each [K, N, w]."""
        k = next(iter(params.values())).shape[0]
        h, out = self.x.expand(k, *self.x.shape), []
        with torch.no_grad():
            for i in range(self.depth):
                h = layer(self.spec, params, i, h)
                out.append(h)
        return out

    def layer_terms(self, params: Mapping[str, torch.Tensor], z: list[torch.Tensor], mu: float,
                    only: int | None = None) -> torch.Tensor:
        """[L, K]: each layer's share of E (penalty or loss, plus its weight decay); [K] for layer ``only``."""
        k = next(iter(params.values())).shape[0]
        zs = self.inputs(z, k)
        terms = []
        for i in range(self.spec.num_layers) if only is None else [only]:
            pred = layer(self.spec, params, i, zs[i])
            if i < self.depth:
                t = 0.5 * mu * (zs[i + 1] - pred).pow(2).sum(-1).mean(-1)
            else:
                t = member_losses(pred, self.y, self.loss)
            if self.wd > 0:
                t = t + 0.5 * self.wd * params[self.names[i][0]].pow(2).flatten(1).sum(-1)
            terms.append(t)
        return torch.stack(terms) if only is None else terms[0]

    def example_terms(self, params: Mapping[str, torch.Tensor], z: list[torch.Tensor], mu: float) -> torch.Tensor:
        """[K, N]: each example's share of E without the 1/N and the (Z-independent) weight decay."""
        k = next(iter(params.values())).shape[0]
        zs = self.inputs(z, k)
        e = example_losses(layer(self.spec, params, self.depth, zs[self.depth]), self.y, self.loss)
        for i in range(self.depth):
            e = e + 0.5 * mu * (zs[i + 1] - layer(self.spec, params, i, zs[i])).pow(2).sum(-1)
        return e

    def objective(self, params, z, mu: float) -> torch.Tensor:
        with torch.no_grad():
            return self.layer_terms(params, z, mu).sum(0)

    def violation(self, params, z) -> torch.Tensor:
        """[K]: sum_l 1/N sum_n ||z_l - f_l(z_{l-1})||^2."""
        k = next(iter(params.values())).shape[0]
        zs = self.inputs(z, k)
        with torch.no_grad():
            total = torch.zeros(k, dtype=self.x.dtype, device=self.x.device)
            for i in range(self.depth):
                total = total + (zs[i + 1] - layer(self.spec, params, i, zs[i])).pow(2).sum(-1).mean(-1)
            return total


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
    """Penalty (auxiliary coordinate) training of stacked ``params`` [K, ...]; see the module docstring.

    trainer_cfg: complete, as composed from ``conf/trainer/penalty.yaml``. Deterministic given the
    initial parameters (full batch, no sampling), so ``seeds`` only fix the initialization.
    ``optimizer_cfg`` and ``lr_scale`` are not used (step sizes come from backtracking). objective,
    bn_mode: as for backprop; the trained objective of this method is the nested network's loss plus
    weight_decay/2 times the squared weights (not biases).

    Raises:
        ValueError: batch norm or residual connections, a population.lr_scale, an invalid stages,
            alternations, w_solver, mu0 or mu_factor (``check_config``), an invalid objective or bn_mode.
    """
    check_spec(spec)
    if lr_scale is not None:
        raise ValueError("population.lr_scale is not supported by trainer=penalty (step sizes are set by backtracking)")
    check_config(trainer_cfg)
    check_choices(objective, bn_mode)
    cfg = trainer_cfg
    device, dtype = data.x_train.device, data.x_train.dtype
    k, n = len(seeds), data.x_train.shape[0]
    w = {name: v.detach().clone() for name, v in params.items()}
    init_params = {name: v.detach().clone() for name, v in params.items()}
    problem = Problem(spec, data.x_train, data.y_train, loss, cfg["weight_decay"])
    z = problem.forward_codes(w)
    l2 = objective_l2(spec, "penalty", optimizer_cfg, cfg, objective)
    recorder = Recorder(spec, data, loss, chunk_size, bool(cfg["snapshots"]), l2, bn_mode)
    extra: dict[str, list] = {name: [] for name in ("objective", "objective_w", "violation", "mu", "stage", "phase")}

    w_names = [name for names in problem.names for name in names]
    w_rows = [i for i, names in enumerate(problem.names) for _ in names]
    w_step = torch.full((spec.num_layers, k), float(cfg["step_init"]), dtype=dtype, device=device)
    z_step = torch.full((k, n), float(cfg["step_init"]), dtype=dtype, device=device)
    descent = dict(armijo=float(cfg["armijo"]), max_backtracks=int(cfg["max_backtracks"]), grow=float(cfg["step_grow"]))
    alternation = 0
    per_stage = int(cfg["alternations"])

    def checkpoint(mu: float, stage: int, phase: int, after_w: torch.Tensor | None) -> None:
        recorder.record(w, alternation, alternation / per_stage)
        extra["objective"].append(problem.objective(w, z, mu).cpu().numpy())
        extra["objective_w"].append(np.full(k, np.nan) if after_w is None else after_w.cpu().numpy())
        extra["violation"].append(problem.violation(w, z).cpu().numpy())
        extra["mu"].append(mu)
        extra["stage"].append(stage)
        extra["phase"].append(phase)

    def w_energy(tensors: list[torch.Tensor], mu: float) -> torch.Tensor:
        return problem.layer_terms(dict(zip(w_names, tensors)), z, mu)

    mu = float(cfg["mu0"])
    bar = trange(int(cfg["stages"]), desc="penalty", disable=not progress, leave=False)
    for stage in bar:
        mu = float(cfg["mu0"]) * float(cfg["mu_factor"]) ** stage
        checkpoint(mu, stage, 0, None)
        for a in range(per_stage):
            if cfg["w_solver"] == "gauss_newton":
                with torch.no_grad():
                    for i in range(len(spec.widths)):
                        w = gauss_newton_layer(problem, w, z, mu, i, int(cfg["gn_steps"]), int(cfg["max_backtracks"]),
                                               float(cfg["damping"]))
            tensors, w_step, _ = descend(lambda t: w_energy(t, mu), [w[nm] for nm in w_names], w_rows, w_step,
                                         int(cfg["w_steps"]), **descent)
            w = dict(zip(w_names, tensors))
            after_w = problem.objective(w, z, mu)
            z, z_step, _ = descend(lambda t: problem.example_terms(w, t, mu), z, [None] * len(z), z_step,
                                   int(cfg["z_steps"]), **descent)
            alternation += 1
            if (a + 1) % max(1, int(cfg["eval_every"])) == 0 or a + 1 == per_stage:
                checkpoint(mu, stage, 1, after_w)
        bar.set_postfix(objective=float(extra["objective"][-1].mean()), violation=float(extra["violation"][-1].mean()))

    # Final: codes from the forward pass, then refit the output layer on the nested loss.
    z = problem.forward_codes(w)
    out_names = problem.names[-1]
    last = spec.num_layers - 1

    def refit_energy(tensors: list[torch.Tensor]) -> torch.Tensor:
        return problem.layer_terms({**w, **dict(zip(out_names, tensors))}, z, mu)[last:]

    tensors, _, _ = descend(refit_energy, [w[nm] for nm in out_names], [0] * len(out_names), w_step[last:].clone(),
                            int(cfg["refit_steps"]), **descent)
    w.update(dict(zip(out_names, tensors)))
    checkpoint(mu, int(cfg["stages"]), 2, None)

    fields = recorder.result_fields()
    curves = fields["curves"]
    with torch.no_grad():
        spread = forward(spec, w, data.x_train).std(dim=1).amax(dim=-1).cpu().numpy()
    _warn_collapse(spread, curves["train_error"], spec.out_dim, cfg)
    extra_curves = {name: np.stack(rows, axis=1) if name in ("objective", "objective_w", "violation")
                    else np.asarray(rows) for name, rows in extra.items()}
    return TrainResult(
        params=w,
        init_params=init_params,
        diverged=~np.isfinite(curves["train_loss"][:, -1]),
        converged=np.zeros(k, dtype=bool),
        steps=np.full(k, alternation, dtype=np.int64),
        **fields,
        extra_curves=extra_curves,
    )


def _warn_collapse(spread: np.ndarray, train_error: np.ndarray, classes: int, cfg: Mapping[str, Any]) -> None:
    """Warn for members whose network ignores its input at chance-level accuracy.

    spread [K]: the largest standard deviation over training examples of any output of the final
    network. A collapsed member (constant codes, vanishing weights) has spread ~1e-10 where a
    trained one has ~10, so the default cut 1e-4 is far from both. (The constraint violation is no
    detector: a collapsed member's violation measured 5e-5 to 1e-4, a healthy one's 2e-6 to 1e-5.)
    """
    chance = 1.0 - 1.0 / classes
    collapsed = (spread < float(cfg["collapse_spread"])) & (train_error[:, -1] >= chance - float(cfg["collapse_margin"]))
    if collapsed.any():
        warnings.warn(
            f"penalty training collapsed for members {np.flatnonzero(collapsed).tolist()}: the network's outputs "
            f"vary by less than {cfg['collapse_spread']} (std over training examples) at chance-level training error "
            "(constant codes / vanishing weights; lower weight_decay or mu0, or use a larger initialization)",
            RuntimeWarning, stacklevel=3)
