"""The fused step (``models.fused``) against autograd, in float64, and inside the trainer."""

import numpy as np
import pytest
import torch

from support import compose_config
from surfacekit.config import ConfigError, group_defaults, validate
from surfacekit.models import MLPSpec, forward, fused, member_losses
from surfacekit.models.module import module_spec
from surfacekit.population import gather_rows, init_population, member_seed
from surfacekit.train.backprop import train

K, B = 3, 9


def autograd_gradients(spec, params, x, y, loss, active):
    """The trainer's autograd path: grad of sum_k [active_k] L_k."""
    leaves = {name: p.clone().requires_grad_(True) for name, p in params.items()}
    losses = member_losses(forward(spec, leaves, x), y, loss)
    torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
    return losses.detach(), {name: p.grad for name, p in leaves.items()}


def problem(spec, loss, shared=False, regression=False, dtype=torch.float64):
    gen = torch.Generator().manual_seed(3)
    params = init_population(spec, [member_seed(1, k) for k in range(K)], dtype)
    for name, p in params.items():  # non-zero biases so that their gradients matter
        if name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=dtype))
    x = torch.randn(*(() if shared else (K,)), B, spec.in_dim, generator=gen, dtype=dtype)
    if regression:
        y = torch.randn(K, B, spec.out_dim, generator=gen, dtype=dtype)
    else:
        y = torch.randint(0, spec.out_dim, (B,) if shared else (K, B), generator=gen)
    return params, x, y


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("widths,bias,shared", [((5,), True, False), ((7, 4, 6), False, False), ((6, 6), True, True),
                                                 ((), True, False)])
def test_gradients_equal_autograd(activation, loss, widths, bias, shared, float64):
    spec = MLPSpec(4, widths, 3, activation, bias=bias)
    params, x, y = problem(spec, loss, shared)
    active = torch.tensor([True, False, True])
    expected_losses, expected = autograd_gradients(spec, params, x, y, loss, active)
    losses, tape = fused.forward(spec, params, x, y, loss)
    grads = fused.gradients(spec, params, tape, active)
    torch.testing.assert_close(losses, expected_losses, rtol=1e-14, atol=0)
    assert list(grads) == list(params)
    for name, grad in grads.items():
        assert grad.shape == params[name].shape
        torch.testing.assert_close(grad, expected[name], rtol=1e-12, atol=1e-15)
        assert torch.count_nonzero(grad[1]) == 0
        assert torch.count_nonzero(grad[0]) > 0


def test_regression_targets_with_mse(float64):
    spec = MLPSpec(4, (5,), 3, "tanh")
    params, x, y = problem(spec, "mse", regression=True)
    active = torch.ones(K, dtype=torch.bool)
    expected_losses, expected = autograd_gradients(spec, params, x, y, "mse", active)
    losses, tape = fused.forward(spec, params, x, y, "mse")
    torch.testing.assert_close(losses, expected_losses, rtol=1e-14, atol=0)
    for name, grad in fused.gradients(spec, params, tape).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="needs class labels"):
        fused.forward(spec, params, x, y, "cross_entropy")


def test_hard_points(float64):
    """Identical hidden units (a symmetric point), ReLU pre-activations exactly 0 (the kink), large
    logits, and a diverged member (an infinite weight) of weight 0: the others' gradients are unaffected
    and its output layer's are exact zeros (below the infinite weight, 0 * inf makes NaN, as in autograd)."""
    spec = MLPSpec(4, (6,), 3, "relu")
    params, x, y = problem(spec, "cross_entropy")
    w, b = params["layers.0.weight"], params["layers.0.bias"]
    w[:, 1], b[:, 1] = w[:, 0], b[:, 0]  # units 0 and 1 identical, incoming and outgoing
    params["layers.1.weight"][:, :, 1] = params["layers.1.weight"][:, :, 0]
    w[:, 2], b[:, 2] = 0.0, 0.0  # unit 2: z = 0 exactly for every example
    params["layers.1.weight"][0] *= 300.0  # member 0: saturated softmax
    params["layers.1.weight"][2, 0, 0] = float("inf")  # member 2 diverged
    active = torch.tensor([True, True, False])
    _, expected = autograd_gradients(spec, params, x, y, "cross_entropy", active)
    losses, tape = fused.forward(spec, params, x, y, "cross_entropy")
    assert not torch.isfinite(losses[2])
    grads = fused.gradients(spec, params, tape, active)
    for name, grad in grads.items():
        torch.testing.assert_close(grad[:2], expected[name][:2], rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(grads["layers.1.weight"][2]) == torch.count_nonzero(grads["layers.1.bias"][2]) == 0
    torch.testing.assert_close(grads["layers.0.weight"][:2, 0], grads["layers.0.weight"][:2, 1], rtol=1e-14, atol=0)
    assert torch.count_nonzero(grads["layers.0.weight"][:2, 2]) == 0  # ReLU's subgradient 0 at z = 0


def test_float32_against_float64():
    spec = MLPSpec(4, (50, 50), 10, "relu")
    params, x, y = problem(spec, "cross_entropy")
    _, expected = autograd_gradients(spec, params, x, y, "cross_entropy", torch.ones(K, dtype=torch.bool))
    single = {name: p.float() for name, p in params.items()}
    losses, tape = fused.forward(spec, single, x.float(), y, "cross_entropy")
    assert losses.dtype == torch.float32
    for name, grad in fused.gradients(spec, single, tape).items():
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad.double(), expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec,loss", [
    (MLPSpec(4, (5,), 3, batch_norm=True), "cross_entropy"),
    (MLPSpec(4, (5, 5), 3, residual=True), "cross_entropy"),
    (MLPSpec(4, (5,), 3, "maxout"), "cross_entropy"),
    (MLPSpec(4, (5,), 3), "hinge"),
])
def test_unsupported_networks_are_refused(spec, loss):
    assert not fused.supported(spec, loss)
    params, x, y = problem(spec, "cross_entropy")
    with pytest.raises(ValueError, match="the fused step covers plain MLPs"):
        fused.forward(spec, params, x, y, loss)


