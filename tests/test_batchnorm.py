"""Batch norm: running statistics, exact full-set statistics, evaluation mode, the two loss surfaces."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from surfacekit import curvature
from surfacekit.config import group_defaults
from surfacekit.models import MLPSpec, batch_moments, forward, update_running
from surfacekit.objective import objective_fn
from surfacekit.population import dataset_statistics, evaluate, flatten, init_population, member_seed
from surfacekit.seeds import STREAMS, derive_seed
from surfacekit.train import backprop

BACKPROP = {**group_defaults("trainer", "backprop"), "method": "backprop"}
SPEC = MLPSpec(64, (6,), 10, "relu", batch_norm=True)


def test_running_statistics_equal_torch_batchnorm1d():
    gen = torch.Generator().manual_seed(0)
    bn = torch.nn.BatchNorm1d(5, dtype=torch.float64)
    mean, var = torch.zeros(1, 5, dtype=torch.float64), torch.ones(1, 5, dtype=torch.float64)
    for size in (7, 2, 30, 3, 11):
        z = 3.0 * torch.randn(size, 5, generator=gen, dtype=torch.float64) + 2.0
        bn.train()(z)
        m, v = batch_moments(z.unsqueeze(0))
        update_running(mean, var, m, v, size)
        torch.testing.assert_close(mean[0], bn.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(var[0], bn.running_var, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 examples"):
        update_running(mean, var, m, v, 1)


def reference_module(params, k: int, statistics: dict | None = None) -> torch.nn.Module:
    """An independent Linear-BatchNorm1d-ReLU-Linear module with member k's weights (and statistics)."""
    lin0, bn, lin1 = torch.nn.Linear(64, 6, dtype=torch.float64), torch.nn.BatchNorm1d(6, dtype=torch.float64), \
        torch.nn.Linear(6, 10, dtype=torch.float64)
    with torch.no_grad():
        lin0.weight.copy_(params["layers.0.weight"][k]), lin0.bias.copy_(params["layers.0.bias"][k])
        bn.weight.copy_(params["layers.0.bn_scale"][k]), bn.bias.copy_(params["layers.0.bn_shift"][k])
        lin1.weight.copy_(params["layers.1.weight"][k]), lin1.bias.copy_(params["layers.1.bias"][k])
        if statistics is not None:
            bn.running_mean.copy_(statistics["mean"][k]), bn.running_var.copy_(statistics["var"][k])
    return torch.nn.Sequential(lin0, bn, torch.nn.ReLU(), lin1)


@pytest.fixture(scope="module")
def trained():
    """One member, SGD with momentum, batch 48 of 200 (an uneven last batch of 8), 3 epochs."""
    from surfacekit.data import load_data

    data = load_data({"name": "digits", "train_size": 200, "test_size": 100}).to("cpu", torch.float64)
    seeds = [member_seed(7, 0)]
    opt = {"name": "momentum", "lr": 0.05, "momentum": 0.9}
    trainer = {**BACKPROP, "epochs": 3, "batch_size": 48}
    result = backprop.train(SPEC, data, init_population(SPEC, seeds), seeds, opt, trainer, "cross_entropy",
                            chunk_size=64, progress=False)
    return data, seeds, result


