"""The finders on toy surfaces with known critical points; the line search; the API."""

import numpy as np
import pytest
import torch

from surfacekit.critical import (
    armijo,
    classify,
    find,
    flatness_ratio,
    gradnorm,
    newton,
    sample_uniform_in_loss,
    saddle_free,
)
from surfacekit.critical.evaluate import Evaluations
from surfacekit.problems import F64, NEAR_ORIGIN, SURFACES, saddle, two_weight


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("method", ["newton", "newton_mr", "levenberg_marquardt"])
@pytest.mark.parametrize("start", NEAR_ORIGIN)
def test_newton_converges_to_the_saddle(name, method, start):
    fn = SURFACES[name]
    point = find(fn, torch.tensor(start, **F64), method, max_iter=60)
    assert point.accepted and point.status == "critical"
    assert point.theta.norm() < 0.02  # the saddle at the origin, not a minimum
    if name != "monkey":  # non-degenerate quadratic saddles: index 1 of 2
        assert point.grad_norm2 < 1e-20 and point.theta.norm() < 1e-10
        assert point.index.count == 1 and point.index.fraction == 0.5 and point.index.method == "dense"
    else:  # H = 0 at the saddle: Newton halves the distance per step, and ||H|| -> 0 with it
        assert point.acceptance_ratio <= 1 and point.grad_norm_scaled < 1e-5


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("start", NEAR_ORIGIN)
def test_saddle_free_newton_escapes_and_decreases_f(name, start):
    fn = SURFACES[name]
    run = saddle_free(fn, torch.tensor(start, **F64), max_iter=20, damping=1e-3)
    losses = np.asarray(run.losses)
    steps = np.diff(losses)  # never up; strictly down at every accepted step above f's rounding floor
    assert np.all(steps <= 0) and np.all(steps[losses[:-1] - losses[-1] > 1e-13] < 0), losses
    assert losses[-1] < fn(torch.zeros(2, **F64)).item() - 0.1  # well below the saddle's value
    assert run.theta.norm() > 10 * torch.tensor(start).norm()  # moved away from the saddle
    if name == "two_weight":  # bounded below: it reaches a minimum (index 0)
        point = find(fn, torch.tensor(start, **F64), "saddle_free", max_iter=60)
        assert point.accepted and point.index.count == 0
        assert abs(point.loss - 0.1184) < 1e-10  # min over w1 = w2 = s of (s^2 - 1.5)^2 + 0.08 s^2


def test_gradient_flat_toy_point_is_classified():
    # f = x + y^2: g = (1, 2y), H = diag(0, 2). At y = 0, g lies in the kernel of H: ||g||^2 = 1 is
    # stationary for the gradient-norm minimizer, which ends there; not a critical point.
    def fn(t):
        return t[0] + t[1] ** 2

    point = find(fn, torch.tensor([0.3, 0.4], **F64), "gradnorm", max_iter=50)
    assert point.status == "gradient_flat" and point.gradient_flat and not point.accepted
    assert abs(point.grad_norm2 - 1.0) < 1e-8 and point.flat_ratio < 1e-6
    assert not point.accepted_absolute and point.acceptance_ratio > 1e4
    # Newton-MR sees the same: the least-squares step removes 2y and stops, stalled, at y = 0.
    mr = find(fn, torch.tensor([0.3, 0.4], **F64), "newton_mr")
    assert mr.stop == "stalled" and mr.status == "gradient_flat" and abs(float(mr.theta[1])) < 1e-14
    assert abs(mr.kernel_component - 1.0) < 1e-12  # g's kernel part, which no step removes
    assert classify(True, 0.5) == "critical" and classify(False, 0.01) == "gradient_flat"
    assert classify(False, 0.5) == "rejected" and classify(False, float("nan")) == "rejected"


def test_flatness_ratio_of_a_quadratic():
    a = torch.diag(torch.tensor([4.0, 1.0, -2.0], **F64))
    theta = torch.tensor([0.0, 1.0, 0.0], **F64)  # g = (0, 1, 0), H g = g: ratio 1 / 4
    ratio, norm = flatness_ratio(lambda t: 0.5 * t @ a @ t, theta)
    assert abs(norm - 4.0) < 1e-10 and abs(ratio - 0.25) < 1e-10


