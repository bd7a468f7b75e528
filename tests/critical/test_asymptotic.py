"""New-user trial findings on acceptance: asymptotic endpoints, start-dependent acceptance, NaN starts.

Measured before the fix: on ``exp(t_0) + t_1^2`` from (0.5, 0.3) all five finders returned
status "critical" at t_0 ~ -22.5 (17.1 and 18.5 for saddle-free and Levenberg-Marquardt); on a
separable logistic regression all five accepted ``||w|| ~ 113`` (loss 1e-10, ``||H||_2`` 2e-10);
on ``|t|_4^4 + (t_0 - 3)^2 / 2`` from (100, 100) Newton-MR accepted (0.927, 0.771) with
``||g||^2 = 4.58`` because ``||g_0|| = 5.7e6``; from a NaN start gradnorm raised NonFiniteError
while the four others returned rejected / "nonfinite".
"""

import math

import pytest
import torch

from surfacekit.critical import METHODS, STATUSES, classify_endpoint, find
from surfacekit.critical.evaluate import value_and_grad
from surfacekit.critical.trace import FinderRun
from surfacekit import problems
from surfacekit.problems import F64, NEAR_ORIGIN, SURFACES, linear_autoencoder

SCALES = (1e-9, 1.0, 1e6)


def exp_valley(t):
    return torch.exp(t[0]) + t[1] ** 2  # no critical point: f -> 0 as t_0 -> -inf


def separable_logistic():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, **F64)
    y = torch.sign(x @ torch.tensor([1.0, -2.0, 0.5], **F64))  # linearly separable: inf f = 0, never attained
    return lambda w: torch.nn.functional.softplus(-y * (x @ w)).mean()


def quartic(t):
    return (t ** 4).sum() + 0.5 * (t[0] - 3) ** 2  # one minimum, near (1.26, 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", SCALES)
def test_exp_valley_endpoints_are_asymptotic_at_every_scale(method, scale):
    point = find(lambda t: scale * exp_valley(t), torch.tensor([0.5, 0.3], **F64), method, compute_index=False)
    assert point.theta[0] < -15 and point.acceptance_ratio <= 1  # the gradient test alone passes
    assert point.status == "asymptotic" and not point.accepted and "asymptotic" in STATUSES
    # the Newton step along t_0 is exactly 1 for exp at every t: not small against ||theta||, however far out
    assert point.newton_step == pytest.approx(1.0, rel=1e-3)
    assert point.stol * float(point.theta.norm()) < point.newton_step
    assert float(point.theta.norm()) - math.hypot(0.5, 0.3) > point.stol * float(point.theta.norm())


@pytest.mark.parametrize("method", METHODS)
def test_separable_logistic_regression_is_asymptotic(method):
    point = find(separable_logistic(), torch.tensor([0.1, 0.1, 0.1], **F64), method, max_iter=200,
                 compute_index=False)
    assert point.theta.norm() > 50 and point.loss < 1e-6  # ran off to the infimum
    assert point.status == "asymptotic" and not point.accepted and not point.gradient_flat


@pytest.mark.parametrize("name", list(SURFACES))
@pytest.mark.parametrize("method", ["newton", "newton_mr", "levenberg_marquardt", "gradnorm"])
def test_true_critical_points_stay_accepted(name, method):
    # includes the monkey saddle, where H = 0 at the critical point and the Newton step shrinks with r
    point = find(SURFACES[name], torch.tensor(NEAR_ORIGIN[0], **F64), method, max_iter=60, compute_index=False)
    assert point.status == "critical" and point.accepted and point.step_ratio <= point.stol


def test_linear_autoencoder_critical_point_from_outside_is_not_asymptotic():
    # a start inside the critical point's norm: the finder runs outward, yet the point is critical
    ae = linear_autoencoder()
    target = ae.critical_point((0, 1), torch.eye(2, **F64))
    start = 0.8 * target + 0.01 * torch.randn(20, generator=torch.Generator().manual_seed(1), **F64)
    point = find(ae.loss_fn, start, "newton_mr", compute_index=False)
    assert point.theta.norm() > start.norm() and point.status == "critical"
    # flat orbit directions (GL(2)) amplify rounding in ||H^+ g|| (measured 1e-6), still far below the
    # asymptotic test's bound, 1e-3 ||theta|| = 2e-3
    assert point.newton_step < 1e-4 < point.stol * float(point.theta.norm())


def _endpoint(fn, start, end):
    f0, g0 = value_and_grad(fn, start)
    f1, g1 = value_and_grad(fn, end)
    return FinderRun(end, 12, 0, 0, [float(g0 @ g0), float(g1 @ g1)], [f0, f1], "max_iter",
                     start_norm=float(start.norm()))


@pytest.mark.parametrize("scale", SCALES)
def test_acceptance_is_a_property_of_the_point_not_of_the_start(scale):
    fn = lambda t: scale * quartic(t)  # noqa: E731
    end = torch.tensor([0.927, 0.771], **F64)
    far = classify_endpoint(fn, _endpoint(fn, torch.tensor([100.0, 100.0], **F64), end), "newton_mr",
                            compute_index=False)
    near = classify_endpoint(fn, _endpoint(fn, torch.tensor([1.0, 1.0], **F64), end), "newton_mr",
                             compute_index=False)
    assert far.acceptance_ratio <= 1 < near.acceptance_ratio  # the start-relative test alone disagrees
    assert not far.accepted and not near.accepted and far.status == near.status == "rejected"
    assert far.step_ratio == pytest.approx(near.step_ratio) and far.step_ratio > 0.1
    found = find(fn, torch.tensor([100.0, 100.0], **F64), "newton_mr", max_iter=12, compute_index=False)
    assert not found.accepted  # before: accepted at (0.927, 0.771)


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_start_is_rejected_by_every_finder_without_raising(method):
    point = find(lambda t: (t ** 2).sum(), torch.tensor([float("nan"), 1.0], **F64), method)
    assert point.stop == "nonfinite" and point.iterations == 0 and point.status == "rejected"
    assert not point.accepted and point.index is None and math.isnan(point.grad_norm2)


@pytest.fixture(scope="module")
def interpolating_net():
    return problems.trained_digits_mlp(3, 1500, n=30)  # 64-3-10 tanh, cross-entropy, no weight decay, loss 0.026


@pytest.mark.parametrize("method", ["newton_mr", "saddle_free"])
def test_interpolating_cross_entropy_net_without_weight_decay_is_asymptotic(method, interpolating_net):
    # The finders run off to loss ~1e-12 (before: accepted). saddle-free's Newton step (293) is longer
    # than its way out (118): a rule bounding it by the way out missed this endpoint.
    loss_fn, theta = interpolating_net
    point = find(loss_fn, theta, method, max_iter=60, compute_index=False)
    assert point.loss < 1e-9 and point.theta.norm() > 3 * theta.norm() and point.acceptance_ratio <= 1
    assert point.status == "asymptotic" and not point.accepted
    assert point.newton_step > 10
