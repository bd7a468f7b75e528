"""Optimizer group: element-wise ``torch.optim`` optimizers, their weight decay, learning-rate schedules.

Every optimizer here acts element-wise, so one optimizer over stacked population tensors with the
summed population loss is exactly K independent optimizers.

Weight decay (``optimizer.weight_decay`` = wd) is *coupled* in every optimizer that takes it: torch
adds wd * theta to the gradient before the optimizer's own update (``SGD`` with or without
(Nesterov) momentum, ``Adagrad``, ``RMSprop``, ``Adadelta``, ``Adam`` (not AdamW), ``Adamax``), and
it does so for every parameter tensor it is given: weights, biases and batch-norm scales and
shifts alike. So these optimizers minimize L(theta) + (wd/2) |theta|^2 (see
``surfacekit.objective``). ``Rprop`` takes no weight decay (torch has none); asking for it raises.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rprop", "adagrad", "rmsprop", "adadelta", "adam", "adamax")
SCHEDULES = ("constant", "inverse", "cosine")


def optimizer_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` completed with the defaults of its option of the ``optimizer`` config group (the YAML).

    A config composed by Hydra is already complete and comes back unchanged as a dict; a partial one
    (``{"name": "adam", "lr": 0.01}`` in direct use) gets the YAML's values for the missing keys.

    Raises:
        ValueError: an unknown optimizer name.
    """
    from surfacekit.config import group_defaults  # config imports this module's name lists

    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={name!r} is unknown; choose one of {list(OPTIMIZERS)}")
    return {**group_defaults("optimizer", name), **dict(cfg)}


def coupled_weight_decay(cfg: Mapping[str, Any]) -> float:
    """The coefficient wd of the (wd/2) |theta|^2 term the optimizer adds to the loss it minimizes
    (every parameter; see the module docstring): ``optimizer.weight_decay``, and 0 for rprop."""
    return 0.0 if cfg["name"] == "rprop" else float(cfg.get("weight_decay", 0.0))


def build_optimizer(params: Iterable[torch.Tensor], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """An optimizer from an ``optimizer`` config (name, lr and the optimizer's own fields; missing
    fields take the YAML defaults, see :func:`optimizer_config`).

    Raises:
        ValueError: an unknown name, or rprop with a non-zero weight_decay (torch's Rprop has none).
    """
    cfg = optimizer_config(cfg)
    name, lr = cfg["name"], float(cfg["lr"])
    params = list(params)
    if name == "rprop":
        if float(cfg.get("weight_decay", 0.0)) != 0.0:
            raise ValueError(f"optimizer.weight_decay={cfg['weight_decay']} with optimizer=rprop: torch's Rprop has no "
                             "weight decay; use 0")
        return torch.optim.Rprop(params, lr=lr, etas=tuple(cfg["etas"]), step_sizes=tuple(cfg["step_sizes"]))
    wd = float(cfg["weight_decay"])
    # torch's single-kernel SGD update (weight decay and momentum folded in): the default's result to
    # rounding (bit for bit without momentum; an ulp apart with it), 2.5 times faster with momentum and
    # weight decay for the tensors of the benchmark's population step (64-100-10, K = 64; 100 against
    # 250 us, one thread); for CPU and CUDA tensors.
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, fused=fused)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg["momentum"]), nesterov=name == "nesterov",
                               weight_decay=wd, fused=fused)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd, eps=float(cfg["eps"]))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=float(cfg["alpha"]), eps=float(cfg["eps"]),
                                   momentum=float(cfg["momentum"]), centered=bool(cfg["centered"]), weight_decay=wd)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=float(cfg["rho"]), eps=float(cfg["eps"]), weight_decay=wd)
    cls = torch.optim.Adam if name == "adam" else torch.optim.Adamax
    return cls(params, lr=lr, betas=tuple(cfg["betas"]), eps=float(cfg["eps"]), weight_decay=wd)


def learning_rate(cfg: Mapping[str, Any], epoch: float, total_epochs: float) -> float:
    """The learning rate at (fractional) ``epoch`` of a complete optimizer config.

    ``constant``: lr. ``inverse``: lr / (1 + epoch / decay_epochs). ``cosine``:
    lr * (1 + cos(pi * min(epoch / total_epochs, 1))) / 2, so 0 from the last epoch on.

    Raises:
        ValueError: an unknown schedule.
    """
    lr, schedule = float(cfg["lr"]), cfg["schedule"]
    if schedule == "constant":
        return lr
    if schedule == "inverse":
        return lr / (1.0 + epoch / float(cfg["decay_epochs"]))
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(total_epochs, 1e-12), 1.0)))
    raise ValueError(f"optimizer.schedule={schedule!r} is unknown; choose one of {list(SCHEDULES)}")
