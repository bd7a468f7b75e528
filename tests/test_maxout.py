"""Maxout units in the population layout: shapes, an independent reference network, gradients, batch
norm, populations; and every tool on a maxout job (spectrum, landscape, critical) or a refusal."""

import math

import numpy as np
import pytest
import torch

from support import compose_config
from surfacekit.config import ConfigError, group_defaults, validate
from surfacekit.models import MLPSpec, buffer_shapes, forward, num_params, param_shapes
from surfacekit.objective import objective_fn
from surfacekit.population import flatten, init_population, member_seed, unflatten
from surfacekit.store import load_group, load_members
from surfacekit.train import backprop

F64 = torch.float64
SPEC = MLPSpec(6, (4, 3), 2, "maxout", maxout_pieces=3)


def reference(spec: MLPSpec, params: dict, k: int, x: torch.Tensor) -> torch.Tensor:
    """Member k as torch.nn.Linear layers and an explicit max over each unit's pieces."""
    h = x
    for i in range(spec.num_layers):
        lin = torch.nn.Linear(spec.dims[i], params[f"layers.{i}.weight"].shape[1], dtype=F64)
        lin.weight.data = params[f"layers.{i}.weight"][k].clone()
        lin.bias.data = params[f"layers.{i}.bias"][k].clone()
        z = lin(h)
        if i < spec.num_layers - 1:
            z = torch.stack([z[:, j * spec.maxout_pieces:(j + 1) * spec.maxout_pieces].max(dim=1).values
                             for j in range(spec.dims[i + 1])], dim=1)
        h = z
    return h


def test_shapes_and_forward_match_an_independent_network():
    shapes = param_shapes(SPEC)
    assert shapes == {"layers.0.weight": (12, 6), "layers.0.bias": (12,), "layers.1.weight": (9, 4),
                      "layers.1.bias": (9,), "layers.2.weight": (2, 3), "layers.2.bias": (2,)}
    assert num_params(SPEC) == sum(math.prod(s) for s in shapes.values())
    params = init_population(SPEC, [1, 2, 3])
    assert all(params[n].shape == (3, *s) for n, s in shapes.items())
    for name, value in unflatten(flatten(params), SPEC).items():
        assert torch.equal(value, params[name])
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = forward(SPEC, params, x)
    for k in range(3):
        torch.testing.assert_close(out[k], reference(SPEC, params, k, x), rtol=1e-13, atol=1e-13)


def test_gradient_matches_finite_differences():
    params = init_population(SPEC, [4])
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(15, 6, generator=gen, dtype=F64), torch.randint(0, 2, (15,), generator=gen)
    loss_fn = objective_fn(SPEC, x, y, "cross_entropy", objective="data")
    theta = flatten(params)[0]
    grad = torch.func.grad(loss_fn)(theta)
    v = torch.randn(theta.shape, generator=gen, dtype=F64)
    eps = 1e-6  # pieces are separated by far more than eps |v| at a random point, so no max switches
    fd = (loss_fn(theta + eps * v) - loss_fn(theta - eps * v)) / (2 * eps)
    assert float(fd) == pytest.approx(float(grad @ v), rel=1e-7)


def test_batch_norm_normalizes_every_piece_and_populations_equal_separate_runs(digits64):
    spec = MLPSpec(64, (5,), 10, "maxout", batch_norm=True)
    assert param_shapes(spec)["layers.0.bn_scale"] == (10,) and buffer_shapes(spec)["layers.0.bn_mean"] == (10,)
    cfg = {**group_defaults("trainer", "backprop"), "epochs": 2, "batch_size": 40}
    seeds = [member_seed(3, k) for k in range(2)]
    opt = {"name": "adam", "lr": 0.01}
    together = backprop.train(spec, digits64, init_population(spec, seeds), seeds, opt, cfg, "cross_entropy",
                              progress=False)
    assert together.buffers["layers.0.bn_var"].shape == (2, 10)
    for k, s in enumerate(seeds):
        alone = backprop.train(spec, digits64, init_population(spec, [s]), [s], opt, cfg, "cross_entropy",
                               progress=False)
        for name, value in together.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[name][0].numpy(), rtol=0, atol=1e-10)
    assert (together.curves["train_loss"][:, -1] < together.curves["train_loss"][:, 0]).all()


@pytest.mark.parametrize("overrides,message", [
    (["model.activation=maxout", "trainer=dtp"], "model.activation=maxout is invalid: expected an element-wise"),
    (["model.activation=maxout", "trainer=penalty"], "with trainer=penalty"),
    (["model.activation=maxout", "model.maxout_pieces=1"], "model.maxout_pieces=1 is invalid"),
    (["model.depth=0", "trainer=dtp"], "model.depth=0 is invalid: expected >= 1 with trainer=dtp"),
])
def test_refused_combinations(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides), overrides)


def test_every_tool_runs_on_a_maxout_job(run_cli, tmp_path):
    train = run_cli("population.size=2", "trainer.epochs=3", "model.width=3", "model.activation=maxout",
                    "data.train_size=120", "progress=false", "trainer.snapshots=true", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    results = tmp_path / "run" / "results.h5"
    assert load_group(results, "params")["layers.0.weight"].shape == (2, 6, 64)
    for task in (["task=spectrum", "spectrum.top_k=2", "spectrum.bottom_k=2", "spectrum.density_probes=1",
                  "spectrum.trace_probes=2"],
                 ["task=landscape", "landscape.kind=[interpolation,slice1d]", "landscape.interpolation.num=5",
                  "landscape.slice.num=3"],
                 ["task=critical", "critical.starts=1", "critical.finders=[newton_mr]", "critical.members=[0]",
                  "critical.compute_index=false", "critical.options.newton_mr.max_iter=2"]):
        out = run_cli(*task, f"source={results}", "progress=false")
        assert out.returncode == 0, (task[0], out.stderr[-2000:])
    members = load_members(results)
    assert (members["index_count"] >= 0).all() and np.isfinite(members["lambda_max"]).all()
