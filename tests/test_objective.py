"""The trained objective: L2 terms as each method applied them, recorded gradient norms, grad_tol."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surfacekit import curvature
from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec, param_shapes
from surfacekit.objective import l2_coefficients, objective_fn
from surfacekit.optim import OPTIMIZERS, build_optimizer
from surfacekit.population import flatten, init_population, member_seed
from surfacekit.train import backprop, penalty

SPEC = MLPSpec(64, (4,), 10, "tanh")
SEEDS = [member_seed(0, k) for k in range(2)]
BACKPROP = {**group_defaults("trainer", "backprop"), "method": "backprop"}
WD = 0.01


def reference_loss(theta, x, y, wd=0.0, weights_only=False):
    """An independent 64-4-10 tanh network on a flat vector (weight, bias per layer), + (wd/2)|.|^2."""
    w0, b0 = theta[:256].reshape(4, 64), theta[256:260]
    w1, b1 = theta[260:300].reshape(10, 4), theta[300:310]
    data = F.cross_entropy(F.linear(torch.tanh(F.linear(x, w0, b0)), w1, b1), y)
    decayed = torch.cat([w0.flatten(), w1.flatten()]) if weights_only else theta
    return data + 0.5 * wd * decayed.pow(2).sum()


def reference_grad_norm(theta, x, y, **kw):
    theta = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(reference_loss(theta, x, y, **kw), theta)
    return float(g.norm())


@pytest.mark.parametrize("opt", [{"name": "sgd", "lr": 1.0, "schedule": "constant"}, {"name": "adam", "lr": 0.02}])
def test_recorded_gradient_norm_is_the_trained_objectives(digits64, opt):
    """Trained to near-stationarity with weight decay: grad_tol stops on |grad (L + wd/2 |theta|^2)|,
    which the recorded norm equals, while |grad L| = wd |theta| stays large there."""
    opt = {**opt, "weight_decay": WD}
    x, y = digits64.x_train, digits64.y_train
    trainer = {**BACKPROP, "epochs": 1500, "batch_size": None, "eval_every": 50, "grad_tol": 1e-3}
    result = backprop.train(SPEC, digits64, init_population(SPEC, SEEDS), SEEDS, opt, trainer, "cross_entropy",
                            progress=False)
    assert result.converged.all() and result.curve_epochs[-1] < 1500
    thetas = flatten(result.params)
    for k in range(2):
        trained = reference_grad_norm(thetas[k], x, y, wd=WD)
        np.testing.assert_allclose(result.curves["grad_norm"][k, -1], trained, rtol=1e-9)
        assert trained < 1e-3 < 0.05 < reference_grad_norm(thetas[k], x, y)
    # objective=data: the same training, the data loss's gradient recorded (and grad_tol never met)
    data = backprop.train(SPEC, digits64, init_population(SPEC, SEEDS), SEEDS, opt, {**trainer, "epochs": 100},
                          "cross_entropy", progress=False, objective="data")
    assert not data.converged.any()
    for k, theta in enumerate(flatten(data.params)):
        np.testing.assert_allclose(data.curves["grad_norm"][k, -1], reference_grad_norm(theta, x, y), rtol=1e-9)


def test_objective_fn_value_gradient_and_hessian(digits64):
    x, y = digits64.x_train, digits64.y_train
    theta = flatten(init_population(SPEC, SEEDS[:1]))[0]
    opt = {"name": "adam", "lr": 0.01, "weight_decay": WD}
    trained = objective_fn(SPEC, x, y, "cross_entropy", optimizer_cfg=opt, trainer_cfg=BACKPROP, chunk_size=64)
    data = objective_fn(SPEC, x, y, "cross_entropy", objective="data")
    torch.testing.assert_close(trained(theta), reference_loss(theta, x, y, wd=WD), rtol=1e-13, atol=0)
    torch.testing.assert_close(data(theta), reference_loss(theta, x, y), rtol=1e-13, atol=0)
    h_trained = curvature.dense_hessian(trained, theta)
    h_data = curvature.dense_hessian(data, theta)
    reference = torch.autograd.functional.hessian(lambda t: reference_loss(t, x, y), theta)  # no batch norm here
    torch.testing.assert_close(h_data, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_trained, reference + WD * torch.eye(len(theta), dtype=theta.dtype), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_backprop_l2_is_the_optimizers_coupled_weight_decay(name):
    """One optimizer step with weight_decay=wd on L equals one step without it on L + (wd/2)|theta|^2,
    for every parameter; the objective's L2 says the same (rprop: none, and asking for it raises)."""
    spec = MLPSpec(5, (3,), 2, "tanh", batch_norm=True)
    opt = {"name": name, "lr": 0.01, "weight_decay": WD if name != "rprop" else 0.0}
    coeffs = l2_coefficients(spec, "backprop", opt, BACKPROP)
    if name == "rprop":
        assert coeffs == {}
        with pytest.raises(ValueError, match="Rprop has no weight decay"):
            build_optimizer([torch.zeros(2, requires_grad=True)], {**opt, "weight_decay": WD})
        return
    assert coeffs == {n: WD for n in param_shapes(spec)}  # biases and batch-norm scale/shift included
    gen = torch.Generator().manual_seed(1)
    start, target = torch.randn(2, 7, generator=gen, dtype=torch.float64)

    def stepped(weight_decay, extra):
        p = start.clone().requires_grad_(True)
        o = build_optimizer([p], {**opt, "weight_decay": weight_decay})
        for _ in range(3):
            o.zero_grad()
            ((p - target).pow(4).sum() + 0.5 * extra * p.pow(2).sum()).backward()
            o.step()
        return p.detach()

    torch.testing.assert_close(stepped(WD, 0.0), stepped(0.0, WD), rtol=1e-12, atol=1e-14)


