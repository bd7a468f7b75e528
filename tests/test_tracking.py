"""trainer.track_sharpness: lambda_max during training against dense Hessians of the trained objective,
warm starts, budgets and hard spectra."""

import numpy as np
import pytest
import torch

from surfacekit import problems
from surfacekit.config import group_defaults
from surfacekit.curvature import dense_hessian
from surfacekit.models import MLPSpec
from surfacekit.objective import objective_fn
from surfacekit.population import init_population, member_seed
from surfacekit.train.backprop import train
from surfacekit.train.tracking import top_eigenvalue

TRAINER = {**group_defaults("trainer", "backprop"), "method": "backprop"}
SPEC = MLPSpec(64, (5,), 10, "tanh")


def quadratic(eigenvalues, seed=0, perturbation=0.0):
    """0.5 theta^T A theta with A = Q diag(eigenvalues) Q^T (a random rotation) + a symmetric perturbation."""
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    e = torch.randn(n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    a = a + perturbation * (e + e.T) / n**0.5
    return (lambda theta: 0.5 * theta @ a @ theta), q


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_batch_tracking_matches_dense_hessians_of_the_trained_objective(digits64):
    seeds = [member_seed(0, k) for k in range(2)]
    opt = {"name": "sgd", "lr": 0.1, "schedule": "constant", "weight_decay": 0.01}
    cfg = {**TRAINER, "epochs": 12, "batch_size": None, "eval_every": 4, "snapshots": True, "track_sharpness": 4,
           "sharpness_tol": 1e-6}
    result = train(SPEC, digits64, init_population(SPEC, seeds), seeds, opt, cfg, "mse", progress=False)
    tracked = result.groups["tracked_sharpness"]
    assert tracked.arrays["step"].tolist() == result.curve_steps.tolist() == [0, 4, 8, 12]
    loss_fn = objective_fn(SPEC, digits64.x_train, digits64.y_train, "mse", optimizer_cfg=opt, trainer_cfg=cfg)
    for t in range(4):
        for k in range(2):
            theta = torch.from_numpy(result.trajectory[t, k])
            top = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta))[-1].item()
            assert tracked.arrays["lambda_max"][k, t] == pytest.approx(top, rel=1e-6)
    assert tracked.arrays["converged"].all() and (tracked.arrays["hvps"] > 0).all()
    assert tracked.attrs["objective"] == "trained" and tracked.attrs["weight_decay"] == 0.01
    assert tracked.attrs["dtype"] == "float64" and tracked.attrs["not_converged"] == 0


def test_population_tracking_equals_separate_runs(digits64):
    seeds = [member_seed(1, k) for k in range(2)]
    opt = {"name": "sgd", "lr": 0.05, "schedule": "constant"}
    cfg = {**TRAINER, "epochs": 2, "batch_size": 50, "track_sharpness": 3}
    together = train(SPEC, digits64, init_population(SPEC, seeds), seeds, opt, cfg, "cross_entropy", progress=False)
    steps = together.groups["tracked_sharpness"].arrays["step"].tolist()
    assert steps == [0, 3, 6, 8]  # every 3 steps and the last (4 steps per epoch)
    for k, seed in enumerate(seeds):
        alone = train(SPEC, digits64, init_population(SPEC, [seed]), [seed], opt, cfg, "cross_entropy", progress=False)
        for name in ("lambda_max", "hvps"):
            np.testing.assert_allclose(together.groups["tracked_sharpness"].arrays[name][k],
                                       alone.groups["tracked_sharpness"].arrays[name][0], rtol=1e-9)


def test_warm_start_needs_fewer_products_than_a_cold_one():
    """The Hessian one check later: the old top eigenvector starts the new run (default tol 1e-4)."""
    spectrum = np.linspace(0.1, 1.0, 300).tolist() + [1.3]
    theta = torch.zeros(301, dtype=torch.float64)
    before, _ = quadratic(spectrum)
    previous = top_eigenvalue(before, theta, None, generator(), 1e-4, 500)
    after, _ = quadratic(spectrum, perturbation=0.01)
    cold = top_eigenvalue(after, theta, None, generator(1), 1e-4, 500)
    warm = top_eigenvalue(after, theta, previous[4], generator(1), 1e-4, 500)
    exact = torch.linalg.eigvalsh(torch.func.hessian(after)(theta))[-1].item()
    assert cold[3] and warm[3]
    assert cold[0] == pytest.approx(exact, rel=1e-4) and warm[0] == pytest.approx(exact, rel=1e-4)
    assert warm[2] == 8 and cold[2] == 24


