import math

import pytest
import torch

from surfacekit import toy
from surfacekit.optim import OPTIMIZERS

NAMES = sorted(toy.SURFACES)


def finite_difference_gradient(loss_fn, theta, h=1e-6):
    g = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        g[i] = (loss_fn(theta + e) - loss_fn(theta - e)) / (2 * h)
    return g


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    fn = toy.surface(name).loss_fn
    gen = torch.Generator().manual_seed(0)
    for theta in 2 * torch.rand(5, 2, generator=gen, dtype=torch.float64) - 1:
        torch.testing.assert_close(toy.gradient(fn, theta), finite_difference_gradient(fn, theta), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_stated_critical_points_have_zero_gradient(name):
    s = toy.surface(name)
    for point in s.minima + s.saddles:
        assert toy.gradient(s.loss_fn, torch.tensor(point, dtype=torch.float64)).norm() < 1e-12, point


@pytest.mark.parametrize("name", NAMES)
def test_minima_and_saddles_have_the_stated_curvature(name):
    s = toy.surface(name)
    for point in s.minima:
        h = torch.autograd.functional.hessian(s.loss_fn, torch.tensor(point, dtype=torch.float64))
        assert torch.linalg.eigvalsh(h).min() > -1e-12  # zero along the hyperbola of the identity network
    for point in s.saddles:
        eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(s.loss_fn, torch.tensor(point, dtype=torch.float64)))
        if name == "monkey":
            assert eig.abs().max() < 1e-12  # degenerate: a third-order saddle
        else:
            assert eig.min() < 0 < eig.max()


def test_two_minima_values():
    s = toy.surface("two_minima")
    r = math.sqrt(1.46)
    # C(r, r) = (1.46 - 1.5)^2 + 0.04 * 2 * 1.46 = 0.0016 + 0.1168
    assert float(s.loss_fn(torch.tensor([r, -r], dtype=torch.float64))) > float(s.loss_fn(torch.tensor([r, r], dtype=torch.float64)))
    assert float(s.loss_fn(torch.tensor([r, r], dtype=torch.float64))) == pytest.approx(0.1184, rel=1e-12)
    batch = s.loss_fn(torch.zeros(3, 4, 2, dtype=torch.float64))
    assert batch.shape == (3, 4) and torch.all(batch == 2.25)


def test_gradient_descent_lr025_decreases_monotonically_lr035_oscillates():
    s = toy.surface("two_minima")
    path, losses = toy.optimize(s.loss_fn, s.start, {"name": "sgd", "lr": 0.25}, steps=400)  # slow: 0.96 per step
    assert path.shape == (401, 2) and losses.shape == (401,)
    assert (losses.diff() <= 1e-14).all()  # monotone up to rounding once converged
    assert toy.gradient(s.loss_fn, path[-1]).norm() < 1e-5
    path, losses = toy.optimize(s.loss_fn, s.start, {"name": "sgd", "lr": 0.35}, steps=150)
    tail = losses[50:]
    assert torch.isfinite(losses).all() and path.abs().max() < 3  # bounded
    assert (tail.diff() > 0).sum() > 20  # the loss keeps going up and down
    steps = path.diff(dim=0)[50:]
    along = steps @ torch.tensor([1.0, 1.0], dtype=torch.float64)  # the stiff direction at the minimum
    assert (along[1:] * along[:-1] < 0).float().mean() > 0.9  # the step flips sign every iteration
    assert float(losses[-1]) > 0.1184 + 0.01  # never settles into the minimum


@pytest.mark.parametrize("name", [*OPTIMIZERS])
def test_every_optimizer_of_the_group_makes_progress(name):
    s = toy.surface("two_minima")
    cfg = next(c for c in toy.TOY_OPTIMIZERS.values() if c["name"] == name)
    path, losses = toy.optimize(s.loss_fn, s.start, cfg, steps=200)
    assert torch.isfinite(losses).all()
    assert float(losses[-1]) < 0.5 * float(losses[0])


def test_newton_converges_to_the_nearest_critical_point_even_a_saddle():
    s = toy.surface("two_minima")
    path, losses = toy.optimize(s.loss_fn, s.start, {"name": "newton"}, steps=30)
    assert torch.allclose(path[-1], torch.full((2,), math.sqrt(1.46), dtype=torch.float64), atol=1e-10)
    path, _ = toy.optimize(s.loss_fn, (-0.4, 2.2), {"name": "newton"}, steps=30)
    assert path[-1].norm() < 1e-10  # attracted to the saddle at the origin
    path, _ = toy.optimize(toy.saddle, (1.5, 0.3), {"name": "newton"}, steps=3)
    assert path[1].norm() < 1e-12  # one exact step onto the saddle of a quadratic


def test_divergence_stops_the_path():
    path, losses = toy.optimize(toy.saddle, (0.0, 1.0), {"name": "sgd", "lr": 0.5}, steps=100, max_norm=1e3)
    assert path.shape == (101, 2) and math.isinf(float(losses[-1])) and torch.isfinite(path).all()


def test_unknown_surface_lists_the_choices():
    with pytest.raises(ValueError, match="two_minima"):
        toy.surface("rosenbrock")


def test_grid_layout():
    xs, ys, z = toy.grid(toy.saddle, (-1, 1, -2, 2), num=5)
    assert z.shape == (5, 5) and float(z[0, 2]) == pytest.approx(-4.0) and float(z[2, 0]) == pytest.approx(1.0)


def test_toy_optimizers_analysis_writes_figure_and_table(tmp_path):
    from analyses import toy_optimizers

    assert toy_optimizers.main(["--steps", "20", "--optimizers", "gd_lr0.25", "newton", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "toy_two_minima_paths.md").read_text()
    assert "gd_lr0.25" in table and "newton" in table
    assert (tmp_path / "toy_two_minima_paths.png").stat().st_size > 0 and (tmp_path / "toy_two_minima_paths.pdf").exists()