def test_penalty_trainer_decays_weights_only(digits64):
    spec = MLPSpec(64, (4,), 10, "tanh")
    trainer = {**group_defaults("trainer", "penalty"), "stages": 1, "alternations": 1, "w_steps": 2, "z_steps": 2,
               "refit_steps": 2, "weight_decay": 0.05}
    coeffs = l2_coefficients(spec, "penalty", {}, trainer)
    assert coeffs == {"layers.0.weight": 0.05, "layers.1.weight": 0.05}
    result = penalty.train(spec, digits64, init_population(spec, SEEDS), SEEDS, {"name": "sgd", "weight_decay": 1.0},
                           trainer, "cross_entropy", progress=False)
    for k, theta in enumerate(flatten(result.params)):
        expected = reference_grad_norm(theta, digits64.x_train, digits64.y_train, wd=0.05, weights_only=True)
        np.testing.assert_allclose(result.curves["grad_norm"][k, -1], expected, rtol=1e-9)
    assert l2_coefficients(spec, "dtp", {"name": "sgd", "weight_decay": 1.0}, group_defaults("trainer", "dtp")) == {}


def test_invalid_requests_raise(digits64):
    x, y = digits64.x_train, digits64.y_train
    with pytest.raises(ValueError, match="objective=trained needs"):
        objective_fn(SPEC, x, y, "cross_entropy")
    with pytest.raises(ValueError, match="objective='hessian'"):
        objective_fn(SPEC, x, y, "cross_entropy", objective="hessian")
    with pytest.raises(ValueError, match="bn_mode='train'"):
        objective_fn(SPEC, x, y, "cross_entropy", objective="data", bn_mode="train")
    bn = MLPSpec(64, (4,), 10, batch_norm=True)
    with pytest.raises(ValueError, match="bn_mode=eval needs the stored batch-norm statistics"):
        objective_fn(bn, x, y, "cross_entropy", objective="data", bn_mode="eval")
    with pytest.raises(ValueError, match="does not state its regularizer"):
        l2_coefficients(SPEC, "sgd_with_magic", {}, {})
