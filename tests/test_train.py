import numpy as np
import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec
from surfacekit.population import init_population, member_seed
from surfacekit.train.backprop import train

TRAINER = group_defaults("trainer", "backprop")

SPEC = MLPSpec(64, (6,), 10, "tanh")
OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "schedule": "inverse", "decay_epochs": 2},
    "nesterov": {"name": "nesterov", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
    "adam": {"name": "adam", "lr": 0.01},
    "rprop": {"name": "rprop", "lr": 0.01},
    "rmsprop": {"name": "rmsprop", "lr": 0.005, "momentum": 0.5, "centered": True},
    "adagrad": {"name": "adagrad", "lr": 0.05},
    "adadelta": {"name": "adadelta", "lr": 1.0},
    "adamax": {"name": "adamax", "lr": 0.01},
    "momentum": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
}


def run(data, seeds, opt, batch_size=40, epochs=3, spec=SPEC, **kw):
    params = init_population(spec, seeds)
    trainer = {**TRAINER, "epochs": epochs, "batch_size": batch_size, **kw.pop("trainer", {})}
    return train(spec, data, params, seeds, opt, trainer, "cross_entropy", progress=False, **kw)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_population_equals_separate_runs(name, digits64):
    seeds = [member_seed(0, k) for k in range(3)]
    batch = None if name == "rprop" else 40
    together = run(digits64, seeds, OPTIMIZERS[name], batch_size=batch)
    for k, s in enumerate(seeds):
        alone = run(digits64, [s], OPTIMIZERS[name], batch_size=batch)
        for pname, value in together.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[pname][0].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(together.curves["train_loss"][k], alone.curves["train_loss"][0], rtol=1e-10)
    # members really differ and really trained
    assert together.curves["train_loss"][:, -1].std() > 0
    assert (together.curves["train_loss"][:, -1] < together.curves["train_loss"][:, 0]).all()


def test_same_seed_is_bit_identical(digits64):
    seeds = [member_seed(5, k) for k in range(2)]
    a = run(digits64, seeds, OPTIMIZERS["adam"])
    b = run(digits64, seeds, OPTIMIZERS["adam"])
    for name in a.params:
        assert torch.equal(a.params[name], b.params[name])


def test_huge_learning_rate_member_diverges_alone(digits64):
    seeds = [member_seed(1, k) for k in range(3)]
    scale = torch.tensor([1.0, 1e4, 1.0], dtype=torch.float64)
    relu = MLPSpec(64, (6, 6), 10, "relu")
    result = run(digits64, seeds, OPTIMIZERS["sgd"], lr_scale=scale, spec=relu)
    assert result.diverged.tolist() == [False, True, False]
    assert np.isfinite(result.curves["train_loss"][[0, 2], -1]).all()
    assert result.steps[1] < result.steps[0]
    reference = run(digits64, [seeds[0], seeds[2]], OPTIMIZERS["sgd"], spec=relu)
    for name, value in result.params.items():
        np.testing.assert_allclose(value[[0, 2]].numpy(), reference.params[name].numpy(), rtol=0, atol=1e-10)


def test_lr_scale_equals_scaled_learning_rate(digits64):
    seeds = [member_seed(2, 0)]
    for name in ("momentum", "adam"):
        scaled = run(digits64, seeds, OPTIMIZERS[name], lr_scale=torch.tensor([0.5], dtype=torch.float64))
        half = run(digits64, seeds, {**OPTIMIZERS[name], "lr": OPTIMIZERS[name]["lr"] * 0.5})
        for pname, value in scaled.params.items():
            np.testing.assert_allclose(value.numpy(), half.params[pname].numpy(), rtol=0, atol=1e-10)


def test_gradient_tolerance_freezes_members(digits64):
    seeds = [member_seed(3, k) for k in range(2)]
    result = run(digits64, seeds, {"name": "adam", "lr": 0.01}, batch_size=None, epochs=50,
                 trainer={"grad_tol": 0.3})
    assert result.converged.all()
    assert (result.curves["grad_norm"][:, -1] < 0.3).all()
    assert result.curve_epochs[-1] < 50


def test_snapshots_record_trajectory(digits64):
    seeds = [member_seed(4, k) for k in range(2)]
    result = run(digits64, seeds, OPTIMIZERS["sgd"], trainer={"snapshots": True})
    assert result.trajectory.shape == (4, 2, 64 * 6 + 6 + 6 * 10 + 10)
    assert len(result.curve_steps) == 4
