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


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def filter_rows(spec, d, include_bias):
    """Norms [rows] of every filter (weight row, with its bias when included), all layers."""
    p = unflatten(d, spec)
    rows = []
    for i in range(spec.num_layers):
        w = p[f"layers.{i}.weight"][0]
        rows.append(torch.cat([w, p[f"layers.{i}.bias"][0].unsqueeze(1)], 1) if include_bias else w)
    return torch.cat([r.norm(dim=1) for r in rows])


@pytest.mark.parametrize("bias_bn", ["zero", "include"])
@pytest.mark.parametrize("normalization", ["filter", "layer", "none"])
def test_orthogonalized_plane_is_orthogonal_and_normalized(normalization, bias_bn):
    """Issue 22: orthogonalize, then normalize, used to leave cos -3.2e-4 (filter) and -1.8e-5 (layer)."""
    spec = MLPSpec(in_dim=64, widths=(8, 5), out_dim=10)
    theta = member(spec, 4)
    p = unflatten(theta, spec)
    p["layers.0.weight"][0, 3] = 0.0  # a dead unit: a zero filter of theta* gives a zero filter of the direction
    p["layers.1.weight"][0, 1] *= 1e-8  # a tiny filter
    theta = flatten(p)[0]
    plain = ls.random_directions(spec, theta, 2, seed=11, normalization=normalization, bias_bn=bias_bn)
    orth = ls.random_directions(spec, theta, 2, seed=11, normalization=normalization, bias_bn=bias_bn, orthogonalize=True)
    assert abs(cosine(plain[0], plain[1])) > 1e-3  # the test can fail: unorthogonalized directions are not orthogonal
    assert abs(cosine(orth[0], orth[1])) < 1e-12
    assert torch.equal(orth[0], plain[0])  # the first direction is untouched
    for d in orth:  # and both are still normalized as promised
        single = ls.normalize_direction(spec, d, theta, normalization, bias_bn)
        torch.testing.assert_close(single, d, rtol=1e-12, atol=0)
        if normalization == "filter":
            torch.testing.assert_close(filter_rows(spec, d, bias_bn == "include"),
                                       filter_rows(spec, theta, bias_bn == "include"), rtol=1e-12, atol=0)
        if bias_bn == "zero":
            assert (unflatten(d, spec)["layers.1.bias"] == 0).all()


def test_orthogonalized_plane_with_batch_norm_and_three_directions():
    spec = MLPSpec(in_dim=64, widths=(6, 6), out_dim=10, batch_norm=True)
    theta = member(spec, 0)
    dirs = ls.random_directions(spec, theta, 3, seed=2, bias_bn="include", orthogonalize=True)
    gram = dirs @ dirs.T / torch.outer(dirs.norm(dim=1), dirs.norm(dim=1))
    assert (gram - torch.eye(3, dtype=gram.dtype)).abs().max() < 1e-12


def test_orthogonalize_refuses_filters_too_small_to_hold_two_orthogonal_directions():
    spec = MLPSpec(in_dim=1, widths=(4,), out_dim=1)
    theta = member(spec, 0)
    with pytest.raises(ValueError, match="layers.0.weight has filter blocks of 1 entries"):
        ls.random_directions(spec, theta, 2, seed=0, orthogonalize=True)
    both = ls.random_directions(spec, theta, 2, seed=0, orthogonalize=True, bias_bn="include")  # [W_i, b_i]: 2 entries
    assert abs(cosine(both[0], both[1])) < 1e-12


def test_default_seed_is_fresh_and_recorded_explicit_seeds_reproduce():
    """Issue 22: the default seed behaved as seed 0, so a 2D slice of two default directions was a line."""
    theta = member(SPEC, 2)
    a, seed_a = ls.random_direction(SPEC, theta, return_seed=True)
    b, seed_b = ls.random_direction(SPEC, theta, return_seed=True)
    assert seed_a != seed_b and 0 <= seed_a < 2**63
    assert abs(cosine(a, b)) < 0.5  # two independent draws, not one direction twice
    assert torch.equal(ls.random_direction(SPEC, theta, seed=seed_a), a)  # the recorded seed reproduces it
    assert not torch.equal(ls.random_direction(SPEC, theta), ls.random_direction(SPEC, theta))
    dirs, seed = ls.random_directions(SPEC, theta, 2, return_seed=True)
    assert torch.equal(ls.random_directions(SPEC, theta, 2, seed=seed), dirs)
    assert not torch.equal(ls.random_directions(SPEC, theta, 2)[0], dirs[0])
    assert torch.equal(ls.random_directions(SPEC, theta, 2, seed=7), ls.random_directions(SPEC, theta, 2, seed=7))
    assert torch.equal(ls.random_directions(SPEC, theta, 1, seed=7)[0], ls.random_direction(SPEC, theta, seed=7))
    with pytest.raises(ValueError, match="not both"):
        ls.random_direction(SPEC, theta, seed=1, generator=torch.Generator())


def test_progress_counts_every_grid_point(digits64):
    theta = member(SPEC, 0)
    dirs = ls.random_directions(SPEC, theta, 2, seed=0)
    calls = []
    ls.slice_2d(SPEC, theta, dirs, digits64, "cross_entropy", ls.slice_grid(5), ls.slice_grid(3), batch_points=4,
                progress=calls.append)
    assert sum(calls) == 2 * 5 * 3 and len(calls) == 2 * 4 and max(calls) == 4  # two splits, batches of 4 points
    calls.clear()
    ls.interpolate(SPEC, theta, dirs[0], digits64, "cross_entropy", ls.interpolation_alphas(11), splits=("train",),
                   progress=calls.append)
    assert sum(calls) == 11
    calls.clear()
    ls.slice_1d(SPEC, theta, dirs[0], digits64, "cross_entropy", ls.slice_grid(7), splits=("test",), progress=calls.append)
    assert sum(calls) == 7


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
    outside = torch.tensor([-0.5, 1.5], dtype=torch.float64)  # interpolation.num=2: nothing measured in [0, 1]
    for call in (lambda: ls.is_monotone(outside, torch.ones(2)), lambda: ls.barrier_height(outside, torch.ones(2), 1.0, 1.0)):
        with pytest.raises(ValueError, match=r"no interpolation point in \[0, 1\]"):
            call()


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
