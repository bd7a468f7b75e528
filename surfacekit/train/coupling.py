"""Coupling a population: the members become workers of a centre variable (EASGD, EAMSGD) or are
periodically averaged (``trainer.coupling``; the default ``none`` leaves K independent members).

Elastic averaging SGD (Zhang, Choromanska, LeCun 2015, "Deep learning with Elastic Averaging SGD",
Algorithms 1 and 2 and eq. 5-6). The centre c is one extra set of parameters without a gradient of
its own. With p active workers and the moving rate alpha = beta / p, a worker x_i that communicates
at step t exchanges the elastic difference d_i = alpha (x_i - c) taken at its *pre-elastic* point
(before this step's local update, as the authors' code does):

    x_i <- x_i - eta g_i(x_i) - d_i,        c <- c + sum_i d_i      (communicating workers i).

``communication=synchronous``: every worker communicates at the steps t = 0, tau, 2 tau, ... and
the centre moves by the sum of the differences, all taken from the old values (eq. 5-6: with
tau = 1, c <- (1 - beta) c + beta mean_i x_i). ``round_robin``: worker k communicates at the steps t
with t = k (mod tau), workers of one step one after another in member order, each against the
centre as the previous one left it (the deterministic form of the asynchronous scheme; with
tau = p, one worker per step). ``eta g_i`` stands for whatever step the optimizer took (including
``population.lr_scale`` and coupled weight decay).

EAMSGD (Algorithm 2) adds Nesterov momentum delta on the workers: v <- delta v - eta g(x + delta v),
x <- x + v - d. The workers are held at their look-ahead points y = x + delta v, where the gradient
is taken (as torch's Nesterov SGD holds its parameters), so the trainer's forward pass needs no
change; the elastic difference, the centre and the worker-centre distance use x = y - delta v.
With beta = 0 it is Nesterov's method (torch's ``nesterov`` optimizer with momentum delta, for a
constant learning rate). Use it with ``optimizer=sgd``.

``averaging`` (the baseline): every tau steps (synchronous only) the active workers are replaced by
their mean after the local step; the mean is the centre.

Every worker starts at the centre's starting point, the initialization of the population's first
member (the paper's x_i = c at start). Diverged or frozen members take no part: they are left out
of the centre's update and of p. Stability (synchronous, tau = 1, a quadratic with small eta h):
the mean mode of (x, c) is multiplied by 1 - alpha - beta per step, so it needs beta < 2p / (p + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from surfacekit.population import Params
from surfacekit.train.common import Recorder, ResultGroup, TrainResult

COUPLINGS = ("none", "easgd", "eamsgd", "averaging")
COMMUNICATIONS = ("synchronous", "round_robin")


@dataclass
class Coupling:
    """The state of a coupled population: its settings, the centre [1, ...] and what is recorded.

    start: the workers' common starting point [1, ...]; velocity: EAMSGD's v [K, ...] (else empty);
    updates: exchanges that moved the centre; gradient_evaluations: active worker-steps so far;
    recorder: the centre's curves; rows: per evaluation, ``distance`` [K] (|x_i - c|, Euclidean over
    all parameters), ``alpha`` (beta / p; NaN for averaging), ``active_workers`` (p) and ``gradient_evaluations``.
    """

    kind: str
    tau: int
    beta: float
    delta: float
    communication: str
    centre: Params
    start: Params
    recorder: Recorder
    velocity: Params = field(default_factory=dict)
    step: int = 0
    updates: int = 0
    gradient_evaluations: int = 0
    rows: dict[str, list] = field(default_factory=lambda: {"distance": [], "alpha": [], "active_workers": [],
                                                            "gradient_evaluations": []})


def start(trainer_cfg: Mapping[str, Any], params: Params, recorder: Recorder) -> Coupling | None:
    """Set up ``trainer_cfg["coupling"]`` on the population ``params`` [K, ...] (modified in place: every
    worker is set to the first member's initialization); None for ``coupling="none"``.

    ``recorder``: the workers' recorder; the centre gets one with the same data, loss and objective.

    Raises:
        ValueError: an unknown coupling or communication, tau < 1, beta < 0, delta outside [0, 1),
            or averaging with round_robin.
    """
    kind = str(trainer_cfg.get("coupling", "none"))
    if kind not in COUPLINGS:
        raise ValueError(f"trainer.coupling={kind!r} is unknown; choose one of {list(COUPLINGS)}")
    if kind == "none":
        return None
    tau, beta = int(trainer_cfg["tau"]), float(trainer_cfg["beta"])
    delta = float(trainer_cfg["delta"]) if kind == "eamsgd" else 0.0
    communication = str(trainer_cfg["communication"])
    if communication not in COMMUNICATIONS or tau < 1 or beta < 0 or not 0 <= delta < 1:
        raise ValueError(f"trainer.communication={communication!r}, tau={tau}, beta={beta}, delta={delta}: expected "
                         f"one of {list(COMMUNICATIONS)}, tau >= 1, beta >= 0, 0 <= delta < 1")
    if kind == "averaging" and communication != "synchronous":
        raise ValueError("trainer.coupling=averaging is synchronous only (trainer.communication=synchronous)")
    with torch.no_grad():
        first = {name: p[:1].detach().clone() for name, p in params.items()}
        for name, p in params.items():
            p.copy_(first[name].expand_as(p))
    r = recorder
    centre_recorder = Recorder(r.spec, r.data, r.loss, r.chunk_size, False, r.l2, r.bn_mode)
    velocity = {name: torch.zeros_like(p) for name, p in params.items()} if kind == "eamsgd" else {}
    return Coupling(kind, tau, beta, delta, communication, {n: v.clone() for n, v in first.items()}, first,
                    centre_recorder, velocity)


def communicating(c: Coupling, k: int) -> torch.Tensor:
    """Which of the ``k`` workers exchange with the centre at the current step [k] bool."""
    members = torch.arange(k)
    if c.communication == "synchronous":
        return torch.full((k,), c.step % c.tau == 0)
    return (c.step % c.tau) == (members % c.tau)


@torch.no_grad()
def step(c: Coupling, params: Params, before: Params, active: torch.Tensor) -> None:
    """The coupling's part of one training step, after the optimizer's local step.

    params: the workers after the local step [K, ...] (updated in place); before: the same before it
    (the pre-elastic points); active: [K] bool, the members that took part (frozen ones are restored
    by the trainer afterwards, keep their EAMSGD velocity and never touch the centre). Zhang et al. (2015), Algorithm 1 (EASGD)
    and 2 (EAMSGD), the difference taken before the local step; eq. 5-6 for the synchronous form.
    Cost: O(K P) element operations (P parameters per network), no gradient; memory: the centre
    [1, P] and, for EAMSGD, the velocities [K, P].
    """
    k = len(active)
    talk = (communicating(c, k) & active.cpu()).tolist()
    everyone = all(talk)  # no member selection needed (the usual synchronous exchange)
    p = int(active.sum())
    c.gradient_evaluations += p
    alpha = c.beta / max(p, 1)
    if c.kind == "eamsgd":
        points = {}
        for name, y in params.items():
            v = c.velocity[name]
            points[name] = torch.add(before[name], v, alpha=-c.delta)  # x, the worker variable (pre-elastic)
            if p == k:  # v <- delta v - eta g(x + delta v), the local step being y - before
                v.mul_(c.delta).add_(y).sub_(before[name])
            else:  # a frozen worker keeps its velocity
                moving = active.reshape(-1, *([1] * (v.dim() - 1)))
                v.copy_(torch.where(moving, c.delta * v + (y - before[name]), v))
            y.copy_(points[name]).add_(v)  # x + v; the look-ahead shift is added below
    else:
        points = before
    if c.kind == "averaging":
        if any(talk):
            chosen = torch.tensor(talk, device=active.device)
            for name, x in params.items():
                c.centre[name].copy_((x if everyone else x[chosen]).mean(dim=0, keepdim=True))
                x.copy_(c.centre[name].expand_as(x))
            c.updates += 1
    elif c.communication == "synchronous":
        if any(talk):
            chosen = torch.tensor(talk, device=active.device)
            for name, x in params.items():
                difference = torch.sub(points[name], c.centre[name]).mul_(alpha)
                x.sub_(difference)
                c.centre[name].add_((difference if everyone else difference[chosen]).sum(dim=0, keepdim=True))
            c.updates += 1
    else:
        for i in (i for i in range(k) if talk[i]):
            for name, x in params.items():
                difference = torch.sub(points[name][i], c.centre[name][0]).mul_(alpha)
                x[i].sub_(difference)
                c.centre[name][0].add_(difference)
            c.updates += 1
    if c.kind == "eamsgd":
        for name, y in params.items():
            y.add_(c.velocity[name], alpha=c.delta)
    c.step += 1


def worker_points(c: Coupling, params: Params) -> Params:
    """The workers' variables x [K, ...]: the parameters, minus EAMSGD's look-ahead delta v."""
    if c.kind != "eamsgd":
        return params
    return {name: p - c.delta * c.velocity[name] for name, p in params.items()}


@torch.no_grad()
def record(c: Coupling, params: Params, step_count: int, epoch: float, active: torch.Tensor) -> None:
    """One evaluation of the centre (its curves) and of the worker-centre distances, at a checkpoint."""
    c.recorder.record(c.centre, step_count, epoch)
    x = worker_points(c, {n: p.detach() for n, p in params.items()})
    squared = sum((x[n] - c.centre[n]).reshape(x[n].shape[0], -1).pow(2).sum(dim=1) for n in x)
    p = int(active.sum())
    c.rows["distance"].append(torch.sqrt(squared).cpu().numpy())
    c.rows["alpha"].append(c.beta / max(p, 1) if c.kind != "averaging" else float("nan"))
    c.rows["active_workers"].append(p)
    c.rows["gradient_evaluations"].append(c.gradient_evaluations)


def finish(c: Coupling, result: TrainResult, divergence_loss: float) -> TrainResult:
    """``result`` with the centre added: the groups ``centre`` (attributes coupling, alpha (at the start,
    beta / K; NaN for averaging), beta, tau, momentum (EAMSGD's delta, else 0), communication, start_member (position 0);
    datasets alpha, active_workers, gradient_evaluations [T]), ``centre/params`` and
    ``centre/init_params`` [1, ...], ``centre/curves`` [1, T] (train and test loss and error,
    grad_norm, as the workers'), ``centre/members`` (the centre's row: is_centre, final losses and
    errors, diverged, steps = exchanges that moved it); the curve ``centre_distance`` [K, T]; and the
    workers' ``init_params`` set to their common start."""
    centre = {n: v.detach() for n, v in c.centre.items()}
    curves = c.recorder.curves()
    k = len(next(iter(result.params.values())))
    final_loss = curves["train_loss"][:, -1]
    diverged = ~np.isfinite(final_loss) | (final_loss > divergence_loss)
    as_np = lambda params: {n: v.cpu().numpy() for n, v in params.items()}  # noqa: E731
    attrs = {"coupling": c.kind, "alpha": c.beta / k if c.kind != "averaging" else float("nan"), "beta": c.beta,
             "tau": c.tau, "momentum": c.delta, "communication": c.communication, "start_member": 0}
    rows = {name: np.asarray(values) for name, values in c.rows.items() if name != "distance"}
    groups = {
        "centre": ResultGroup(rows, {"centre": "eval"}, attrs),
        "centre/params": ResultGroup(as_np(centre), {"centre/params": "member,..."}),
        "centre/init_params": ResultGroup(as_np(c.start), {"centre/init_params": "member,..."}),
        "centre/curves": ResultGroup(curves, {"centre/curves": "member,eval"}),
        "centre/members": ResultGroup({
            "is_centre": np.array([True]), "final_train_loss": final_loss, "final_test_loss": curves["test_loss"][:, -1],
            "train_error": curves["train_error"][:, -1], "test_error": curves["test_error"][:, -1],
            "grad_norm": curves["grad_norm"][:, -1], "diverged": diverged, "converged": np.array([False]),
            "steps": np.array([c.updates])}, {"centre/members": "member"}),
    }
    init = {n: v.expand(k, *v.shape[1:]).clone() for n, v in c.start.items()}
    result.groups.update(groups)
    result.extra_curves["centre_distance"] = np.stack(c.rows["distance"], axis=1)
    result.init_params = init
    return result