@pytest.mark.parametrize("eigenvalues,expected", [
    ([3.0, 3.0, 3.0, 1.0, -2.0, 0.5] * 5, 3.0),          # the top value repeated
    ([0.0] * 40 + [-1.0, 2.0], 2.0),                       # a zero block
    ([-5.0, -4.0, -3.0], -3.0),                            # negative definite, P below the first run's 8 steps
])
def test_hard_spectra(eigenvalues, expected):
    loss_fn, _ = quadratic(eigenvalues)
    value, residual, hvps, converged, vector = top_eigenvalue(loss_fn, torch.zeros(len(eigenvalues), dtype=torch.float64),
                                                              None, generator(), 1e-10, 400)
    assert converged and value == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("problem", problems.multiplicity_cases() + problems.cluster_cases(), ids=lambda p: p.name)
def test_shared_hard_spectra_against_their_dense_hessians(problem):
    """The project's hard spectra (top, bottom and tail multiplicities up to 30, clusters split by 1e-10,
    a zero block of P/2): the largest eigenvalue against eigvalsh of the Hessian assembled from products."""
    value, residual, hvps, converged, _ = top_eigenvalue(problem.loss_fn, problem.theta, None, generator(), 1e-10, 600)
    exact = problem.eigenvalues[-1].item()
    assert converged and residual <= 1e-10 * abs(value)
    assert value == pytest.approx(exact, rel=1e-9)


def test_overtaking_eigenvalue_is_found_from_a_stale_warm_start():
    """The warm start is the old top eigenvector; another direction is now larger."""
    loss_fn, q = quadratic([1.0, 2.0, 0.5, 0.1] * 10)
    stale = q[:, 0]  # eigenvalue 1.0, no longer the top (2.0)
    value, *_ = top_eigenvalue(loss_fn, torch.zeros(40, dtype=torch.float64), stale, generator(), 1e-8, 300)
    assert value == pytest.approx(2.0, rel=1e-8)


def test_budget_and_non_finite_products_are_flagged():
    loss_fn, _ = quadratic(np.linspace(0.0, 1.0, 300).tolist())
    value, residual, hvps, converged, _ = top_eigenvalue(loss_fn, torch.zeros(300, dtype=torch.float64), None,
                                                         generator(), 1e-12, 10)
    assert not converged and hvps == 10 and residual > 1e-12 * abs(value)
    nan_loss = lambda theta: (theta * float("nan")).pow(2).sum()  # noqa: E731
    value, _, _, converged, _ = top_eigenvalue(nan_loss, torch.zeros(5, dtype=torch.float64), None, generator(), 1e-8, 50)
    assert not converged and np.isnan(value)


def test_diverged_member_is_nan_and_the_rest_tracked(digits64):
    seeds = [member_seed(2, k) for k in range(2)]
    relu = MLPSpec(64, (6, 6), 10, "relu")
    cfg = {**TRAINER, "epochs": 2, "batch_size": 50, "track_sharpness": 2}
    scale = torch.tensor([1.0, 1e4], dtype=torch.float64)
    result = train(relu, digits64, init_population(relu, seeds), seeds, {"name": "sgd", "lr": 0.05}, cfg,
                   "cross_entropy", progress=False, lr_scale=scale)
    tracked = result.groups["tracked_sharpness"].arrays
    assert result.diverged.tolist() == [False, True]
    assert np.isfinite(tracked["lambda_max"][0]).all() and np.isnan(tracked["lambda_max"][1, -1])
    assert tracked["hvps"][1, -1] == 0


def test_shared_init_starts_every_member_from_the_first(run_cli, tmp_path):
    from support import TINY

    from surfacekit import store

    out = run_cli(*TINY, "population.size=3", "population.shared_init=true", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    init = store.load_group(tmp_path / "run", "init_params")
    final = store.load_group(tmp_path / "run", "params")
    for name, value in init.items():
        assert (value == value[:1]).all()
        assert not np.allclose(final[name][0], final[name][1])  # their own minibatch orders


def test_checks_that_miss_the_tolerance_are_warned_and_stored(run_cli, tmp_path):
    import json

    import h5py
    from support import TINY

    out = run_cli(*TINY, "trainer.track_sharpness=2", "trainer.sharpness_max_hvps=2", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    message = "lambda_max checks did not reach trainer.sharpness_tol=0.0001 within trainer.sharpness_max_hvps=2"
    assert message in out.stderr
    with h5py.File(tmp_path / "run" / "results.h5") as f:
        assert any(message in w for w in json.loads(f.attrs["warnings"]))
        assert not f["tracked_sharpness/converged"][()].all()
