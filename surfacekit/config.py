"""Validation of a composed job config at the boundary, before any work starts."""

from __future__ import annotations

import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from surfacekit.models import ACTIVATIONS, INITS, LOSSES
from surfacekit.optim import OPTIMIZERS, SCHEDULES

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """An invalid config value; the message names the key."""


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``device=...``; a clear error when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is invalid: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA device is available here; use device=cpu")
    return device


def _machine_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")


def validate_training(cfg: DictConfig) -> None:
    """Check the data/model/optimizer/trainer/population keys of a training job."""
    k = get(cfg, "population.size")
    _require(isinstance(k, int) and k >= 1, "population.size", k, "an integer >= 1")
    _require(isinstance(get(cfg, "population.first_member", 0), int) and get(cfg, "population.first_member", 0) >= 0,
             "population.first_member", get(cfg, "population.first_member"), "an integer >= 0")
    scale = get(cfg, "population.lr_scale")
    if scale is not None:
        _require(len(scale) == k and all(isinstance(v, (int, float)) and v > 0 for v in scale), "population.lr_scale",
                 list(scale), f"null or a list of {k} positive numbers (one per member)")
        _require(get(cfg, "optimizer.name") != "rprop", "population.lr_scale", list(scale),
                 "null with optimizer=rprop (its step is not proportional to lr)")
    widths = get(cfg, "model.widths")
    if widths is None:
        for key in ("model.width", "model.depth"):
            v = get(cfg, key)
            _require(isinstance(v, int) and v >= 1, key, v, "an integer >= 1")
    else:
        _require(len(widths) >= 1 and all(isinstance(w, int) and w >= 1 for w in widths), "model.widths", list(widths),
                 "a non-empty list of integers >= 1")
    for key, choices in (("model.activation", ACTIVATIONS), ("model.init", INITS), ("model.loss", LOSSES),
                         ("optimizer.name", OPTIMIZERS), ("optimizer.schedule", SCHEDULES), ("dtype", DTYPES)):
        v = get(cfg, key)
        _require(v in choices, key, v, f"one of {sorted(choices)}")
    lr = get(cfg, "optimizer.lr")
    _require(isinstance(lr, (int, float)) and lr > 0, "optimizer.lr", lr, "a number > 0")
    epochs = get(cfg, "trainer.epochs")
    _require(isinstance(epochs, int) and epochs >= 0, "trainer.epochs", epochs, "an integer >= 0")
    bs = get(cfg, "trainer.batch_size")
    _require(bs is None or (isinstance(bs, int) and bs >= 1), "trainer.batch_size", bs, "an integer >= 1 or null")


def check_memory(cfg: DictConfig, num_params: int, num_examples: int) -> None:
    """Refuse a population whose parameters, gradients, optimizer state and activations cannot fit."""
    itemsize = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    k = int(cfg.population.size)
    widest = max(get(cfg, "model.widths") or [get(cfg, "model.width")])
    bs = get(cfg, "trainer.batch_size") or num_examples
    estimate = itemsize * k * (5 * num_params + 4 * min(bs, num_examples) * widest * 4) / 2**30
    limit = get(cfg, "memory_limit_gb") or _machine_memory_gb()
    if estimate > limit:
        raise ConfigError(
            f"population.size={k} with {num_params} parameters per network needs about {estimate:.1f} GiB, "
            f"more than the {limit:.1f} GiB available (memory_limit_gb); reduce population.size or model.width"
        )
