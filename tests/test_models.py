import math

import pytest
import torch

from surfacekit.models import (
    ACTIVATIONS, MLPSpec, activation_derivative, example_losses, forward, layer, member_errors, member_losses, num_params,
    param_shapes,
)
from surfacekit.objective import gradient_norms
from surfacekit.population import evaluate, flatten, init_population, member_loss_fn, unflatten

SPECS = [
    MLPSpec(6, (5,), 3),
    MLPSpec(6, (5, 5), 3, activation="tanh", residual=True),
    MLPSpec(6, (4, 7), 3, activation="sigmoid", bias=False, init="orthogonal"),
    MLPSpec(6, (5,), 3, activation="linear", init="xavier", batch_norm=True),
]


def torch_module(spec: MLPSpec, params: dict, k: int) -> torch.nn.Module:
    """An independent nn.Sequential of member k (no batch norm, no residual)."""
    act = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "sigmoid": torch.nn.Sigmoid(), "linear": torch.nn.Identity()}
    layers = []
    for i in range(spec.num_layers):
        lin = torch.nn.Linear(spec.dims[i], spec.dims[i + 1], bias=spec.bias, dtype=torch.float64)
        lin.weight.data = params[f"layers.{i}.weight"][k].clone()
        if spec.bias:
            lin.bias.data = params[f"layers.{i}.bias"][k].clone()
        layers += [lin, act[spec.activation]] if i < spec.num_layers - 1 else [lin]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("spec", SPECS)
def test_param_count_and_flatten_roundtrip(spec):
    params = init_population(spec, [1, 2, 3])
    flat = flatten(params)
    assert flat.shape == (3, num_params(spec))
    assert num_params(spec) == sum(math.prod(s) for s in param_shapes(spec).values())
    back = unflatten(flat, spec)
    for name in params:
        assert torch.equal(back[name], params[name])


@pytest.mark.parametrize("spec", SPECS[:1] + SPECS[2:3])
def test_forward_matches_torch_modules(spec):
    params = init_population(spec, [4, 5])
    x = torch.randn(7, 6, dtype=torch.float64)
    out = forward(spec, params, x)
    per_member = forward(spec, params, x.expand(2, 7, 6))
    for k in range(2):
        ref = torch_module(spec, params, k)(x)
        torch.testing.assert_close(out[k], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(per_member[k], ref, rtol=1e-12, atol=1e-12)


def test_losses_match_torch_functional():
    out = torch.randn(2, 9, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    F = torch.nn.functional
    for k in range(2):
        ce = member_losses(out, y, "cross_entropy")[k]
        torch.testing.assert_close(ce, F.cross_entropy(out[k], y))
        mse = member_losses(out, y, "mse")[k]
        torch.testing.assert_close(mse, F.mse_loss(out[k], F.one_hot(y, 4).double(), reduction="sum") / 9)
        hinge = member_losses(out, y, "hinge")[k]
        torch.testing.assert_close(hinge, F.multi_margin_loss(out[k], y))
    err = member_errors(out, y)
    assert torch.allclose(err, (out.argmax(-1) != y).double().mean(-1))


def test_example_losses_match_torch_functional_unreduced():
    out = torch.randn(2, 9, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    F = torch.nn.functional
    for k in range(2):
        torch.testing.assert_close(example_losses(out, y, "cross_entropy")[k], F.cross_entropy(out[k], y, reduction="none"))
        torch.testing.assert_close(example_losses(out, y, "hinge")[k], F.multi_margin_loss(out[k], y, reduction="none"))
        mse = F.mse_loss(out[k], F.one_hot(y, 4).double(), reduction="none").sum(-1)
        torch.testing.assert_close(example_losses(out, y, "mse")[k], mse)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(activation):
    z = torch.linspace(-3, 3, 50, dtype=torch.float64).add(0.01).requires_grad_(True)  # 0 is not a grid point
    y = ACTIVATIONS[activation](z)
    (dz,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(activation_derivative(activation, y.detach()), dz, rtol=1e-14, atol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_forward_is_the_composition_of_layers(spec):
    params = init_population(spec, [4, 5])
    x = torch.randn(7, 6, dtype=torch.float64)
    h = x
    for i in range(spec.num_layers):
        h = layer(spec, params, i, h)
    torch.testing.assert_close(forward(spec, params, x), h, rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_loss_equals_full_batch_and_loss_fn(spec, digits64):
    spec = MLPSpec(64, spec.widths, 10, spec.activation, spec.bias, spec.init, batch_norm=spec.batch_norm,
                   residual=spec.residual)
    params = init_population(spec, [0, 1, 2])
    x, y = digits64.x_train, digits64.y_train
    full, _ = evaluate(spec, params, x, y, "cross_entropy")
    chunked, _ = evaluate(spec, params, x, y, "cross_entropy", chunk_size=37)
    torch.testing.assert_close(full, chunked, rtol=1e-12, atol=0)
    fn = member_loss_fn(spec, x, y, "cross_entropy", chunk_size=64)
    for k in range(3):
        torch.testing.assert_close(fn(flatten(params)[k]), full[k], rtol=1e-12, atol=0)


def test_gradient_norms_match_autograd(digits64):
    spec = MLPSpec(64, (8,), 10, "tanh")
    params = init_population(spec, [0, 1])
    x, y = digits64.x_train, digits64.y_train
    norms = gradient_norms(spec, params, x, y, "cross_entropy", chunk_size=50)
    fn = member_loss_fn(spec, x, y, "cross_entropy")
    for k in range(2):
        theta = flatten(params)[k].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(theta), theta)
        torch.testing.assert_close(norms[k], g.norm(), rtol=1e-12, atol=0)


def test_regression_targets_and_bad_loss():
    out = torch.randn(2, 5, 3, dtype=torch.float64)
    target = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(member_losses(out, target, "mse"), (out - target).pow(2).sum(-1).mean(-1))
    assert torch.isnan(member_errors(out, target)).all()
    with pytest.raises(ValueError, match="cross_entropy needs class labels"):
        member_losses(out, target, "cross_entropy")
    with pytest.raises(ValueError, match="model.loss"):
        member_losses(out, torch.zeros(5, dtype=torch.int64), "l1")
