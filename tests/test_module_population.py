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


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_population_equals_separately_trained_modules(arch, name, digits):
    spec = build_spec({**MODELS[arch], "loss": "cross_entropy"}, digits)
    assert spec.batch_norm
    seeds = [member_seed(3, k) for k in range(2)]
    batch = None if name == "rprop" else 40  # 100 examples: an uneven last batch of 20
    trainer = {**TRAINER, "epochs": 2, "batch_size": batch}
    result = backprop.train(spec, digits, init_population(spec, seeds), seeds, OPTIMIZERS[name], trainer,
                            "cross_entropy", chunk_size=64, progress=False)
    cls = CNN if arch == "cnn" else ResNet
    kwargs = {k: v for k, v in MODELS[arch].items() if k != "_target_"}
    for k, seed in enumerate(seeds):
        net = separate_run(cls, kwargs, digits, seed, OPTIMIZERS[name], 2, batch)
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
