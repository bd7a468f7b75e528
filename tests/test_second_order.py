"""Batched conjugate gradient, Hessian-free and scaled conjugate gradient: exact solves, Martens' rules,
Moller's algorithm against linear CG, Rosenbrock, populations against separate runs."""

import math

import numpy as np
import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec
from surfacekit.population import flatten, init_population, member_seed
from surfacekit.train import hessian_free, scg
from surfacekit.train.conjugate_gradient import conjugate_gradient, save_steps
from surfacekit.train.full_batch import (
    Problem, curvature_operator, network_problem, objective_values, values_and_gradients,
)

F64 = torch.float64


def spd(eigenvalues, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=F64))
    return (q * torch.as_tensor(eigenvalues, dtype=F64)) @ q.T


def batched(matrices):
    stack = torch.stack(matrices)
    return lambda v: torch.einsum("kij,kj->ki", stack, v)


# ----------------------------------------------------------------------------- conjugate gradient

def test_cg_solves_spd_systems_to_1e_10_in_at_most_p_steps():
    """Finite termination holds in floating point for moderate conditioning; with 40 eigenvalues spread
    over [1, 1e2] or [1, 1e3] rounding delays it to 55 and 79 steps (scipy's cg: the same residuals)."""
    p = 40
    spectra = [np.logspace(0, 1, p),                      # spread, condition 10
               np.repeat([1.0, 10.0, 100.0], [20, 15, 5]),   # three distinct eigenvalues, repeated
               np.concatenate([1 + 1e-9 * np.arange(30), 50 + np.arange(10)])]  # a tight cluster
    matrices = [spd(s, seed) for seed, s in enumerate(spectra)]
    b = torch.randn(3, p, generator=torch.Generator().manual_seed(9), dtype=F64)
    result = conjugate_gradient(batched(matrices), b, max_iter=p, tol=1e-12)
    for k, a in enumerate(matrices):
        residual = torch.linalg.norm(a @ result.solution[k] - b[k]) / torch.linalg.norm(b[k])
        assert residual < 1e-10, (k, float(residual))
        assert result.stop[k] == "residual"
    assert int(result.iterations.max()) <= p
    assert int(result.iterations[1]) <= 4  # as many steps as distinct eigenvalues (+1 for rounding)
    # members are independent: each equals its system solved alone
    for k, a in enumerate(matrices):
        alone = conjugate_gradient(batched([a]), b[k:k + 1], max_iter=p, tol=1e-12)
        torch.testing.assert_close(alone.solution[0], result.solution[k], rtol=0, atol=1e-12)
        assert int(alone.iterations[0]) == int(result.iterations[k])
    # phi is the quadratic 1/2 x^T A x - b^T x at the solution
    a = matrices[0]
    x = result.solution[0]
    assert float(result.phi[0]) == pytest.approx(float(0.5 * x @ a @ x - b[0] @ x), rel=1e-12)


