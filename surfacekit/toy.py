"""Analytic two-parameter loss surfaces and optimizer paths on them.

Every surface is a plain ``loss_fn(theta)`` of a flat float64 tensor: ``theta`` [2] gives a scalar,
``theta`` [..., 2] gives [...] (handy for contour grids). They depend on torch only, so the curvature
and critical-point tools take them exactly as they take a network's ``member_loss_fn``.

Surfaces (``SURFACES`` holds each with its known critical points):

* ``two_minima``  C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2): minima at w1 = w2 = +-sqrt(1.46),
  a saddle at the origin. The Hessian at a minimum has eigenvalues 5.84 and 0.16, so gradient
  descent is stable for lr < 2 / 5.84 = 0.342: from the default start (0.5, 1.5), lr 0.25 decreases
  the loss monotonically to a minimum and lr 0.35 ends in a period-2 oscillation across it.
* ``identity``    (1 - w1 w2)^2, the single-path linear "identity network": a hyperbola of minima
  w1 w2 = 1 and a saddle at the origin.
* ``saddle``      x^2 - y^2.
* ``monkey``      x^3 - 3 x y^2, a degenerate (monkey) saddle at the origin.

``optimize`` runs any optimizer of the optimizer group (``surfacekit.optim.build_optimizer``) or
Newton's method on a surface and returns the path and losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]


def two_minima(theta: torch.Tensor) -> torch.Tensor:
    """C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2); theta [..., 2] -> [...]."""
    w1, w2 = theta[..., 0], theta[..., 1]
    return (w1 * w2 - 1.5) ** 2 + 0.04 * (w1**2 + w2**2)


def identity_network(theta: torch.Tensor) -> torch.Tensor:
    """(1 - w1 w2)^2, the loss of y = w2 w1 x fitted to y = x with E[x^2] = 1; theta [..., 2] -> [...]."""
    w1, w2 = theta[..., 0], theta[..., 1]
    return (1.0 - w1 * w2) ** 2


def saddle(theta: torch.Tensor) -> torch.Tensor:
    """x^2 - y^2; theta [..., 2] -> [...]."""
    return theta[..., 0] ** 2 - theta[..., 1] ** 2


def monkey_saddle(theta: torch.Tensor) -> torch.Tensor:
    """x^3 - 3 x y^2; theta [..., 2] -> [...]."""
    x, y = theta[..., 0], theta[..., 1]
    return x**3 - 3.0 * x * y**2


@dataclass(frozen=True)
class ToySurface:
    """A named analytic surface with its known critical points and a plotting window."""

    name: str
    loss_fn: LossFn
    minima: tuple[tuple[float, float], ...]
    saddles: tuple[tuple[float, float], ...]
    window: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    start: tuple[float, float] = (0.0, 0.0)
    formula: str = ""
    notes: dict = field(default_factory=dict)


_S = math.sqrt(1.46)
SURFACES: dict[str, ToySurface] = {
    "two_minima": ToySurface("two_minima", two_minima, ((_S, _S), (-_S, -_S)), ((0.0, 0.0),),
                             (-2.5, 2.5, -2.5, 2.5), start=(0.5, 1.5),
                             formula="(w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2)"),
    "identity": ToySurface("identity", identity_network, ((1.0, 1.0), (-1.0, -1.0), (2.0, 0.5), (0.5, 2.0)),
                           ((0.0, 0.0),), (-2.5, 2.5, -2.5, 2.5), start=(-0.4, 2.2),
                           formula="(1 - w1 w2)^2 (minima: the whole hyperbola w1 w2 = 1)"),
    "saddle": ToySurface("saddle", saddle, (), ((0.0, 0.0),), (-2.0, 2.0, -2.0, 2.0), start=(1.5, 0.01),
                         formula="x^2 - y^2"),
    "monkey": ToySurface("monkey", monkey_saddle, (), ((0.0, 0.0),), (-2.0, 2.0, -2.0, 2.0), start=(1.0, 0.1),
                         formula="x^3 - 3 x y^2"),
}


def surface(name: str) -> ToySurface:
    """The toy surface called ``name`` (one of ``SURFACES``)."""
    if name not in SURFACES:
        raise ValueError(f"toy surface {name!r} is unknown; choose one of {sorted(SURFACES)}")
    return SURFACES[name]


def gradient(loss_fn: LossFn, theta: torch.Tensor) -> torch.Tensor:
    """Gradient of ``loss_fn`` at ``theta`` [2] (autograd)."""
    t = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(loss_fn(t), t)
    return g


# Settings shown in analyses/toy_optimizers.py: name -> optimizer config (``name`` is the optimizer).
TOY_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "gd_lr0.25": {"name": "sgd", "lr": 0.25},
    "gd_lr0.35": {"name": "sgd", "lr": 0.35},
    "momentum": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
    "nesterov": {"name": "nesterov", "lr": 0.05, "momentum": 0.9},
    "rprop": {"name": "rprop", "lr": 0.05},
    "adagrad": {"name": "adagrad", "lr": 0.5},
    "rmsprop": {"name": "rmsprop", "lr": 0.05},
    "adadelta": {"name": "adadelta", "lr": 10.0},
    "adam": {"name": "adam", "lr": 0.1},
    "adamax": {"name": "adamax", "lr": 0.1},
    "newton": {"name": "newton", "lr": 1.0},
}


def newton_step(loss_fn: LossFn, theta: torch.Tensor, lr: float = 1.0, damping: float = 0.0) -> torch.Tensor:
    """One Newton step theta - lr (H + damping I)^-1 g, with the exact Hessian [2, 2] of ``loss_fn``.

    Undamped Newton moves to the nearest critical point of the local quadratic model, saddles included.
    """
    g = gradient(loss_fn, theta)
    h = torch.autograd.functional.hessian(loss_fn, theta.detach())
    h = h + damping * torch.eye(h.shape[0], dtype=h.dtype)
    return theta - lr * torch.linalg.solve(h, g)


def optimize(loss_fn: LossFn, start, optimizer: Mapping[str, Any], steps: int = 100,
             max_norm: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``steps`` steps of an optimizer on ``loss_fn`` from ``start`` (a point in R^2, or R^P).

    ``optimizer`` is an optimizer-group config (``name``, ``lr`` and its fields; see surfacekit.optim)
    or ``{"name": "newton", "lr": 1.0, "damping": 0.0}``. Returns the path [T, 2] and the losses [T]
    with T = steps + 1 (the start included), float64. A run whose iterate leaves the ball of radius
    ``max_norm`` stops there (the rest of the path repeats the last point, losses are inf).
    """
    from surfacekit.optim import build_optimizer

    theta = torch.as_tensor(start, dtype=torch.float64).detach().clone()
    name = optimizer["name"]
    path = [theta.clone()]
    with torch.no_grad():
        losses = [float(loss_fn(theta))]
    if name == "newton":
        lr, damping = float(optimizer.get("lr", 1.0)), float(optimizer.get("damping", 0.0))
        step = lambda t: newton_step(loss_fn, t, lr, damping).detach()  # noqa: E731
    else:
        param = theta.clone().requires_grad_(True)
        opt = build_optimizer([param], {**optimizer})

        def step(_t):
            opt.zero_grad()
            with torch.enable_grad():
                loss_fn(param).backward()
            opt.step()
            return param.detach().clone()

    diverged = False
    for _ in range(int(steps)):
        if diverged:
            path.append(path[-1])
            losses.append(math.inf)
            continue
        theta = step(theta)
        if not torch.isfinite(theta).all() or theta.norm() > max_norm:
            diverged = True
            path.append(path[-1])
            losses.append(math.inf)
            continue
        path.append(theta)
        with torch.no_grad():
            losses.append(float(loss_fn(theta)))
    return torch.stack(path), torch.tensor(losses, dtype=torch.float64)


def grid(loss_fn: LossFn, window: tuple[float, float, float, float], num: int = 201):
    """Loss on a num x num grid over ``window``: (xs [num], ys [num], Z [num, num] with Z[i, j] at (xs[j], ys[i]))."""
    xs = torch.linspace(window[0], window[1], num, dtype=torch.float64)
    ys = torch.linspace(window[2], window[3], num, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    with torch.no_grad():
        z = loss_fn(torch.stack([xx, yy], dim=-1))
    return xs, ys, z
