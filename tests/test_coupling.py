"""trainer.coupling: EASGD, EAMSGD and periodic averaging against independent runs, closed-form linear
maps on a quadratic, the stability boundary beta = 2p / (p + 1), and the centre in the results file."""

import numpy as np
import pytest
import torch

from surfacekit import store
from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec
from surfacekit.population import init_population, member_seed
from surfacekit.train import coupling as couplings
from surfacekit.train.backprop import train
from surfacekit.train.common import Recorder
from support import TINY

TRAINER = group_defaults("trainer", "backprop")
SPEC = MLPSpec(64, (6,), 10, "tanh")
SGD = {"name": "sgd", "lr": 0.05, "schedule": "constant"}


def run(data, seeds, params=None, opt=SGD, epochs=3, batch_size=40, spec=SPEC, **trainer):
    params = init_population(spec, seeds) if params is None else params
    cfg = {**TRAINER, "epochs": epochs, "batch_size": batch_size, "eval_every": 1, **trainer}
    return train(spec, data, params, seeds, opt, cfg, "cross_entropy", progress=False)


def shared_start(seeds, spec=SPEC):
    first = init_population(spec, seeds[:1])
    return {n: v.expand(len(seeds), *v.shape[1:]).clone() for n, v in first.items()}


@pytest.mark.parametrize("communication", ["synchronous", "round_robin"])
def test_beta_zero_is_bit_identical_to_independent_runs(digits64, communication):
    seeds = [member_seed(0, k) for k in range(3)]
    coupled = run(digits64, seeds, coupling="easgd", beta=0.0, tau=1, communication=communication)
    independent = run(digits64, seeds, shared_start(seeds))
    for name, value in coupled.params.items():
        assert torch.equal(value, independent.params[name])
    np.testing.assert_array_equal(coupled.curves["train_loss"], independent.curves["train_loss"])
    for k, seed in enumerate(seeds):  # ... which equal K separate runs
        alone = run(digits64, [seed], {n: v[k : k + 1] for n, v in shared_start(seeds).items()})
        for name, value in coupled.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[name][0].numpy(), rtol=0, atol=1e-10)
    # the centre never moved, and the workers really trained apart
    start = coupled.groups["centre/init_params"].arrays
    for name, value in coupled.groups["centre/params"].arrays.items():
        np.testing.assert_array_equal(value, start[name])
    assert coupled.extra_curves["centre_distance"][:, -1].min() > 0


def test_eamsgd_with_beta_zero_is_nesterov(digits64):
    seeds = [member_seed(1, k) for k in range(2)]
    ours = run(digits64, seeds, coupling="eamsgd", beta=0.0, delta=0.9)
    torch_nesterov = run(digits64, seeds, shared_start(seeds), opt={**SGD, "name": "nesterov", "momentum": 0.9})
    for name, value in ours.params.items():
        np.testing.assert_allclose(value.numpy(), torch_nesterov.params[name].numpy(), rtol=0, atol=1e-10)


def quadratic_run(kind, beta, steps, h=2.0, eta=0.1, delta=0.0, k=1, tau=1, communication="synchronous", x0=1.5):
    """k workers on f(x) = h x^2 / 2 (one parameter each), driven by the coupling module and torch's SGD."""
    params = {"w": torch.full((k, 1), x0, dtype=torch.float64, requires_grad=True)}
    cfg = {"coupling": kind, "tau": tau, "beta": beta, "delta": delta, "communication": communication}
    state = couplings.start(cfg, params, Recorder(None, None, "mse", None, False))
    optimizer = torch.optim.SGD(params.values(), lr=eta)
    active = torch.ones(k, dtype=torch.bool)
    path = []
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * h * params["w"].pow(2).sum()).backward()
        before = {"w": params["w"].detach().clone()}
        optimizer.step()
        couplings.step(state, params, before, active)
        path.append((params["w"].detach().clone().reshape(-1).numpy(), float(state.centre["w"])))
    return path


def test_one_worker_follows_the_two_variable_linear_map():
    h, eta, beta = 2.0, 0.1, 0.7
    path = quadratic_run("easgd", beta, 30, h=h, eta=eta)
    # x' = x - eta h x - alpha (x - c), c' = c + alpha (x - c), alpha = beta / 1, both from the old values
    m = np.array([[1 - eta * h - beta, beta], [beta, 1 - beta]])
    z = np.array([1.5, 1.5])
    for x, c in path:
        z = m @ z
        np.testing.assert_allclose([x[0], c], z, rtol=1e-14, atol=1e-300)
    assert abs(path[-1][1]) < 0.1 * abs(path[0][1])  # the centre followed the worker towards the minimum