def test_cg_martens_progress_rule_warm_start_and_failures():
    p = 120
    a = spd(np.logspace(0, 6, p), 3)
    # b = A xi: phi's minimum, -xi^T A xi / 2, is dominated by the large eigenvalues CG finds first
    b = torch.randn(1, p, generator=torch.Generator().manual_seed(1), dtype=F64) @ a
    run = conjugate_gradient(batched([a]), b, max_iter=p, progress_tol=5e-4, save_growth=1.3)
    assert run.stop == ["progress"] and 10 < int(run.iterations[0]) < p
    i = int(run.iterations[0])
    lag = max(10, math.ceil(0.1 * i))
    assert float(run.phi[0]) < 0
    assert run.saved_steps == sorted(s for s in save_steps(1.3, p) if s <= i)
    assert bool(run.saved_valid[:-1].all())  # saved before the last iterate
    # the rule held at the stop and not one step before (rerun to i - 1 and i - 1 - lag to get phi values)
    phi = [float(conjugate_gradient(batched([a]), b, max_iter=m).phi[0]) for m in (i - lag, i - 1 - lag, i - 1)]
    assert (float(run.phi[0]) - phi[0]) / float(run.phi[0]) < lag * 5e-4
    lag_before = max(10, math.ceil(0.1 * (i - 1)))
    before = float(conjugate_gradient(batched([a]), b, max_iter=i - 1 - lag_before).phi[0])
    assert (phi[2] - before) / phi[2] >= lag_before * 5e-4
    # a warm start worse than zero (phi > 0) is replaced by zero: the same run as from zero
    x0 = -10 * run.solution
    warm = conjugate_gradient(batched([a]), b, x0, max_iter=p, progress_tol=5e-4)
    torch.testing.assert_close(warm.solution, run.solution, rtol=0, atol=0)
    assert int(warm.products[0]) == int(run.products[0]) + 1  # the start's residual
    # indefinite and non-finite members stop with a reason, the others are unaffected
    indefinite = spd(np.linspace(-1.0, 5.0, p), 4)
    poisoned = lambda v: torch.stack([a @ v[0], torch.full((p,), math.nan, dtype=F64), indefinite @ v[2]])  # noqa: E731
    mixed = conjugate_gradient(poisoned, b.expand(3, p).clone(), max_iter=p, progress_tol=5e-4)
    assert mixed.stop == ["progress", "non_finite", "negative_curvature"]
    torch.testing.assert_close(mixed.solution[0], run.solution[0], rtol=0, atol=1e-12)
    assert int(mixed.iterations[1]) == 0 and torch.isfinite(mixed.solution).all()
    assert save_steps(1.3, 20) == {1, 2, 3, 4, 5, 7, 9, 11, 14, 18}


# ----------------------------------------------------------------------------- test problems

def _residuals(theta):
    x, y = theta[:, 0], theta[:, 1]
    return torch.stack([1.0 - x, 10.0 * (y - x * x)], dim=1)


ROSENBROCK = Problem(_residuals, lambda r: r.pow(2).sum(dim=1))  # (1 - x)^2 + 100 (y - x^2)^2
STARTS = torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.0, 3.0]], dtype=F64)


def quadratic(a, b):
    return Problem(lambda t: t, lambda z: 0.5 * torch.einsum("ki,ij,kj->k", z, a, z) - z @ b)


# ----------------------------------------------------------------------------- Hessian-free

@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
def test_hessian_free_converges_on_rosenbrock(curvature):
    settings = hessian_free.Settings(curvature=curvature)
    state = hessian_free.State.start(STARTS, damping=1.0)
    losses = []
    for _ in range(100):
        step = hessian_free.hessian_free_iteration(ROSENBROCK, state, settings)
        losses.append(step.loss)
    torch.testing.assert_close(state.theta, torch.ones_like(STARTS), rtol=0, atol=1e-6)
    losses = torch.stack(losses)
    assert bool((losses[1:] <= losses[:-1]).all())  # the Armijo search never increases F
    assert float(losses[-1].max()) < 1e-12


def test_hessian_free_step_on_a_quadratic_is_the_newton_step():
    a = spd(np.logspace(0, 2, 12), 5)
    b = torch.randn(12, generator=torch.Generator().manual_seed(2), dtype=F64)
    state = hessian_free.State.start(torch.zeros(1, 12, dtype=F64), damping=1e-12)
    hessian_free.hessian_free_iteration(quadratic(a, b), state, hessian_free.Settings(cg_tol=1e-12))
    torch.testing.assert_close(state.theta[0], torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


TRAINER_SETTINGS = {"hessian_free": {"epochs": 4, "cg_max_iter": 30}, "scg": {"epochs": 12}}


@pytest.mark.parametrize("method", ["hessian_free", "scg"])
def test_population_equals_separate_runs_and_loss_never_rises(method, digits64):
    spec = MLPSpec(64, (4,), 10, "tanh")
    module = {"hessian_free": hessian_free, "scg": scg}[method]
    cfg = {**group_defaults("trainer", method), **TRAINER_SETTINGS[method], "eval_every": 1, "weight_decay": 1e-3,
           "snapshots": True}
    seeds = [member_seed(4, k) for k in range(3)]

    def run(members):
        return module.train(spec, digits64, init_population(spec, members), members, {"name": "sgd"}, cfg,
                            "cross_entropy", progress=False)

    together = run(seeds)
    for k, s in enumerate(seeds):
        alone = run([s])
        for name, value in together.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[name][0].numpy(), rtol=0, atol=1e-10)
    # the objective they minimize, data loss + (1e-3 / 2)|theta|^2, never rises along the stored trajectory
    problem = network_problem(spec, digits64.x_train, digits64.y_train, "cross_entropy", l2=1e-3)
    objective = np.stack([objective_values(problem, torch.as_tensor(t)).numpy() for t in together.trajectory], axis=1)
    assert objective.shape == (3, cfg["epochs"] + 1)
    assert (np.diff(objective, axis=1) <= 1e-12).all() and (objective[:, -1] < 0.6 * objective[:, 0]).all()
    counts = together.extra_curves["curvature_products" if method == "hessian_free" else "hvps"]
    assert (np.diff(counts, axis=1) >= 0).all() and (counts[:, -1] > 0).all()
    assert module.l2_coefficients(spec, {}, cfg) == {n: 1e-3 for n in together.params}


