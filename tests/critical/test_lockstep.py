"""converge_population: B scipy runs whose evaluations are batched equal B separate converge() runs
(the same iterates, bit for bit on the CPU), through both phases, with a non-finite member among them;
errors in the batched evaluation stop every thread and reach the caller."""

import math

import pytest
import torch

from surfacekit.critical.certify import converge
from surfacekit.critical.lockstep import converge_population
from surfacekit.models import MLPSpec
from surfacekit.objective import objective_values
from surfacekit.population import flatten, init_population, unflatten

F64 = dict(dtype=torch.float64)
SPEC = MLPSpec(5, (3,), 3, activation="tanh", init="lecun")


def problem():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=gen, **F64), torch.randn(30, 3, generator=gen, **F64)
    names = list(init_population(SPEC, [0]))

    def losses(thetas):  # row b: member b's objective (MSE + weight decay 0.01)
        return objective_values(SPEC, unflatten(thetas, SPEC), x, y, "mse", l2={n: 0.01 for n in names})

    starts = flatten(init_population(SPEC, [1, 2, 3, 4])).to(torch.float64)
    return losses, starts


def test_lockstep_makes_the_runs_of_separate_converge_calls(float64):
    """With an evaluation that is row-wise by construction, every member's iterates are those of its own
    converge() run exactly: the oracle changes where numbers are computed, not the algorithm."""
    losses, starts = problem()
    starts[2] = float("nan")  # a member that cannot start: stops at once, the others go on
    calls = []
    fns = [lambda t: losses(t[None])[0]] * len(starts)

    def losses_for(rows):
        calls.append(rows)
        return lambda thetas: torch.stack([fns[0](t) for t in thetas])

    for options in ({}, {"max_iter": 5}):  # L-BFGS-B alone; L-BFGS-B then trust-ncg (products per member)
        runs, oracle = converge_population(losses_for, fns, starts, **options)
        for b, run in enumerate(runs):
            alone = converge(fns[b], starts[b], **options)
            assert run.stop == alone.stop and run.num_grads == alone.num_grads and run.num_hvps == alone.num_hvps
            if b == 2:
                assert run.stop == "lbfgs:nonfinite" and math.isnan(run.grad_norm2)
                continue
            assert torch.equal(run.theta, alone.theta) and run.history == alone.history
        assert "newton" in runs[0].stop if options else "newton" not in runs[0].stop
        assert oracle.evaluations == sum(r.num_grads for r in runs)
        assert oracle.passes == max(r.num_grads for r in runs) < oracle.evaluations  # one pass serves many members
    assert calls[0] == (0, 1, 2, 3) and (0, 1, 3) in calls  # the finished member leaves the batch


def test_batched_population_loss_reaches_the_same_points(float64):
    """Through the population loss itself (rows batched, so rounding may differ from a single row's),
    every member reaches the target and the point its separate run reaches."""
    losses, starts = problem()
    fns = [lambda t: losses(t[None])[0]] * len(starts)
    runs, _ = converge_population(lambda rows: losses, fns, starts, tol=1e-24, rtol=1e-24)
    for b, run in enumerate(runs):
        alone = converge(fns[b], starts[b], tol=1e-24, rtol=1e-24)
        assert run.grad_norm2 <= run.target and alone.grad_norm2 <= alone.target  # stops may differ (rounding)
        assert run.loss == pytest.approx(alone.loss, rel=1e-12)
        assert float((run.theta - alone.theta).norm()) < 1e-8 * float(alone.theta.norm())


def test_an_error_in_the_batched_evaluation_reaches_the_caller(float64):
    losses, starts = problem()
    count = [0]

    def failing(rows):
        count[0] += 1
        if count[0] == 3:
            raise RuntimeError("boom")
        return losses

    fns = [lambda t: losses(t[None])[0]] * len(starts)
    with pytest.raises(RuntimeError, match="boom"):
        converge_population(failing, fns, starts)
