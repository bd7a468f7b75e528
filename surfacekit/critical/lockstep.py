"""Many scipy optimizers in lockstep: their loss-and-gradient evaluations batched over a population.

:func:`converge_population` runs :func:`~surfacekit.critical.certify.converge` for B members at once.
Each member's scipy run (L-BFGS-B, then trust-region Newton) keeps its own thread and its own
iterates; whenever it needs the loss and gradient at a point it hands the point to a
:class:`LockstepOracle` and waits. Once every running member has asked, the oracle evaluates all the
points in one pass of the population loss (row b of ``losses_fn`` depends on row b of its input
only), hands each member its row and lets them go on. One batched forward and backward pass replaces
B small ones; the Hessian-vector products of the Newton phase stay per member (rarely needed: L-BFGS-B
reaches the target from trained endpoints).

Why threads around scipy and not a batched L-BFGS of our own: scipy's L-BFGS-B and trust-region
methods are the well-kept implementations :mod:`~surfacekit.critical.certify` already relies on; the
oracle changes where the numbers are computed, not the algorithm, so every member's run is the one
:func:`~surfacekit.critical.certify.converge` makes alone whenever a row of the batched gradient equals
the member's own gradient (bit for bit on the CPU here: tests compare the two paths). Only one thread
computes at a time (the waiting ones hold no work), so the batch is deterministic.

Measured (64-25-10 tanh digits networks, float64, one thread): a loss-and-gradient evaluation costs
2.4 ms alone and 1.4 ms per member in batches of 16 (``benchmarks/certify.py``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from .certify import Convergence, _converge
from .evaluate import LossFn

# losses_for(rows) -> losses_fn: the population loss of the members at these positions, [n, P] -> [n]
LossesFor = Callable[[tuple[int, ...]], Callable[[Tensor], Tensor]]


class OracleClosed(RuntimeError):
    """The oracle stopped serving (an error or an interrupt in the coordinating thread)."""


class LockstepOracle:
    """Batched loss-and-gradient evaluations for B optimizers running in threads.

    A member's thread calls :meth:`evaluate` (b, x [P] float64) and blocks; :meth:`serve` (the
    coordinating thread) waits until every member still running has asked, evaluates them in one call
    of ``losses_for(rows)`` on the stacked points and returns each its (loss, gradient). A member that
    finishes calls :meth:`done`. ``passes`` counts the batched evaluations, ``evaluations`` the
    member evaluations they served.
    """

    def __init__(self, members: int, losses_for: LossesFor, device: torch.device | str = "cpu"):
        self.losses_for, self.device = losses_for, device
        self.live = set(range(members))
        self.pending: dict[int, np.ndarray] = {}
        self.results: dict[int, tuple[float, np.ndarray]] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.passes = self.evaluations = 0

    def evaluate(self, b: int, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Member b's loss and gradient [P] at x [P] (called from member b's thread)."""
        with self.cond:
            if self.closed:
                raise OracleClosed("the lockstep oracle stopped")
            self.pending[b] = np.array(x, dtype=np.float64)
            self.cond.notify_all()
            self.cond.wait_for(lambda: b in self.results or self.closed)
            if b not in self.results:
                raise OracleClosed("the lockstep oracle stopped")
            return self.results.pop(b)

    def done(self, b: int) -> None:
        """Member b will ask no more."""
        with self.cond:
            self.live.discard(b)
            self.pending.pop(b, None)
            self.cond.notify_all()

    def close(self) -> None:
        """Release every waiting member (each gets :class:`OracleClosed`)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def serve(self) -> None:
        """Evaluate batches until no member is running (run in the coordinating thread)."""
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.live <= set(self.pending))
                if not self.live:
                    return
                rows = tuple(sorted(self.live))
                points = np.stack([self.pending.pop(b) for b in rows])
            values, grads = self._losses_and_gradients(rows, points)
            with self.cond:
                for i, b in enumerate(rows):
                    self.results[b] = (float(values[i]), grads[i])
                self.passes += 1
                self.evaluations += len(rows)
                self.cond.notify_all()

    def _losses_and_gradients(self, rows: tuple[int, ...], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = torch.from_numpy(points).to(self.device).requires_grad_(True)
        with torch.enable_grad():
            losses = self.losses_for(rows)(t)
            (grad,) = torch.autograd.grad(losses.sum(), t, allow_unused=True)
        grad = torch.zeros_like(t) if grad is None else grad
        return losses.detach().cpu().numpy(), grad.detach().cpu().numpy()


def converge_population(losses_for: LossesFor, loss_fns: Sequence[LossFn], thetas0: Tensor,
                        **options) -> tuple[list[Convergence], LockstepOracle]:
    """:func:`~surfacekit.critical.certify.converge` for B members at once, their loss-and-gradient
    evaluations batched (module docstring).

    Args:
        losses_for: ``losses_for(rows)`` -> the population loss ([n, P] -> [n], float64) of the
            members at positions ``rows`` (a sorted tuple of indices into ``thetas0``).
        loss_fns: member b's own loss (its Hessian-vector products in the Newton phase).
        thetas0: the starts [B, P].
        options: the keyword arguments of :func:`~surfacekit.critical.certify.converge`.

    Returns the B :class:`~surfacekit.critical.certify.Convergence` runs (in order) and the oracle
    (``passes``: batched evaluations; ``evaluations``: member evaluations served).

    Raises:
        What a member's run raises (the first, after every member stopped), or what the batched
        evaluation raises.
    """
    b = len(thetas0)
    oracle = LockstepOracle(b, losses_for, thetas0.device)

    def run(i: int) -> Convergence:
        try:
            return _converge(loss_fns[i], thetas0[i], evaluate=lambda x: oracle.evaluate(i, x), **options)
        finally:
            oracle.done(i)

    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"), ThreadPoolExecutor(max_workers=b) as pool:
        futures = [pool.submit(run, i) for i in range(b)]
        try:
            oracle.serve()
        except BaseException:
            oracle.close()
            raise
    return [f.result() for f in futures], oracle