def test_one_eamsgd_worker_follows_its_three_variable_linear_map():
    h, eta, beta, delta = 2.0, 0.05, 0.5, 0.9
    path = quadratic_run("eamsgd", beta, 40, h=h, eta=eta, delta=delta)
    # paper variables x, v, c; stored worker y = x + delta v; gradient at y, elastic term at x
    x, v, c = 1.5, 0.0, 1.5
    for y_stored, c_stored in path:
        y = x + delta * v
        v_new = delta * v - eta * h * y
        x, c = x + v_new - beta * (x - c), c + beta * (x - c)
        v = v_new
        np.testing.assert_allclose([y_stored[0], c_stored], [x + delta * v, c], rtol=1e-12, atol=1e-15)


def test_a_frozen_eamsgd_worker_keeps_its_point_and_velocity():
    """After a worker is frozen (the trainer restores its parameters), its variable x = y - delta v and
    hence its distance to the centre stay fixed while the other worker and the centre move on."""
    params = {"w": torch.tensor([[1.5], [-0.5]], dtype=torch.float64, requires_grad=True)}
    cfg = {"coupling": "eamsgd", "tau": 1, "beta": 0.5, "delta": 0.9, "communication": "synchronous"}
    state = couplings.start(cfg, params, Recorder(None, None, "mse", None, False))
    with torch.no_grad():
        params["w"][1] = -0.5  # a different start, so that the frozen worker is away from the centre
    optimizer = torch.optim.SGD(params.values(), lr=0.05)
    active = torch.ones(2, dtype=torch.bool)
    frozen = None
    for t in range(12):
        if t == 4:
            active = torch.tensor([True, False])
            frozen = params["w"].detach()[1].clone()
        optimizer.zero_grad()
        (params["w"].pow(2).sum(dim=1) * active).sum().backward()
        before = {"w": params["w"].detach().clone()}
        optimizer.step()
        couplings.step(state, params, before, active)
        if frozen is not None:
            with torch.no_grad():
                params["w"][1] = frozen  # the trainer's Freezer.restore
            if t == 4:
                point = couplings.worker_points(state, params)["w"][1].detach().clone()
            np.testing.assert_array_equal(couplings.worker_points(state, params)["w"][1].detach(), point)
    assert abs(float(state.centre["w"]) - float(point)) > 0.1  # the centre moved away from the frozen worker


def test_round_robin_exchanges_one_worker_at_a_time():
    h, eta, beta = 1.0, 0.1, 0.8
    path = quadratic_run("easgd", beta, 6, h=h, eta=eta, k=2, tau=2, communication="round_robin", x0=1.0)
    alpha = beta / 2
    x, c = np.array([1.0, 1.0]), 1.0
    for t, (stored, c_stored) in enumerate(path):
        local = x - eta * h * x
        i = t % 2  # worker t mod tau talks, against the centre as it is now, from its pre-elastic point
        difference = alpha * (x[i] - c)
        local[i] -= difference
        x, c = local, c + difference
        np.testing.assert_allclose(np.append(stored, c_stored), np.append(x, c), rtol=1e-14)
    assert path[1][0][0] != path[1][0][1]  # the workers really were treated differently


def test_averaging_replaces_workers_by_their_mean(digits64):
    seeds = [member_seed(2, k) for k in range(3)]
    result = run(digits64, seeds, coupling="averaging", tau=5, epochs=1)  # 5 steps per epoch
    centre = result.groups["centre/params"].arrays
    for name, value in result.params.items():  # the last step (index 4) was not an exchange ...
        assert not np.allclose(value[0].numpy(), value[1].numpy())
    single = run(digits64, seeds, coupling="averaging", tau=1, epochs=1)
    for name, value in single.params.items():  # ... with tau = 1 every step is
        np.testing.assert_array_equal(value[0].numpy(), value[2].numpy())
        np.testing.assert_allclose(single.groups["centre/params"].arrays[name][0], value[0].numpy(), rtol=1e-14)
    assert set(centre) == set(result.params)


@pytest.mark.parametrize("p", [2, 4])
def test_stability_boundary_is_two_p_over_p_plus_one(digits64, p):
    """Synchronous EASGD, tau = 1: stable at beta = b* - 0.05, divergent at b* + 0.05, b* = 2p / (p + 1)."""
    seeds = [member_seed(3, k) for k in range(p)]
    spec = MLPSpec(64, (8,), 10, "tanh")
    bound = 2 * p / (p + 1)
    outcome = {}
    for beta in (bound - 0.05, bound + 0.05):
        r = run(digits64, seeds, spec=spec, epochs=300, batch_size=None, coupling="easgd", beta=beta, eval_every=50)
        loss = r.groups["centre/curves"].arrays["train_loss"][0]
        outcome[beta] = (r.extra_curves["centre_distance"][:, -1].max(), loss[-1], loss[0], r.diverged.any())
    distance, loss, first, diverged = outcome[bound - 0.05]
    assert distance < 0.05 and loss < 0.3 * first and not diverged
    distance, loss, first, diverged = outcome[bound + 0.05]
    assert diverged or distance > 100


