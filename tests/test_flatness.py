"""Flatness measures against brute force on two-parameter toys, the rescaling invariance of adaptive
sharpness (and the lack of it for lambda_max, the trace and Keskar's measure), and hard inputs."""

import math

import numpy as np
import pytest
import torch

from surfacekit import curvature
from surfacekit.flatness import adaptive_sharpness, keskar_sharpness, pac_bayes_sigma
from surfacekit.models import MLPSpec, forward
from surfacekit.objective import objective_fn
from surfacekit.population import evaluate, flatten, init_population, member_seed, unflatten


def saddle_toy(w):
    return (w[0] * w[1] - 1.0) ** 2 + 0.1 * w[0] ** 2


def bump_toy(w):
    return torch.exp(-((w[0] - 0.2) ** 2) - (w[1] + 0.1) ** 2)


def brute_force_box_maximum(f, x, epsilon, n=401):
    r = epsilon * (np.abs(x) + 1.0)
    g0, g1 = np.meshgrid(np.linspace(x[0] - r[0], x[0] + r[0], n), np.linspace(x[1] - r[1], x[1] + r[1], n))
    values = f(torch.from_numpy(np.stack([g0, g1])))
    return float(values.max())


@pytest.mark.parametrize("f,x,epsilon", [(saddle_toy, [0.9, 1.2], 0.05),   # maximum on a corner
                                         (bump_toy, [0.0, 0.0], 0.3)])      # maximum inside the box
def test_keskar_against_a_grid_search(f, x, epsilon):
    theta = torch.tensor(x, dtype=torch.float64)
    result = keskar_sharpness(f, theta, epsilon=epsilon, iterations=30)
    best = brute_force_box_maximum(f, np.array(x), epsilon)
    value = float(f(theta))
    assert result.value == value and result.maximum >= best - 1e-12  # never below a 401 x 401 grid ...
    assert result.maximum - best < 2e-6  # ... and above it by at most the grid's resolution
    assert result.sharpness == pytest.approx(100 * (result.maximum - value) / (1 + value), rel=1e-12)
    assert 1 <= result.iterations <= 30 and result.evaluations >= result.iterations


def test_keskar_at_a_critical_point_is_not_zero():
    """At the bump's maximum's opposite (a minimum of -bump) the gradient vanishes: a start at y = 0 would
    stop at once; the random start inside the box finds the rim."""
    f = lambda w: 1 - bump_toy(w)  # noqa: E731
    theta = torch.tensor([0.2, -0.1], dtype=torch.float64)
    result = keskar_sharpness(f, theta, epsilon=0.1, iterations=20)
    best = brute_force_box_maximum(f, theta.numpy(), 0.1)
    assert abs(result.maximum - best) < 1e-12 and result.sharpness > 0
    assert result.at_boundary == 1.0  # the maximizer is a corner


def test_adaptive_sharpness_is_the_top_eigenvalue_of_t_h_t():
    theta = torch.tensor([0.7, -1.3], dtype=torch.float64)
    t = torch.diag(theta.abs() + 0.05)
    hessian = torch.func.hessian(saddle_toy)(theta)
    expected = torch.linalg.eigvalsh(t @ hessian @ t)[-1].item()
    result = adaptive_sharpness(saddle_toy, theta, eta=0.05)
    assert result.converged and result.lambda_max == pytest.approx(expected, rel=1e-10)


def test_adaptive_sharpness_against_a_brute_force_maximum_over_the_ellipse():
    """Kwon et al.'s definition, max over |T^-1 e| <= rho of f(w + e) - f(w), at the minimum of a quadratic
    is exactly lambda_max(T A T) rho^2 / 2: a scan of the ellipse's boundary (2-D) finds the same value."""
    minimum = torch.tensor([0.8, -2.5], dtype=torch.float64)
    a = torch.tensor([[3.0, 1.2], [1.2, 0.7]], dtype=torch.float64)
    quadratic = lambda w: 0.5 * (w - minimum) @ a @ (w - minimum)  # noqa: E731
    rho = 0.01
    angles = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    e = rho * minimum.abs()[:, None] * torch.stack([angles.cos(), angles.sin()])  # T u with |u| = rho
    brute = float((0.5 * (e * (a @ e)).sum(dim=0)).max())
    result = adaptive_sharpness(quadratic, minimum, tol=1e-12)
    assert result.converged and result.lambda_max * rho**2 / 2 == pytest.approx(brute, rel=1e-7)


def toy_classifier_errors(thetas):
    """A two-parameter classifier on 1-D data: predict x > -w1 / w0 as 'x * w0 + w1 > 0'."""
    x = torch.linspace(-2, 2, 101, dtype=torch.float64)
    labels = x > 0.3
    thetas = thetas.reshape(-1, 2)
    predictions = x[None] * thetas[:, :1] + thetas[:, 1:] > 0
    return (predictions != labels[None]).to(torch.float64).mean(dim=1)


