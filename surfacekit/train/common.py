"""Pieces every training method shares: per-member minibatch orders, freezing, recorded curves.

All methods report the same backprop-defined full-data loss (``population.evaluate``), so
their endpoints go through the same histogram, spectrum and critical-point tools. The recorded
gradient norm is that of the method's trained objective (``surfacekit.objective``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import trange

from surfacekit.data import Dataset
from surfacekit.models import Spec, buffer_shapes
from surfacekit.objective import L2, check_choices, gradient_norms, mode_statistics
from surfacekit.population import Params, dataset_statistics, evaluate, flatten


@dataclass
class TrainResult:
    """What a training method returns.

    params / init_params: stacked [K, ...]; curves: name -> [K, T] at ``curve_steps`` [T] and
    ``curve_epochs`` [T]; diverged / converged: [K] bool; steps: [K] optimizer steps taken by each
    member before it froze or training ended; trajectory: [T, K, P] flat snapshots at
    ``curve_steps`` when requested, else None; extra_curves: method-specific curves [K, T] or [T];
    aux_params / init_aux_params: a method's own stacked parameters [K, ...] that are not part of the
    network (e.g. the inverse maps of target propagation), stored under /aux_params and /init_aux_params;
    buffers: batch-norm statistics [K, width] per hidden layer i (empty without batch norm), stored under
    /buffers: ``layers.{i}.bn_mean`` / ``bn_var``, the exact full-training-set mean and variance (divisor N)
    of the final parameters, which evaluation mode uses, and ``layers.{i}.bn_running_mean`` /
    ``bn_running_var``, torch's running averages (momentum 0.1, unbiased batch variances) at the end;
    groups: further HDF5 groups of a method or option by path (e.g. ``centre/params`` of a coupled
    population, ``tracked_sharpness``), each a :class:`ResultGroup`.
    """

    params: Params
    init_params: Params
    curves: dict[str, np.ndarray]
    curve_steps: np.ndarray
    curve_epochs: np.ndarray
    diverged: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    trajectory: np.ndarray | None = None
    extra_curves: dict[str, np.ndarray] = field(default_factory=dict)
    aux_params: Params = field(default_factory=dict)
    init_aux_params: Params = field(default_factory=dict)
    buffers: Params = field(default_factory=dict)
    groups: dict[str, "ResultGroup"] = field(default_factory=dict)


@dataclass
class ResultGroup:
    """One HDF5 group of a :class:`TrainResult`: arrays by name, axis names (``dims``: the group's path
    or ``path/name`` -> e.g. ``"member,eval"``) and the group's attributes."""

    arrays: dict[str, Any]
    dims: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def final_buffers(spec: Spec, params: Mapping[str, torch.Tensor], x_train: torch.Tensor, chunk_size: int | None,
                  running: Mapping[str, torch.Tensor]) -> Params:
    """The buffers of a :class:`TrainResult`: the exact full-training-set statistics of ``params``
    (``population.dataset_statistics``, chunked without changing them) under the evaluation names,
    and the ``running`` statistics renamed ``bn_running_mean`` / ``bn_running_var``; {} without batch norm."""
    buffers = {name: value.detach() for name, value in dataset_statistics(spec, params, x_train, chunk_size).items()}
    for name in buffer_shapes(spec):  # {layer}.bn_mean -> {layer}.bn_running_mean, likewise bn_var
        buffers[name.replace(".bn_", ".bn_running_")] = running[name].clone()
    return buffers


def minibatches(n: int, batch_size: int | None, gens: list[torch.Generator], device) -> Iterator[torch.Tensor | None]:
    """Index tensors [K, B] for one epoch, each member in its own random order.

    ``batch_size=None`` (or >= n) means full batch and yields ``None`` (use the shared data as is).
    A last, smaller batch is kept so every example is seen once per epoch.
    """
    if batch_size is None or batch_size >= n:
        yield None
        return
    orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])
    for start in range(0, n, batch_size):
        yield orders[:, start : start + batch_size]


