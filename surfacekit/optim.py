"""Optimizer group: element-wise ``torch.optim`` optimizers and learning-rate schedules.

Every optimizer here acts element-wise, so one optimizer over stacked population tensors with the
summed population loss is exactly K independent optimizers.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rprop", "adagrad", "rmsprop", "adadelta", "adam", "adamax")
SCHEDULES = ("constant", "inverse", "cosine")


def build_optimizer(params: Iterable[torch.Tensor], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """An optimizer from an ``optimizer`` config (name, lr and the optimizer's own fields)."""
    name, lr, wd = cfg["name"], float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               nesterov=name == "nesterov", weight_decay=wd)
    if name == "rprop":
        return torch.optim.Rprop(params, lr=lr, etas=tuple(cfg.get("etas", (0.5, 1.2))),
                                 step_sizes=tuple(cfg.get("step_sizes", (1e-6, 50.0))))
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=float(cfg.get("eps", 1e-10)))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=float(cfg.get("alpha", 0.99)), eps=float(cfg.get("eps", 1e-8)),
                                   momentum=float(cfg.get("momentum", 0.0)), centered=bool(cfg.get("centered", False)),
                                   weight_decay=wd)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=float(cfg.get("rho", 0.9)), eps=float(cfg.get("eps", 1e-6)),
                                    weight_decay=wd)
    if name in ("adam", "adamax"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.Adamax
        return cls(params, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8)),
                   weight_decay=wd)
    raise ValueError(f"optimizer.name={name!r} is unknown; choose one of {list(OPTIMIZERS)}")


def learning_rate(cfg: Mapping[str, Any], epoch: float, total_epochs: float) -> float:
    """The learning rate at (fractional) ``epoch``.

    ``constant``: lr. ``inverse``: lr / (1 + epoch / decay_epochs). ``cosine``: lr * (1 + cos(pi * epoch / total)) / 2.
    """
    lr, schedule = float(cfg["lr"]), cfg.get("schedule", "constant")
    if schedule == "constant":
        return lr
    if schedule == "inverse":
        return lr / (1.0 + epoch / float(cfg.get("decay_epochs", 50)))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(total_epochs, 1e-12), 1.0)))
    raise ValueError(f"optimizer.schedule={schedule!r} is unknown; choose one of {list(SCHEDULES)}")