def test_pac_bayes_sigma_against_a_scan():
    theta = torch.tensor([2.0, -0.6], dtype=torch.float64)
    result = pac_bayes_sigma(toy_classifier_errors, theta, drop=0.1, draws=400, epsilon=1e-3, iterations=30, seed=3)
    # brute force: the same draws (seed) on a fine grid of sigma; the first sigma whose drop exceeds 0.1
    z = torch.randn(2, 400, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    base = float(toy_classifier_errors(theta[None])[0])
    grid = np.linspace(1e-4, 2.0, 4001)
    drops = np.array([float(toy_classifier_errors(theta + s * theta.abs() * z[0] + 1e-3 * z[1]).mean()) - base for s in grid])
    crossing = grid[np.argmax(drops > 0.1)]
    assert result.error == base and result.drop_at_sigma <= 0.1
    assert result.sigma <= crossing <= result.sigma_above + (grid[1] - grid[0])
    assert result.sigma_above - result.sigma < 1e-6 and result.flatness == pytest.approx(1 / result.sigma**2)


def test_pac_bayes_edge_cases():
    theta = torch.tensor([2.0, -0.6], dtype=torch.float64)
    noisy = pac_bayes_sigma(toy_classifier_errors, theta, drop=0.01, epsilon=10.0, draws=50)
    assert noisy.sigma == 0 and noisy.flatness == math.inf  # epsilon noise alone already costs > 0.01
    flat = pac_bayes_sigma(lambda t: torch.zeros(len(t), dtype=torch.float64), theta, sigma_max=8.0)
    assert flat.sigma == 8.0 and flat.sigma_above == math.inf
    with pytest.raises(ValueError, match="classification error"):
        pac_bayes_sigma(lambda t: torch.full((len(t),), float("nan")), theta)


def relu_network():
    """A 64-6-10 ReLU net trained on 120 digits (full-batch Adam), and its data loss."""
    from surfacekit.config import group_defaults
    from surfacekit.data import load_data
    from surfacekit.train.backprop import train

    data = load_data({"name": "digits", "train_size": 120, "test_size": 50}).to("cpu", torch.float64)
    spec = MLPSpec(64, (6,), 10, "relu")
    seeds = [member_seed(0, 0)]
    trainer = {**group_defaults("trainer", "backprop"), "epochs": 150, "batch_size": None, "eval_every": 150}
    params = train(spec, data, init_population(spec, seeds), seeds, {"name": "adam", "lr": 0.01}, trainer,
                   "cross_entropy", progress=False).params
    loss_fn = objective_fn(spec, data.x_train, data.y_train, "cross_entropy", objective="data")
    return spec, data, params, loss_fn


def rescaled(params, c):
    out = dict(params)
    out["layers.0.weight"], out["layers.0.bias"] = c * params["layers.0.weight"], c * params["layers.0.bias"]
    out["layers.1.weight"] = params["layers.1.weight"] / c
    return out


def test_rescaling_leaves_adaptive_sharpness_unchanged_but_not_the_others(float64):
    spec, data, params, loss_fn = relu_network()
    c = 10.0
    other = rescaled(params, c)
    np.testing.assert_allclose(forward(spec, other, data.x_train).numpy(), forward(spec, params, data.x_train).numpy(),
                               rtol=1e-12, atol=1e-12)
    a, b = flatten(params)[0], flatten(other)[0]
    assert float(loss_fn(a)) == pytest.approx(float(loss_fn(b)), rel=1e-12)
    adaptive = [adaptive_sharpness(loss_fn, t, tol=1e-12, max_steps=2000) for t in (a, b)]
    assert adaptive[0].converged and adaptive[1].converged
    assert adaptive[1].lambda_max == pytest.approx(adaptive[0].lambda_max, rel=1e-8)
    top = [curvature.extreme_eigenvalues(loss_fn, t, k=1, which="largest", tol=1e-10).eigenvalues[0].item() for t in (a, b)]
    trace = [np.trace(curvature.dense_hessian(loss_fn, t).numpy()) for t in (a, b)]
    keskar = [keskar_sharpness(loss_fn, t, epsilon=1e-3).sharpness for t in (a, b)]
    assert top[1] / top[0] > 5 and trace[1] / trace[0] > 5 and abs(keskar[1] / keskar[0] - 1) > 0.2


def test_pac_bayes_sigma_on_a_network_uses_the_population_evaluator(float64):
    spec, data, params, _ = relu_network()

    def errors(thetas):
        return evaluate(spec, unflatten(thetas, spec), data.x_train, data.y_train, "cross_entropy")[1]

    theta = flatten(params)[0]
    result = pac_bayes_sigma(errors, theta, drop=0.1, draws=8, iterations=10)
    assert 0 < result.sigma < result.sigma_above < math.inf
    assert result.error == pytest.approx(float(errors(theta[None])[0]))
    # the magnitude-aware sigma of the rescaled network (epsilon off): the same perturbations in relative terms
    other = flatten(rescaled(params, 3.0))[0]
    same = [pac_bayes_sigma(errors, t, draws=8, iterations=10, epsilon=0.0).sigma for t in (theta, other)]
    assert same[1] == pytest.approx(same[0], rel=1e-12)


def test_bad_inputs_are_refused():
    theta32 = torch.tensor([1.0, 2.0], dtype=torch.float32)
    with pytest.raises(ValueError, match="float64"):
        keskar_sharpness(saddle_toy, theta32)
    with pytest.raises(ValueError, match="float64"):
        adaptive_sharpness(saddle_toy, theta32)
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="epsilon"):
        keskar_sharpness(saddle_toy, theta, epsilon=0.0)
    with pytest.raises(ValueError, match="finite loss"):
        keskar_sharpness(lambda w: w.sum() * float("inf"), theta)
    with pytest.raises(ValueError, match="eta"):
        adaptive_sharpness(saddle_toy, theta, eta=-1.0)
    zero = adaptive_sharpness(saddle_toy, torch.zeros(2, dtype=torch.float64))  # T = 0: no direction moves the loss
    assert zero.lambda_max == 0.0
