"""Interim: the objective a job trained, until ``surfacekit.objective`` lands (issue 13)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig

from surfacekit.population import member_loss_fn


def trained_weight_decay(cfg: DictConfig) -> float:
    """The coupled L2 coefficient the job's optimizer applied to every parameter (0 for rprop, DTP)."""
    if cfg.trainer.method == "backprop":
        return float(cfg.optimizer.get("weight_decay", 0.0) or 0.0)
    return 0.0


def objective_fn(job: Any, cfg: DictConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """``loss_fn(theta)`` of the objective ``cfg.objective`` over the job's full training set."""
    data = member_loss_fn(job.spec, job.data.x_train, job.data.y_train, job.cfg.model.loss, cfg.get("chunk_size"))
    wd = trained_weight_decay(job.cfg) if cfg.objective == "trained" else 0.0
    if wd == 0.0:
        return data
    return lambda theta: data(theta) + 0.5 * wd * theta.pow(2).sum()