def test_armijo_takes_the_first_sufficient_decrease():
    # f = x^2 from x = 1 along d = -4 (slope -8): alpha = 1 gives 9 (no), 0.5 gives 1 (no:
    # needs <= 1 - 0.1 * 0.5 * 8 = 0.6), 0.25 gives 0 (yes).
    ev = Evaluations(lambda t: (t**2).sum())
    step = armijo(ev, torch.ones(1, **F64), torch.tensor([-4.0], **F64), objective="loss", current=1.0,
                  slope=-8.0, step0=1.0, rho=0.1, beta=0.5, min_step=1e-3)
    assert step.alpha == 0.25 and float(step.theta) == 0.0 and step.loss == 0.0 and ev.num_grads == 3
    # ||g||^2 = 4x^2 along the same direction; and nothing acceptable above min_step
    step = armijo(ev, torch.ones(1, **F64), torch.tensor([-4.0], **F64), objective="grad_norm2", current=4.0,
                  slope=-32.0, step0=1.0, rho=0.1, beta=0.5, min_step=1e-3)
    assert step.alpha == 0.25 and float(step.grad) == 0.0
    assert armijo(ev, torch.ones(1, **F64), torch.tensor([4.0], **F64), objective="loss", current=1.0, slope=8.0,
                  step0=1.0, rho=0.1, beta=0.5, min_step=1e-3) is None
    with pytest.raises(ValueError, match="objective"):
        armijo(ev, torch.ones(1, **F64), torch.ones(1, **F64), objective="f", current=1.0, slope=-1.0, step0=1.0,
               rho=0.1, beta=0.5, min_step=1e-3)


def test_sample_uniform_in_loss_spreads_over_the_loss_range():
    losses = np.exp(-np.linspace(0, 8, 400))  # fast early descent: most points at low loss
    idx = sample_uniform_in_loss(losses, 2000, seed=0)
    assert idx.shape == (2000,) and idx.dtype.kind == "i"
    assert abs(np.mean(losses[idx]) - 0.5) < 0.03  # uniform on [e^-8, 1] has mean ~0.5
    assert np.array_equal(idx, sample_uniform_in_loss(losses, 2000, seed=0))
    with_nan = np.array([np.nan, 1.0, 0.5, np.inf])
    assert set(sample_uniform_in_loss(with_nan, 50)) <= {1, 2}
    with pytest.raises(ValueError):
        sample_uniform_in_loss(np.array([]), 3)


def test_find_rejects_bad_input_and_counts_costs():
    with pytest.raises(ValueError, match="unknown finder"):
        find(saddle, torch.ones(2, **F64), "bfgs")
    with pytest.raises(ValueError, match="1-D"):
        find(saddle, torch.ones(2, 2, **F64))
    with pytest.raises(ValueError, match="criterion"):
        find(saddle, torch.ones(2, **F64), criterion="relative")
    with pytest.raises(ValueError, match="rtol"):
        find(saddle, torch.ones(2, **F64), rtol=0.0, htol=0.0)
    run = newton(two_weight, torch.tensor([0.1, -0.07], **F64))
    assert run.num_hvps > 0 and run.num_grads > run.iterations and len(run.history) == run.iterations + 1
    assert len(run.step_norms) == run.iterations and len(run.solve_residuals) == run.iterations
    gd = gradnorm(saddle, torch.tensor([0.3, 0.2], **F64), optimizer="gd", step0=0.1, max_iter=200)
    assert gd.history[-1] < 1e-20 * gd.history[0] and np.all(np.diff(gd.history) <= 0)


def test_non_finite_start_stops_at_once():
    point = find(lambda t: (t**2).sum() * float("nan"), torch.ones(3, **F64), "newton_mr")
    assert point.stop == "nonfinite" and point.iterations == 0 and point.status == "rejected"
    assert not point.accepted and point.index is None


def test_float32_start_is_upcast_with_a_warning():
    with pytest.warns(UserWarning, match="float64"):
        point = find(saddle, torch.tensor([0.1, 0.2], dtype=torch.float32), "newton_mr", compute_index=False)
    assert point.theta.dtype == torch.float64 and point.accepted and point.theta.norm() < 1e-10