class Freezer:
    """Holds members fixed once they diverge or converge: their parameters are restored after each step."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        k = next(iter(params.values())).shape[0]
        self.frozen = torch.zeros(k, dtype=torch.bool, device=next(iter(params.values())).device)
        self.values = {name: p.detach().clone() for name, p in params.items()}

    def freeze(self, mask: torch.Tensor, params: Mapping[str, torch.Tensor]) -> None:
        new = mask & ~self.frozen
        if bool(new.any()):
            for name, p in params.items():
                self.values[name][new] = p.detach()[new]
            self.frozen |= new

    @torch.no_grad()
    def restore(self, params: Mapping[str, torch.Tensor]) -> None:
        if bool(self.frozen.any()):
            for name, p in params.items():
                p[self.frozen] = self.values[name][self.frozen]

    @property
    def active(self) -> torch.Tensor:
        return ~self.frozen


class Recorder:
    """Evaluates the population on the full train and test sets and stores curves [K, T].

    train_loss / train_error: the data loss L over the training set with batch norm in ``bn_mode``;
    test_loss / test_error: evaluation mode (the statistics passed to ``record``: running statistics
    during training, the exact full-training-set ones after ``finish``), so a test example's output
    never depends on the other test examples; grad_norm: the norm of the gradient of the objective
    L + sum (c/2)|theta_p|^2 with the coefficients ``l2`` (the trained objective when the trainer
    passes its ``objective.l2_coefficients``; {} is the data objective) in ``bn_mode``.
    """

    NAMES = ("train_loss", "test_loss", "train_error", "test_error", "grad_norm")

    def __init__(self, spec: Spec, data: Dataset, loss: str, chunk_size: int | None, snapshot: bool,
                 l2: L2 | None = None, bn_mode: str = "batch"):
        check_choices("trained", bn_mode)
        self.spec, self.data, self.loss, self.chunk_size, self.snapshot = spec, data, loss, chunk_size, snapshot
        self.l2, self.bn_mode = dict(l2 or {}), bn_mode
        self.rows: dict[str, list[np.ndarray]] = {n: [] for n in self.NAMES}
        self.steps: list[int] = []
        self.epochs: list[float] = []
        self.snapshots: list[np.ndarray] = []

    def record(self, params: Mapping[str, torch.Tensor], step: int, epoch: float,
               statistics: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Append one evaluation. statistics: the evaluation-mode batch-norm statistics [K, width]
        (required with batch norm). Returns the row's values [K] by name."""
        d, spec = self.data, self.spec
        params = {k: v.detach() for k, v in params.items()}
        train_stats = mode_statistics(spec, self.bn_mode, statistics)
        test_stats = mode_statistics(spec, "eval", statistics)
        train_loss, train_err = evaluate(spec, params, d.x_train, d.y_train, self.loss, self.chunk_size, train_stats)
        test_loss, test_err = evaluate(spec, params, d.x_test, d.y_test, self.loss, self.chunk_size, test_stats)
        grad = gradient_norms(spec, params, d.x_train, d.y_train, self.loss, l2=self.l2, statistics=train_stats,
                              chunk_size=self.chunk_size)
        now = dict(train_loss=train_loss, test_loss=test_loss, train_error=train_err, test_error=test_err, grad_norm=grad)
        for name, value in now.items():
            self.rows[name].append(value.cpu().numpy())
        self.steps.append(step)
        self.epochs.append(epoch)
        if self.snapshot:
            self.snapshots.append(flatten(params).cpu().numpy())
        return now

    def finish(self, params: Mapping[str, torch.Tensor], statistics: Mapping[str, torch.Tensor]) -> None:
        """Redo the last evaluation (at the final ``params``) with the final statistics (``final_buffers``);
        nothing to do without batch norm."""
        if not self.spec.batch_norm:
            return
        step, epoch = self.steps[-1], self.epochs[-1]
        for rows in (*self.rows.values(), self.steps, self.epochs, *([self.snapshots] if self.snapshot else [])):
            rows.pop()
        self.record(params, step, epoch, statistics)

    def curves(self) -> dict[str, np.ndarray]:
        return {name: np.stack(rows, axis=1) for name, rows in self.rows.items()}

    def result_fields(self) -> dict[str, Any]:
        """The recorded parts of a :class:`TrainResult`: curves, their steps and epochs, trajectory."""
        return {"curves": self.curves(), "curve_steps": np.asarray(self.steps),
                "curve_epochs": np.asarray(self.epochs),
                "trajectory": np.stack(self.snapshots) if self.snapshots else None}


def epochs_with_checkpoints(epochs: int, eval_every: int, freezer: Freezer, recorder: Recorder,
                            checkpoint: Callable[[float], None], desc: str, progress: bool) -> Iterator[int]:
    """Yield epoch indices 0..epochs-1 while any member is active, calling ``checkpoint(epoch)``
    before the first, after every ``eval_every``-th and the last epoch, and after an early stop."""
    checkpoint(0.0)
    last_epoch = 0
    bar = trange(epochs, desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        if bool(freezer.frozen.all()):
            break
        yield epoch
        last_epoch = epoch + 1
        if last_epoch % eval_every == 0 or last_epoch == epochs:
            checkpoint(float(last_epoch))
            bar.set_postfix(train_loss=float(np.nanmean(recorder.rows["train_loss"][-1])))
    if recorder.epochs[-1] != float(last_epoch):
        checkpoint(float(last_epoch))
