"""Learning-rate schedules against closed forms, and the optimizer config's YAML defaults."""

import math

import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec
from surfacekit.optim import OPTIMIZERS, build_optimizer, learning_rate, optimizer_config
from surfacekit.population import init_population
from surfacekit.train import backprop


@pytest.mark.parametrize("epoch", [0.0, 0.5, 7.25, 20.0, 40.0, 55.0])
def test_schedules_equal_closed_forms(epoch):
    total, lr = 40.0, 0.3
    assert learning_rate({"lr": lr, "schedule": "constant"}, epoch, total) == lr
    inverse = learning_rate({"lr": lr, "schedule": "inverse", "decay_epochs": 10}, epoch, total)
    assert inverse == pytest.approx(lr * 10 / (10 + epoch), rel=1e-15)
    cosine = learning_rate({"lr": lr, "schedule": "cosine"}, epoch, total)
    expected = lr * math.cos(math.pi * min(epoch, total) / (2 * total)) ** 2  # (1 + cos 2a) / 2 = cos^2 a
    assert cosine == pytest.approx(expected, rel=1e-12, abs=1e-17)


def test_landmarks_of_the_schedules():
    assert learning_rate({"lr": 1.0, "schedule": "inverse", "decay_epochs": 50}, 50, 60) == 0.5
    assert learning_rate({"lr": 1.0, "schedule": "cosine"}, 30, 60) == pytest.approx(0.5, rel=1e-15)
    assert learning_rate({"lr": 1.0, "schedule": "cosine"}, 60, 60) == pytest.approx(0.0, abs=1e-16)
    with pytest.raises(ValueError, match="optimizer.schedule='step'"):
        learning_rate({"lr": 1.0, "schedule": "step"}, 0, 1)


def test_backprop_sets_the_schedule_at_fractional_epochs(digits64, monkeypatch):
    """Each step's rate is the schedule at epoch + i / steps_per_epoch (5 steps per epoch here)."""
    applied = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kw):
        applied.append(self.param_groups[0]["lr"])
        return original(self, *args, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    spec = MLPSpec(64, (3,), 10)
    opt = {"name": "sgd", "lr": 0.2, "schedule": "inverse", "decay_epochs": 2}
    trainer = {**group_defaults("trainer", "backprop"), "epochs": 3, "batch_size": 40}
    backprop.train(spec, digits64, init_population(spec, [0]), [0], opt, trainer, "cross_entropy", progress=False)
    expected = [0.2 / (1 + (e + i / 5) / 2) for e in range(3) for i in range(5)]
    assert applied == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_partial_configs_take_the_yaml_defaults(name):
    full = optimizer_config({"name": name, "lr": 0.5})
    assert full == {**group_defaults("optimizer", name), "lr": 0.5}
    build_optimizer([torch.zeros(3, requires_grad=True)], {"name": name, "lr": 0.5})
    with pytest.raises(ValueError, match="optimizer.name='lbfgs' is unknown"):
        optimizer_config({"name": "lbfgs", "lr": 1.0})


def test_group_defaults_follows_the_defaults_list():
    tp, dtp = group_defaults("trainer", "tp"), group_defaults("trainer", "dtp")
    assert tp == {**dtp, "difference_correction": False} and dtp["difference_correction"] is True
    with pytest.raises(FileNotFoundError, match="no config option trainer=sgd"):
        group_defaults("trainer", "sgd")


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_sgd_family_takes_the_single_kernel_update_with_the_same_result(name):
    """build_optimizer's SGD(fused=True) against torch's default (one tensor at a time), float64, with
    weight decay and a changing learning rate: the same parameters to rounding (bit for bit without
    momentum; with it, the single kernel rounds its multiply-adds differently, by an ulp)."""
    cfg = {"name": name, "lr": 0.1, "weight_decay": 1e-3}
    runs = []
    for fused in (True, False):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True),
                  torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)]
        opt = build_optimizer(params, cfg)
        if not fused:
            opt = type(opt)(params, **{**opt.defaults, "fused": None, "foreach": False})
        assert bool(opt.defaults["fused"]) == fused
        for step in range(6):
            for group in opt.param_groups:
                group["lr"] = 0.1 / (1 + step)
            for p in params:
                p.grad = torch.randn(p.shape, dtype=torch.float64, generator=gen)
            opt.step()
        runs.append([p.detach() for p in params])
    for a, b in zip(*runs):
        if name == "sgd":
            assert torch.equal(a, b)
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