def test_diverged_workers_are_left_out_of_the_centre(digits64):
    seeds = [member_seed(4, k) for k in range(3)]
    relu = MLPSpec(64, (6, 6), 10, "relu")
    scale = torch.tensor([1.0, 1e4, 1.0], dtype=torch.float64)
    params = shared_start(seeds, relu)
    cfg = {**TRAINER, "epochs": 3, "batch_size": 40, "coupling": "easgd", "beta": 0.9}
    result = train(relu, digits64, params, seeds, SGD, cfg, "cross_entropy", progress=False, lr_scale=scale)
    assert result.diverged.tolist() == [False, True, False]
    assert all(np.isfinite(v).all() for v in result.groups["centre/params"].arrays.values())
    active = result.groups["centre"].arrays["active_workers"]
    assert active[0] == 3 and active[-1] == 2
    np.testing.assert_allclose(result.groups["centre"].arrays["alpha"][-1], 0.9 / 2)
    assert np.isfinite(result.groups["centre/curves"].arrays["train_loss"]).all()


def test_coupled_job_file_has_the_centre_as_its_own_row(run_cli, tmp_path):
    out = run_cli(*TINY, "population.size=3", "trainer.coupling=easgd", "trainer.tau=2", "trainer.batch_size=25",
                  f"hydra.run.dir={tmp_path / 'job'}")
    assert out.returncode == 0, out.stderr
    assert "centre (member 3, trainer.coupling=easgd): final train loss" in out.stdout
    path = tmp_path / "job" / "results.h5"
    members = store.load_members(path)
    assert members["is_centre"].tolist() == [False, False, False, True]
    centre = members[members["is_centre"]].iloc[0]
    assert centre["member"] == 3 and centre["seed"] == -1 and centre["width"] == 3
    curves = store.load_group(path, "centre/curves")
    assert centre["final_test_loss"] == curves["test_loss"][0, -1]
    attrs = store.load_group(path, "centre")
    assert len(attrs["gradient_evaluations"]) == curves["train_loss"].shape[1]
    import h5py

    with h5py.File(path) as f:
        a = dict(f["centre"].attrs)
    assert (a["coupling"], a["beta"], a["tau"], a["communication"]) == ("easgd", 0.9, 2, "synchronous")
    assert a["alpha"] == pytest.approx(0.3)
    job = store.load_job(path)
    assert len(job.members) == 4 and next(iter(job.params.values())).shape[0] == 4
    params = store.load_group(path, "centre/params")
    for name, value in params.items():
        np.testing.assert_array_equal(job.params[name][3].numpy(), value[0])
    loss_fn, theta, _ = store.job_objective(job, 3)
    assert float(loss_fn(theta)) == pytest.approx(curves["train_loss"][0, -1], rel=1e-5)  # float32 training
    tidy = store.load_curves(path, tidy=True)
    assert sorted(tidy["member"].unique()) == [0, 1, 2] and "centre_distance" in tidy
    centre_tidy = store.load_tidy(path, "centre/curves")
    assert centre_tidy["member"].unique().tolist() == [3]


def test_coupling_config_errors(run_cli):
    bad = run_cli(*TINY, "trainer.coupling=eamsgd", "optimizer=momentum")
    assert bad.returncode == 2 and "optimizer=momentum is invalid: expected sgd with trainer.coupling=eamsgd" in bad.stderr
    bad = run_cli(*TINY, "trainer.coupling=easgd", "model.batch_norm=true")
    assert bad.returncode == 2 and "model.batch_norm=true is invalid" in bad.stderr
    bad = run_cli(*TINY, "trainer.coupling=averaging", "trainer.communication=round_robin")
    assert bad.returncode == 2 and "trainer.communication=round_robin is invalid" in bad.stderr
    bad = run_cli(*TINY, "trainer.coupling=elastic")
    assert bad.returncode == 2 and "trainer.coupling=elastic is invalid" in bad.stderr
    bad = run_cli(*TINY, "trainer.tau=0")
    assert bad.returncode == 2 and "trainer.tau=0 is invalid: expected an integer >= 1" in bad.stderr


def test_unstable_beta_is_warned(tmp_path):
    from support import compose_config

    from surfacekit.config import validate

    cfg = compose_config(["population.size=4", "trainer.coupling=easgd", "trainer.beta=1.7"])
    warnings = validate(cfg)
    assert any("unstable for beta >= 2p/(p+1) = 1.6" in w for w in warnings)
    assert not validate(compose_config(["population.size=4", "trainer.coupling=easgd", "trainer.beta=1.5"]))