@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
def test_l2_term_enters_values_gradients_and_curvature(curvature, digits64):
    spec = MLPSpec(64, (3,), 10, "tanh")
    theta = flatten(init_population(spec, [1, 2]))
    plain = network_problem(spec, digits64.x_train, digits64.y_train, "cross_entropy")
    decayed = network_problem(spec, digits64.x_train, digits64.y_train, "cross_entropy", l2=0.1)
    f0, g0 = values_and_gradients(plain, theta)
    f1, g1 = values_and_gradients(decayed, theta)
    torch.testing.assert_close(f1 - f0, 0.05 * theta.pow(2).sum(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(g1 - g0, 0.1 * theta, rtol=1e-10, atol=1e-14)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    difference = curvature_operator(decayed, theta, curvature)(v) - curvature_operator(plain, theta, curvature)(v)
    torch.testing.assert_close(difference, 0.1 * v, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- scaled conjugate gradient

def test_scg_with_zero_scale_on_a_quadratic_follows_linear_cg():
    """Every iterate agrees to rounding (condition 10; at condition 100 the last iterates, near the
    solution, drift apart by up to 4e-8 relative: both methods' late directions are rounding-dominated)."""
    p = 12
    a = spd(np.logspace(0, 1, p), 6)
    b = torch.randn(p, generator=torch.Generator().manual_seed(3), dtype=F64)
    problem = quadratic(a, b)
    state = scg.State.start(problem, torch.zeros(1, p, dtype=F64), lambda_init=0.0)
    for i in range(1, p + 1):
        values = scg.scg_iteration(problem, state, restart_every=p)
        cg = conjugate_gradient(batched([a]), b[None], max_iter=i)
        assert float((state.theta - cg.solution).norm() / cg.solution.norm()) < 1e-13
        # Delta = 1 (a quadratic model is exact), up to cancellation in E(w) - E(w + alpha p) near the minimum
        assert float(values["comparison"][0]) == pytest.approx(1.0, abs=1e-6)
        assert float(state.scale[0]) == 0.0


def test_scg_converges_on_rosenbrock():
    state = scg.State.start(ROSENBROCK, STARTS, lambda_init=1e-6)
    losses = [state.loss]
    for _ in range(300):
        losses.append(scg.scg_iteration(ROSENBROCK, state, restart_every=2)["loss"].clone())
    torch.testing.assert_close(state.theta, torch.ones_like(STARTS), rtol=0, atol=1e-6)
    losses = torch.stack(losses)
    assert bool((losses[1:] <= losses[:-1]).all())  # only steps with Delta >= 0 (a decrease) are taken
    _, grad = values_and_gradients(ROSENBROCK, state.theta)
    assert float(grad.norm(dim=1).max()) < 1e-6


def test_hessian_free_beats_levenberg_marquardt_in_products_on_a_digits_autoencoder():
    """64-2-64 tanh autoencoder on 100 digits (P = 322, MSE). Levenberg-Marquardt (the critical-point
    finder: damped Newton on g = 0) for 3 steps against Hessian-free from the same start: HF reaches
    LM's loss with fewer curvature products (GGN products against HVPs; each about one gradient).
    Measured with 5 LM steps: LM loss 53.33 after 2,543 HVPs (it heads for a critical point, here a
    saddle: the loss rises after step 2); HF passed it at its first iteration (15 products) and
    reached 38.7 after 100 iterations (8,490 products)."""
    from surfacekit.critical import levenberg_marquardt
    from surfacekit.data import Dataset, load_data
    from surfacekit.objective import objective_fn

    d = load_data({"name": "digits", "train_size": 100}).to("cpu", F64)
    autoencoder = Dataset("digits_autoencoder", d.x_train, d.x_train, d.x_test, d.x_test, 64, False)
    spec = MLPSpec(64, (2,), 64, "tanh", init="xavier")
    seeds = [member_seed(0, 0)]
    theta0 = flatten(init_population(spec, seeds))[0]
    lm = levenberg_marquardt(objective_fn(spec, d.x_train, d.x_train, "mse", objective="data"), theta0, max_iter=3)
    cfg = {**group_defaults("trainer", "hessian_free"), "epochs": 3, "eval_every": 1}
    hf = hessian_free.train(spec, autoencoder, init_population(spec, seeds), seeds, {"name": "sgd"}, cfg, "mse",
                            progress=False)
    losses, products = hf.curves["train_loss"][0], hf.extra_curves["curvature_products"][0]
    assert losses[0] == pytest.approx(lm.losses[0], rel=1e-12)  # the same start and objective
    reached = np.flatnonzero(losses <= lm.losses[-1])
    assert reached.size, (losses, lm.losses)
    assert products[reached[0]] < lm.num_hvps / 10, (products, lm.num_hvps)


@pytest.mark.parametrize("overrides,message", [
    (["trainer=hessian_free", "trainer.batch_size=50"], "trainer.batch_size=50 is invalid: expected null with trainer=hessian_free"),
    (["trainer=scg", "population.size=2", "population.lr_scale=[1,2]"], "population.lr_scale=[1, 2] is invalid: expected null with trainer=scg"),
    (["trainer=scg", "model.batch_norm=true"], "model.batch_norm=true is invalid: expected false with trainer=scg"),
    (["trainer=hessian_free", "model.loss=hinge"], "model.loss=hinge is invalid: expected cross_entropy or mse with trainer.curvature=gauss_newton"),
    (["trainer=hessian_free", "trainer.warm_start=1.5"], "trainer.warm_start=1.5 is invalid"),
    (["trainer=scg", "trainer.restart_every=0"], "trainer.restart_every=0 is invalid"),
])
def test_refused_settings_are_one_line(overrides, message):
    from support import compose_config
    from surfacekit.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose_config(overrides), overrides)


def test_curvature_of_selected_members_in_float64_whatever_the_training_dtype(digits64):
    """Products are float64 (surfacekit.curvature's policy) and returned in theta's dtype; unselected
    members get 0 and may hold a non-finite point; a float32 population trains."""
    spec = MLPSpec(64, (3,), 10, "tanh")
    theta = flatten(init_population(spec, [1, 2, 3]))
    problem = network_problem(spec, digits64.x_train, digits64.y_train, "cross_entropy")
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    full = curvature_operator(problem, theta, "gauss_newton")(v)
    broken = theta.clone()
    broken[1] = float("nan")
    some = curvature_operator(problem, broken, "gauss_newton", members=torch.tensor([True, False, True]))(v)
    torch.testing.assert_close(some[[0, 2]], full[[0, 2]], rtol=1e-12, atol=1e-14)
    assert torch.equal(some[1], torch.zeros_like(some[1]))
    data32 = digits64.to("cpu", torch.float32)
    problem32 = network_problem(spec, data32.x_train, data32.y_train, "cross_entropy")
    product = curvature_operator(problem32, theta.float(), "hessian")(v.float())
    assert product.dtype == torch.float32
    reference = curvature_operator(problem, theta.float().double(), "hessian")(v.float().double())
    torch.testing.assert_close(product.double(), reference, rtol=1e-5, atol=1e-6)
    cfg = {**group_defaults("trainer", "scg"), "epochs": 5}
    result = scg.train(spec, data32, init_population(spec, [1, 2], torch.float32), [1, 2], {"name": "sgd"}, cfg,
                       "cross_entropy", progress=False)
    assert result.params["layers.0.weight"].dtype == torch.float32
    assert (result.curves["train_loss"][:, -1] < result.curves["train_loss"][:, 0]).all()
