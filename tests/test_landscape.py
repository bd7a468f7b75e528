import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from surfacekit import landscape as ls
from surfacekit.models import MLPSpec, init_member
from surfacekit.population import evaluate, flatten, member_loss_fn, unflatten

SPEC = MLPSpec(in_dim=64, widths=(8,), out_dim=10)


def member(spec, seed, bias_std=0.1):
    """A flat [P] member with non-zero biases (so bias handling matters)."""
    params = init_member(spec, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    for name in params:
        if name.endswith("bias"):
            params[name] = bias_std * torch.randn(params[name].shape, generator=gen, dtype=torch.float64)
    return flatten({k: v.unsqueeze(0) for k, v in params.items()})[0]


def rescaled(spec, theta, c):
    """(W1, b1) * c and W2 / c: the same function for a ReLU network (positive homogeneity)."""
    p = {k: v.clone() for k, v in unflatten(theta, spec).items()}
    p["layers.0.weight"] *= c
    p["layers.0.bias"] *= c
    p["layers.1.weight"] /= c
    return flatten(p)[0]


def test_rescaling_is_the_same_function(digits64):
    theta = member(SPEC, 0)
    loss_fn = member_loss_fn(SPEC, digits64.x_train, digits64.y_train, "cross_entropy")
    assert abs(loss_fn(theta) - loss_fn(rescaled(SPEC, theta, 7.0))) < 1e-12


@pytest.mark.parametrize("normalization", ["filter", "layer"])
def test_normalized_slices_are_invariant_to_rescaling_raw_ones_are_not(digits64, normalization):
    theta, c = member(SPEC, 0), 7.0
    other = rescaled(SPEC, theta, c)
    xs = ls.slice_grid(11)
    slices = {}
    for norm in (normalization, "none"):
        d = ls.random_direction(SPEC, theta, seed=3, normalization=norm)
        d_other = ls.random_direction(SPEC, other, seed=3, normalization=norm)
        a = ls.slice_1d(SPEC, theta, d, digits64, "cross_entropy", xs, splits=("train",))["train_loss"]
        b = ls.slice_1d(SPEC, other, d_other, digits64, "cross_entropy", xs, splits=("train",))["train_loss"]
        slices[norm] = (a - b).abs().max().item()
    assert slices[normalization] < 1e-10
    assert slices["none"] > 1e-3


def test_filter_normalized_rows_match_the_solution_rows():
    theta = member(SPEC, 1)
    d = unflatten(ls.random_direction(SPEC, theta, seed=0, normalization="filter"), SPEC)
    t = unflatten(theta, SPEC)
    for i in range(SPEC.num_layers):
        w = f"layers.{i}.weight"
        torch.testing.assert_close(d[w][0].norm(dim=1), t[w][0].norm(dim=1), rtol=1e-12, atol=0)
        assert (d[f"layers.{i}.bias"] == 0).all()
    inc = unflatten(ls.random_direction(SPEC, theta, seed=0, normalization="filter", bias_bn="include"), SPEC)
    for i in range(SPEC.num_layers):
        rows = lambda p: torch.cat([p[f"layers.{i}.weight"][0], p[f"layers.{i}.bias"][0].unsqueeze(1)], 1).norm(dim=1)  # noqa: E731
        torch.testing.assert_close(rows(inc), rows(t), rtol=1e-12, atol=0)
    lay = unflatten(ls.random_direction(SPEC, theta, seed=0, normalization="layer"), SPEC)
    torch.testing.assert_close(lay["layers.1.weight"].norm(), t["layers.1.weight"].norm(), rtol=1e-12, atol=0)


def test_directions_are_seeded():
    theta = member(SPEC, 2)
    a = ls.random_directions(SPEC, theta, 2, seed=5)
    assert torch.equal(a, ls.random_directions(SPEC, theta, 2, seed=5))
    assert not torch.equal(a, ls.random_directions(SPEC, theta, 2, seed=6))
    assert not torch.equal(a[0], a[1])
    orth = ls.random_directions(SPEC, theta, 2, seed=5, orthogonalize=True, normalization="none")
    assert abs(orth[0] @ orth[1]) < 1e-10 * orth[0].norm() * orth[1].norm()


def test_slice_origin_is_the_solution_loss(digits64):
    theta = member(SPEC, 0)
    ref_loss, ref_err = evaluate(SPEC, unflatten(theta, SPEC), digits64.x_test, digits64.y_test, "cross_entropy")
    dirs = ls.random_directions(SPEC, theta, 2, seed=0)
    one = ls.slice_1d(SPEC, theta, dirs[0], digits64, "cross_entropy", ls.slice_grid(5))
    two = ls.slice_2d(SPEC, theta, dirs, digits64, "cross_entropy", ls.slice_grid(5), ls.slice_grid(3))
    assert one["test_loss"][2] == ref_loss[0] and one["test_error"][2] == ref_err[0]
    assert two["test_loss"].shape == (5, 3) and two["test_loss"][2, 1] == ref_loss[0]
    # the 1D slice along d1 is the y = 0 column of the 2D slice
    torch.testing.assert_close(two["train_loss"][:, 1], one["train_loss"], rtol=1e-13, atol=0)


def test_batched_grid_equals_a_loop_of_single_evaluations(digits64):
    theta = member(SPEC, 0)
    dirs = ls.random_directions(SPEC, theta, 2, seed=1)
    xs, ys = ls.slice_grid(4, -0.5, 1.0), ls.slice_grid(3)
    grid = ls.slice_2d(SPEC, theta, dirs, digits64, "cross_entropy", xs, ys, batch_points=5, chunk_size=64)
    loss_fn = member_loss_fn(SPEC, digits64.x_train, digits64.y_train, "cross_entropy")
    loop = torch.tensor([[float(loss_fn(theta + a * dirs[0] + b * dirs[1])) for b in ys] for a in xs], dtype=torch.float64)
    torch.testing.assert_close(grid["train_loss"], loop, rtol=1e-12, atol=1e-14)
    alone = ls.slice_2d(SPEC, theta, dirs, digits64, "cross_entropy", xs, ys, batch_points=1)
    torch.testing.assert_close(grid["test_error"], alone["test_error"], rtol=0, atol=1e-15)  # data chunks sum in another order


def test_interpolation_endpoints_and_barrier(digits64):
    theta0, theta1 = member(SPEC, 0), member(SPEC, 1)
    out = ls.interpolate(SPEC, theta0, theta1, digits64, "cross_entropy", ls.interpolation_alphas(41))
    ends, _ = evaluate(SPEC, unflatten(torch.stack([theta0, theta1]), SPEC), digits64.x_train, digits64.y_train, "cross_entropy")
    alpha = out["alpha"]
    i0, i1 = int((alpha == 0).nonzero()), int((alpha == 1).nonzero())
    torch.testing.assert_close(out["train_loss"][[i0, i1]], ends, rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.stack([out["train_loss0"], out["train_loss1"]]), ends, rtol=1e-13, atol=0)
    inside = out["train_loss"][(alpha >= 0) & (alpha <= 1)]
    assert float(out["train_barrier"]) == pytest.approx(float(inside.max() - ends.max()), abs=1e-14)
    assert float(out["train_barrier_linear"]) >= float(out["train_barrier"]) >= 0


def test_barrier_definitions_on_known_curves():
    a = ls.interpolation_alphas(401)
    bump = 1.0 + 0.5 * torch.sin(torch.pi * a).clamp_min(0) * ((a >= 0) & (a <= 1))
    assert ls.barrier_height(a, bump, 1.0, 1.0) == pytest.approx(0.5)
    line = 2.0 - a  # straight descent from 2 to 1: no barrier either way
    assert ls.barrier_height(a, line, 2.0, 1.0) == 0.0 and ls.barrier_height(a, line, 2.0, 1.0, "linear") == pytest.approx(0, abs=1e-15)
    assert ls.is_monotone(a, line) and not ls.is_monotone(a, bump)
    with pytest.raises(ValueError, match="reference"):
        ls.barrier_height(a, line, 2.0, 1.0, "mean")


def test_bad_options_name_the_option():
    theta = member(SPEC, 0)
    with pytest.raises(ValueError, match="normalization"):
        ls.random_direction(SPEC, theta, normalization="unit")
    with pytest.raises(ValueError, match="bias_bn"):
        ls.random_direction(SPEC, theta, bias_bn="keep")


def test_batch_norm_network_slices(digits64):
    spec = MLPSpec(in_dim=64, widths=(6,), out_dim=10, batch_norm=True)
    theta = member(spec, 0)
    for bias_bn in ("zero", "include"):
        d = ls.random_direction(spec, theta, seed=0, bias_bn=bias_bn)
        p = unflatten(d, spec)
        assert (p["layers.0.bn_scale"] == 0).all() == (bias_bn == "zero")
        out = ls.slice_1d(spec, theta, d, digits64, "cross_entropy", ls.slice_grid(3), splits=("train",))
        assert torch.isfinite(out["train_loss"]).all()