def test_module_populations_are_not_covered():
    spec = module_spec("surfacekit.models.CNN", {"width": 2}, (1, 8, 8), 10)
    assert not fused.supported(spec, "cross_entropy")


def test_gather_rows_equals_advanced_indexing():
    data = torch.randn(20, 4, 2)
    index = torch.randint(0, 20, (3, 7))
    assert torch.equal(gather_rows(data, index), data[index])
    labels = torch.arange(20)
    assert torch.equal(gather_rows(labels, index), index)
    with pytest.raises(IndexError):
        gather_rows(data, torch.tensor([[20]]))


@pytest.mark.parametrize("optimizer", [{"name": "momentum", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
                                       {"name": "adam", "lr": 0.01}])
def test_trainer_fused_equals_autograd(optimizer, digits64):
    """Three epochs of the trainer with and without the fused step, one member diverging (lr_scale)."""
    spec = MLPSpec(64, (8, 7), 10, "relu")
    seeds = [member_seed(2, k) for k in range(3)]
    scale = torch.tensor([1.0, 1e5, 0.5], dtype=torch.float64)
    results = {}
    for flag in (True, False):
        trainer = {**group_defaults("trainer", "backprop"), "epochs": 3, "batch_size": 40, "fused_step": flag}
        results[flag] = train(spec, digits64, init_population(spec, seeds), seeds, optimizer, trainer,
                              "cross_entropy", progress=False, lr_scale=scale)
    on, off = results[True], results[False]
    assert on.diverged.tolist() == off.diverged.tolist() == [False, True, False]
    assert on.steps.tolist() == off.steps.tolist()
    for name, value in on.params.items():
        np.testing.assert_allclose(value[[0, 2]].numpy(), off.params[name][[0, 2]].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(on.curves["train_loss"][[0, 2]], off.curves["train_loss"][[0, 2]], rtol=1e-10)
    assert (on.curves["train_loss"][[0, 2], -1] < on.curves["train_loss"][[0, 2], 0]).all()


def test_config_rule():
    assert group_defaults("trainer", "backprop")["fused_step"] is True
    validate(compose_config(["trainer.fused_step=false"]))
    with pytest.raises(ConfigError, match=r"trainer.fused_step=3 is invalid: expected true or false"):
        validate(compose_config(["trainer.fused_step=3"]))


def test_index_and_reused_buffers(float64):
    """A minibatch index gathers the rows; a tape passed back lends its buffers (same shapes: the same
    memory, same values as a fresh pass; a smaller last minibatch: new buffers, no resize warnings)."""
    import warnings

    spec = MLPSpec(4, (5, 6), 3, "tanh")
    params, _, _ = problem(spec, "cross_entropy")
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    first, second, last = (torch.randint(0, 30, (K, b), generator=gen) for b in (8, 8, 5))
    losses, tape = fused.forward(spec, params, x, y, "cross_entropy", index=first)
    expected_losses, expected = autograd_gradients(spec, params, x[first], y[first], "cross_entropy",
                                                   torch.ones(K, dtype=torch.bool))
    torch.testing.assert_close(losses, expected_losses, rtol=1e-14, atol=0)
    grads = fused.gradients(spec, params, tape)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-12, atol=1e-15)
    pointers = [t.data_ptr() for t in (tape.rows, tape.outputs, tape.output_grad, *tape.inputs[1:], *tape.hidden_grads,
                                       *tape.grads.values())]
    fresh_losses, fresh = fused.forward(spec, params, x, y, "cross_entropy", index=second)
    fresh_grads = {name: g.clone() for name, g in fused.gradients(spec, params, fresh).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses, tape = fused.forward(spec, params, x, y, "cross_entropy", index=second, reuse=tape)
        assert [t.data_ptr() for t in (tape.rows, tape.outputs, tape.output_grad, *tape.inputs[1:], *tape.hidden_grads,
                                       *tape.grads.values())] == pointers
        assert torch.equal(losses, fresh_losses)
        for name, grad in fused.gradients(spec, params, tape).items():
            assert torch.equal(grad, fresh_grads[name])
        losses, tape = fused.forward(spec, params, x, y, "cross_entropy", index=last, reuse=tape)
        assert tape.rows.shape == (K, 5, 4) and tape.output_grad.shape == (K, 5, 3)
        expected_losses, expected = autograd_gradients(spec, params, x[last], y[last], "cross_entropy",
                                                       torch.ones(K, dtype=torch.bool))
        torch.testing.assert_close(losses, expected_losses, rtol=1e-14, atol=0)
        for name, grad in fused.gradients(spec, params, tape).items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("spec,loss,expected", [(MLPSpec(64, (5,), 10, "relu"), "cross_entropy", True),
                                                (MLPSpec(64, (5,), 10, "relu"), "hinge", False),
                                                (MLPSpec(64, (5,), 10, "relu", batch_norm=True), "mse", False)])
def test_trainer_takes_the_fused_step_by_default_where_covered(spec, loss, expected, digits64, monkeypatch):
    calls, original = [], fused.gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "gradients", counted)
    trainer = {**group_defaults("trainer", "backprop"), "epochs": 1, "batch_size": 100}
    seeds = [member_seed(0, 0)]
    train(spec, digits64, init_population(spec, seeds), seeds, {"name": "sgd", "lr": 0.1}, trainer, loss, progress=False)
    assert bool(calls) == expected

