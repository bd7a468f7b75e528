"""Pieces every training method shares: per-member minibatch orders, freezing, recorded curves.

All methods report the same backprop-defined full-data loss (``population.evaluate``), so
their endpoints go through the same histogram, spectrum and critical-point tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import trange

from surfacekit.data import Dataset
from surfacekit.models import MLPSpec
from surfacekit.population import Params, evaluate, flatten, gradient_norms


@dataclass
class TrainResult:
    """What a training method returns.

    params / init_params: stacked [K, ...]; curves: name -> [K, T] at ``curve_steps`` [T] and
    ``curve_epochs`` [T]; diverged / converged: [K] bool; steps: [K] optimizer steps taken by each
    member before it froze or training ended; trajectory: [T, K, P] flat snapshots at
    ``curve_steps`` when requested, else None; extra_curves: method-specific curves [K, T] or [T];
    aux_params / init_aux_params: a method's own stacked parameters [K, ...] that are not part of the
    network (e.g. the inverse maps of target propagation), stored under /aux_params and /init_aux_params.
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


def member_generators(seeds: list[int], device: str | torch.device, stream: int = 1) -> list[torch.Generator]:
    """One generator per member for random stream ``stream`` (1: minibatch order, 2: training noise),
    separate from the member's initialization (stream 0)."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed((int(s) + stream) % (2**63))
        gens.append(g)
    return gens


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
    """Evaluates the population on the full train and test sets and stores curves [K, T]."""

    NAMES = ("train_loss", "test_loss", "train_error", "test_error", "grad_norm")

    def __init__(self, spec: MLPSpec, data: Dataset, loss: str, chunk_size: int | None, snapshot: bool):
        self.spec, self.data, self.loss, self.chunk_size, self.snapshot = spec, data, loss, chunk_size, snapshot
        self.rows: dict[str, list[np.ndarray]] = {n: [] for n in self.NAMES}
        self.steps: list[int] = []
        self.epochs: list[float] = []
        self.snapshots: list[np.ndarray] = []

    def record(self, params: Mapping[str, torch.Tensor], step: int, epoch: float) -> dict[str, torch.Tensor]:
        d = self.data
        params = {k: v.detach() for k, v in params.items()}
        train_loss, train_err = evaluate(self.spec, params, d.x_train, d.y_train, self.loss, self.chunk_size)
        test_loss, test_err = evaluate(self.spec, params, d.x_test, d.y_test, self.loss, self.chunk_size)
        grad = gradient_norms(self.spec, params, d.x_train, d.y_train, self.loss, self.chunk_size)
        now = dict(train_loss=train_loss, test_loss=test_loss, train_error=train_err, test_error=test_err, grad_norm=grad)
        for name, value in now.items():
            self.rows[name].append(value.cpu().numpy())
        self.steps.append(step)
        self.epochs.append(epoch)
        if self.snapshot:
            self.snapshots.append(flatten(params).cpu().numpy())
        return now

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
