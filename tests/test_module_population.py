"""Populations of torch modules (CNN, ResNet, a user's class): equal to K separately trained
``nn.Module``s, batch norm in both modes, the trainers' interface, the results layout."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surfacekit import curvature
from surfacekit.config import group_defaults
from surfacekit.models import CNN, ModuleSpec, ResNet, build_spec, forward, init_statistics, param_shapes
from surfacekit.objective import objective_fn
from surfacekit.optim import build_optimizer, learning_rate, optimizer_config
from surfacekit.population import dataset_statistics, evaluate, flatten, init_population, member_seed, unflatten
from surfacekit.seeds import stream_generators
from surfacekit.train import backprop
from surfacekit.train.common import minibatches

TRAINER = {**group_defaults("trainer", "backprop"), "method": "backprop"}
MODELS = {
    "cnn": {"_target_": "surfacekit.models.CNN", "width": 3, "depth": 2},
    "resnet": {"_target_": "surfacekit.models.ResNet", "width": 2, "depth": 2, "blocks": 1},
}
OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "schedule": "inverse", "decay_epochs": 2},
    "nesterov": {"name": "nesterov", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 0.001},
    "rprop": {"name": "rprop", "lr": 0.01},
}
# The other five optimizers (element-wise too): one epoch of the CNN each.
OTHER_OPTIMIZERS = {
    "momentum": {"name": "momentum", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.001},
    "adagrad": {"name": "adagrad", "lr": 0.05},
    "rmsprop": {"name": "rmsprop", "lr": 0.005, "momentum": 0.5, "centered": True},
    "adadelta": {"name": "adadelta", "lr": 1.0},
    "adamax": {"name": "adamax", "lr": 0.01},
}


@pytest.fixture(scope="module")
def digits():
    """100 training and 60 test digits as float64 1x8x8 images (flattened)."""
    from surfacekit.data import load_data

    return load_data({"name": "digits", "train_size": 100, "test_size": 60}).to("cpu", torch.float64)


def separate_run(cls, kwargs, data, seed, opt_cfg, epochs, batch_size):
    """One ``nn.Module`` trained alone the plain torch way: ``torch.manual_seed(seed)``, ``.double()``,
    train mode, its own optimizer, the member's minibatch order, F.cross_entropy."""
    torch.manual_seed(seed)
    net = cls(in_shape=data.input_shape, num_outputs=10, **kwargs).double().train()
    opt_cfg = optimizer_config(opt_cfg)
    optimizer = build_optimizer(net.parameters(), opt_cfg)
    gens = stream_generators([seed], "order")
    n = len(data.x_train)
    steps = 1 if batch_size is None else -(-n // batch_size)
    for epoch in range(epochs):
        for i, idx in enumerate(minibatches(n, batch_size, gens, "cpu")):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(opt_cfg, epoch + i / steps, epochs)
            x, y = (data.x_train, data.y_train) if idx is None else (data.x_train[idx[0]], data.y_train[idx[0]])
            loss = F.cross_entropy(net(x.reshape(-1, *data.input_shape)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net


def assert_population_equals_modules(arch, opt_cfg, epochs, batch, digits):
    """K = 2 members trained as one population equal two separately trained modules (1e-10): parameters,
    running statistics, and the test loss in evaluation mode with the stored full-set statistics."""
    spec = build_spec({**MODELS[arch], "loss": "cross_entropy"}, digits)
    assert spec.batch_norm
    seeds = [member_seed(3, k) for k in range(2)]
    trainer = {**TRAINER, "epochs": epochs, "batch_size": batch}
    result = backprop.train(spec, digits, init_population(spec, seeds), seeds, opt_cfg, trainer,
                            "cross_entropy", chunk_size=64, progress=False)
    cls = CNN if arch == "cnn" else ResNet
    kwargs = {k: v for k, v in MODELS[arch].items() if k != "_target_"}
    for k, seed in enumerate(seeds):
        net = separate_run(cls, kwargs, digits, seed, opt_cfg, epochs, batch)
        for pname, value in net.named_parameters():
            torch.testing.assert_close(result.params[pname][k], value.detach(), rtol=0, atol=1e-10)
        for norm in spec.norms:
            module = net.get_submodule(norm.name)
            torch.testing.assert_close(result.buffers[f"{norm.name}.bn_running_mean"][k], module.running_mean,
                                       rtol=0, atol=1e-10)
            torch.testing.assert_close(result.buffers[f"{norm.name}.bn_running_var"][k], module.running_var,
                                       rtol=0, atol=1e-10)
        # test metrics in evaluation mode: the module in eval() with the stored full-set statistics
        for norm in spec.norms:
            module = net.get_submodule(norm.name)
            module.running_mean.copy_(result.buffers[f"{norm.name}.bn_mean"][k])
            module.running_var.copy_(result.buffers[f"{norm.name}.bn_var"][k])
        with torch.no_grad():
            test_loss = F.cross_entropy(net.eval()(digits.x_test.reshape(-1, 1, 8, 8)), digits.y_test)
        np.testing.assert_allclose(result.curves["test_loss"][k, -1], float(test_loss), rtol=1e-10)
    # members differ and trained
    assert result.curves["train_loss"][0, -1] != result.curves["train_loss"][1, -1]
    assert (result.curves["train_loss"][:, -1] < result.curves["train_loss"][:, 0]).all()


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_population_equals_separately_trained_modules(arch, name, digits):
    batch = None if name == "rprop" else 40  # 100 examples: an uneven last batch of 20
    assert_population_equals_modules(arch, OPTIMIZERS[name], 2, batch, digits)


@pytest.mark.parametrize("name", list(OTHER_OPTIMIZERS))
def test_cnn_population_equals_separate_modules_for_the_other_optimizers(name, digits):
    assert_population_equals_modules("cnn", OTHER_OPTIMIZERS[name], 1, 40, digits)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    spec = build_spec({**MODELS["cnn"], "loss": "cross_entropy"}, digits)
    seeds = [member_seed(5, k) for k in range(2)]
    trainer = {**TRAINER, "epochs": 1, "batch_size": 25}
    result = backprop.train(spec, digits, init_population(spec, seeds), seeds, OPTIMIZERS["adam"], trainer,
                            "cross_entropy", progress=False)
    return spec, seeds, result


def member_module(spec, result, k, statistics=True):
    """Member k as a plain float64 CNN module with its parameters (and its stored full-set statistics)."""
    net = CNN(in_shape=(1, 8, 8), num_outputs=10, **{k_: v for k_, v in MODELS["cnn"].items() if k_ != "_target_"})
    net = net.double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(result.params[name][k])
        for norm in spec.norms if statistics else ():
            net.get_submodule(norm.name).running_mean.copy_(result.buffers[f"{norm.name}.bn_mean"][k])
            net.get_submodule(norm.name).running_var.copy_(result.buffers[f"{norm.name}.bn_var"][k])
    return net


def test_initialization_is_torchs_under_the_member_seed(digits):
    spec = build_spec({**MODELS["resnet"], "loss": "cross_entropy"}, digits)
    seeds = [member_seed(0, k) for k in range(3)]
    params = init_population(spec, seeds)
    assert list(params) == list(param_shapes(spec)) and params["head.weight"].shape == (3, 10, 4)
    state = torch.get_rng_state()
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        net = ResNet(in_shape=(1, 8, 8), num_outputs=10, width=2, depth=2, blocks=1).double()
        for name, p in net.named_parameters():
            assert torch.equal(params[name][k], p.detach()), name
    torch.set_rng_state(state)
    fresh = init_population(spec, seeds)
    assert all(torch.equal(fresh[n], params[n]) for n in params)


@pytest.mark.parametrize("bn_mode", ["eval", "batch"])
def test_objective_equals_the_member_module_in_both_bn_modes(trained_cnn, digits, bn_mode):
    spec, seeds, result = trained_cnn
    theta = flatten(result.params)
    x, y = digits.x_train, digits.y_train
    for k in range(len(seeds)):
        stats = {n: v[k] for n, v in result.buffers.items()}
        net = member_module(spec, result, k).train(bn_mode == "batch")
        with torch.no_grad():
            expected = F.cross_entropy(net(x.reshape(-1, 1, 8, 8)), y)
        for chunk in (None, 37):
            loss_fn = objective_fn(spec, x, y, "cross_entropy", objective="data", bn_mode=bn_mode, statistics=stats,
                                   chunk_size=chunk)
            torch.testing.assert_close(loss_fn(theta[k]), expected, rtol=1e-13, atol=0)
    # the full-set statistics are exact under chunking
    whole, chunked = dataset_statistics(spec, result.params, x), dataset_statistics(spec, result.params, x, 23)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(whole[name], result.buffers[name], rtol=1e-12, atol=1e-14)


def test_population_hessian_equals_finite_differences_of_the_module(trained_cnn, digits):
    """The batch-mode Hessian of a member (dense, from HVP columns) against central differences of the
    plain module's gradient in train mode over the whole training set."""
    spec, _, result = trained_cnn
    x, y = digits.x_train[:50], digits.y_train[:50]
    theta = flatten(result.params)[0]
    loss_fn = objective_fn(spec, x, y, "cross_entropy", objective="data", bn_mode="batch", chunk_size=20)
    hess = curvature.dense_hessian(loss_fn, theta)
    net = member_module(spec, result, 0, statistics=False).train()

    def gradient(point):
        torch.nn.utils.vector_to_parameters(point, net.parameters())
        loss = F.cross_entropy(net(x.reshape(-1, 1, 8, 8)), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])

    h, cols = 1e-5, range(0, len(theta), 7)
    fd = torch.stack([(gradient(theta + h * e) - gradient(theta - h * e)) / (2 * h)
                      for e in torch.eye(len(theta), dtype=torch.float64)[list(cols)]])
    torch.testing.assert_close(hess[list(cols)], fd, rtol=0, atol=1e-8 * float(hess.abs().max()))


def test_evaluation_mode_outputs_do_not_depend_on_other_examples(trained_cnn, digits):
    spec, _, result = trained_cnn
    stats = {n: v for n, v in result.buffers.items() if n.endswith(("bn_mean", "bn_var")) and "running" not in n}
    together = forward(spec, result.params, digits.x_test[:10], stats)
    alone = torch.cat([forward(spec, result.params, digits.x_test[i:i + 1], stats) for i in range(10)], dim=1)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-13)
    loss, err = evaluate(spec, result.params, digits.x_test, digits.y_test, "cross_entropy", 16, stats)
    assert loss.shape == (2,) and torch.isfinite(loss).all() and ((err >= 0) & (err <= 1)).all()


def test_unflatten_round_trip_and_running_statistics_start_as_torchs(trained_cnn):
    spec, _, result = trained_cnn
    flat = flatten(result.params)
    back = unflatten(flat, spec)
    assert all(torch.equal(back[n], result.params[n]) for n in result.params)
    running = init_statistics(spec, 2, torch.float64)
    assert set(running) == {f"{n.name}.{s}" for n in spec.norms for s in ("bn_mean", "bn_var")}
    assert all(float(v.sum()) == (0.0 if n.endswith("mean") else v.numel()) for n, v in running.items())