def test_training_equals_torch_module_with_batchnorm(trained):
    """Same weights, same batches: parameters and torch's running statistics agree."""
    data, seeds, result = trained
    module = reference_module(init_population(SPEC, seeds), 0)
    sgd = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(derive_seed(seeds[0], STREAMS["order"]))
    for _ in range(3):
        perm = torch.randperm(200, generator=order)
        for start in range(0, 200, 48):
            idx = perm[start : start + 48]
            sgd.zero_grad()
            F.cross_entropy(module.train()(data.x_train[idx]), data.y_train[idx]).backward()
            sgd.step()
    lin0, bn, _, lin1 = module
    pairs = {"layers.0.weight": lin0.weight, "layers.0.bn_scale": bn.weight, "layers.1.weight": lin1.weight,
             "layers.1.bias": lin1.bias}
    for name, ref in pairs.items():
        torch.testing.assert_close(result.params[name][0], ref.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(result.buffers["layers.0.bn_running_mean"][0], bn.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.buffers["layers.0.bn_running_var"][0], bn.running_var, rtol=0, atol=1e-12)


def test_evaluation_mode_test_metrics_equal_torch_module(trained):
    data, _, result = trained
    stats = {"mean": result.buffers["layers.0.bn_mean"], "var": result.buffers["layers.0.bn_var"]}
    module = reference_module(result.params, 0, stats).eval()
    with torch.no_grad():
        logits = module(data.x_test)
    np.testing.assert_allclose(result.curves["test_loss"][0, -1], float(F.cross_entropy(logits, data.y_test)),
                               rtol=1e-12)
    error = float((logits.argmax(-1) != data.y_test).double().mean())
    assert result.curves["test_error"][0, -1] == pytest.approx(error, abs=1e-15)
    # the stored statistics are the exact full-training-set moments of the final network (divisor N)
    with torch.no_grad():
        z = module[0](data.x_train)
    torch.testing.assert_close(stats["mean"][0], z.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(stats["var"][0], z.var(0, unbiased=False), rtol=0, atol=1e-12)
    # so at the end, evaluation mode on the training set equals the recorded (batch-mode) train loss
    train_eval, _ = evaluate(SPEC, result.params, data.x_train, data.y_train, "cross_entropy",
                             statistics={n: result.buffers[n] for n in ("layers.0.bn_mean", "layers.0.bn_var")})
    np.testing.assert_allclose(result.curves["train_loss"][0, -1], float(train_eval[0]), rtol=1e-12)


def test_evaluation_mode_logits_do_not_depend_on_other_examples(trained):
    data, _, result = trained
    stats = {n: result.buffers[n] for n in ("layers.0.bn_mean", "layers.0.bn_var")}
    x = data.x_test[:20]
    together = forward(SPEC, result.params, x, stats)[0]
    alone = torch.cat([forward(SPEC, result.params, x[i : i + 1], stats)[0] for i in range(20)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-13)
    assert (alone[0] - alone[1]).abs().max() > 0.1
    # batch statistics of the examples seen (the old test-time behaviour) do depend on them
    assert (forward(SPEC, result.params, x)[0][:10] - forward(SPEC, result.params, x[:10])[0]).abs().max() > 0.01


def test_dataset_statistics_are_exact_under_chunking(digits64):
    spec = MLPSpec(64, (8, 8, 5), 10, "tanh", batch_norm=True, residual=True)
    params = init_population(spec, [1, 2])
    x, y = digits64.x_train, digits64.y_train
    _, full = forward(spec, params, x, return_statistics=True)
    for chunk in (37, 1, 199):
        chunked = dataset_statistics(spec, params, x, chunk)
        assert chunked.keys() == full.keys() and len(full) == 6
        for name in full:
            torch.testing.assert_close(chunked[name], full[name], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(evaluate(spec, params, x, y, "cross_entropy", 37)[0],
                               evaluate(spec, params, x, y, "cross_entropy")[0], rtol=1e-12, atol=0)


def reference_bn_loss(theta, x, y, stats=None):
    """An independent 64-4-4-10 tanh network with batch norm on both hidden layers, from a flat vector
    (per layer: weight, bias, scale, shift). stats None: full-set batch statistics; else fixed."""
    sizes, start, pieces = [256, 4, 4, 4, 16, 4, 4, 4, 40, 10], 0, []
    for s in sizes:
        pieces.append(theta[start : start + s])
        start += s
    w0, b0, g0, s0, w1, b1, g1, s1, w2, b2 = pieces
    h = x
    for i, (w, b, g, s) in enumerate(((w0.reshape(4, 64), b0, g0, s0), (w1.reshape(4, 4), b1, g1, s1))):
        mean, var = (None, None) if stats is None else (stats[f"layers.{i}.bn_mean"][0], stats[f"layers.{i}.bn_var"][0])
        h = torch.tanh(F.batch_norm(F.linear(h, w, b), mean, var, g, s, training=stats is None, eps=1e-5))
    return F.cross_entropy(F.linear(h, w2.reshape(10, 4), b2), y)


def hessian_from_hvp_columns(fn, theta):
    theta = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(theta), theta, create_graph=True)
    eye = torch.eye(len(theta), dtype=theta.dtype)
    return torch.stack([torch.autograd.grad(g, theta, e, retain_graph=True)[0] for e in eye])


def test_both_bn_modes_match_dense_references(digits64):
    spec = MLPSpec(64, (4, 4), 10, "tanh", batch_norm=True)
    x, y = digits64.x_train, digits64.y_train
    params = init_population(spec, [3])
    with torch.no_grad():
        for name in params:  # move scales and shifts off their initial values
            if "bn_" in name:
                params[name] += 0.3 * torch.randn(params[name].shape, generator=torch.Generator().manual_seed(5),
                                                  dtype=torch.float64)
    theta = flatten(params)[0]
    stats = {n: v.detach() for n, v in dataset_statistics(spec, params, x).items()}
    batch = objective_fn(spec, x, y, "cross_entropy", objective="data", chunk_size=37)
    fixed = objective_fn(spec, x, y, "cross_entropy", objective="data", bn_mode="eval", statistics=stats, chunk_size=37)
    torch.testing.assert_close(batch(theta), fixed(theta), rtol=1e-13, atol=0)  # same value at these statistics
    h_batch, h_eval = curvature.dense_hessian(batch, theta), curvature.dense_hessian(fixed, theta)
    ref_batch = hessian_from_hvp_columns(lambda t: reference_bn_loss(t, x, y), theta)
    ref_eval = hessian_from_hvp_columns(lambda t: reference_bn_loss(t, x, y, stats), theta)
    scale = ref_batch.abs().max()
    torch.testing.assert_close(h_batch, 0.5 * (ref_batch + ref_batch.T), rtol=0, atol=1e-11 * scale)
    torch.testing.assert_close(h_eval, 0.5 * (ref_eval + ref_eval.T), rtol=0, atol=1e-11 * scale)
    assert (h_batch - h_eval).abs().max() > 0.01 * scale  # the two surfaces really differ


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_batchnorm_population_equals_separate_runs(digits64, name):
    seeds = [member_seed(8, k) for k in range(3)]
    opt = {"name": name, "lr": 0.01, "schedule": "constant"}
    trainer = {**BACKPROP, "epochs": 2, "batch_size": 48}

    def run(s):
        return backprop.train(SPEC, digits64, init_population(SPEC, s), s, opt, trainer, "cross_entropy", progress=False)

    together = run(seeds)
    assert set(together.buffers) == {f"layers.0.{n}" for n in ("bn_mean", "bn_var", "bn_running_mean", "bn_running_var")}
    for k, s in enumerate(seeds):
        alone = run([s])
        for group in ("params", "buffers"):
            for pname, value in getattr(together, group).items():
                np.testing.assert_allclose(value[k].numpy(), getattr(alone, group)[pname][0].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(together.curves["test_loss"][k], alone.curves["test_loss"][0], rtol=1e-10)


def test_batch_of_one_example_is_refused(digits64):
    with pytest.raises(ValueError, match="batch of one example"):
        backprop.train(SPEC, digits64, init_population(SPEC, [0]), [0], {"name": "sgd", "lr": 0.1},
                       {**BACKPROP, "epochs": 1, "batch_size": 199}, "cross_entropy", progress=False)
