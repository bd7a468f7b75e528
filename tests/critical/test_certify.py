"""converge + certify: minima certified with the dense index, embedded saddles with theirs, and every
way a point fails (diverged, non-smooth, gradient-flat, budget) reported, never certified."""

import math

import pytest
import torch

from surfacekit import transforms
from surfacekit.critical.certify import certify, converge
from surfacekit.curvature import dense_hessian
from surfacekit.models import MLPSpec
from surfacekit.objective import objective_values
from surfacekit.population import flatten, init_population, unflatten

F64 = dict(dtype=torch.float64)


def tanh_problem(wd: float, loss: str = "mse"):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(30, 5, generator=gen, **F64)
    y = torch.randn(30, 3, generator=gen, **F64) if loss == "mse" else (x[:, 0] > 0).long()
    spec = MLPSpec(5, (3,), 3 if loss == "mse" else 2, activation="tanh", init="lecun")
    names = list(init_population(spec, [0]))

    def loss_fn(theta):
        return objective_values(spec, unflatten(theta, spec), x, y, loss, l2={n: wd for n in names})[0]

    return spec, loss_fn, flatten(init_population(spec, [5]))[0]


def test_converge_and_certify_a_minimum_against_dense():
    spec, loss_fn, theta0 = tanh_problem(0.01)
    run = converge(loss_fn, theta0)
    assert run.stop.startswith("lbfgs:target") and run.grad_norm2 <= run.target
    assert run.target == pytest.approx(min(1e-12, 1e-12 * run.start_grad_norm2))
    assert run.loss < run.start_loss and run.distance == pytest.approx(float((run.theta - theta0).norm()))
    cert = certify(loss_fn, run.theta, start_grad_norm2=run.start_grad_norm2)
    eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, run.theta))
    assert cert.certified and cert.classification == "minimum" and cert.reason == ""
    assert cert.index_count == int((eig < -1e-5 * eig.abs().max()).sum()) == 0
    assert cert.lambda_min == pytest.approx(float(eig[0]), rel=1e-6)
    assert cert.lambda_max == pytest.approx(float(eig[-1]), rel=1e-6)
    assert cert.grad_norm2 < 1e-10 and cert.grad_norm2_relative <= 1e-10


def test_newton_phase_finishes_what_lbfgs_leaves():
    _, loss_fn, theta0 = tanh_problem(0.01)
    run = converge(loss_fn, theta0, max_iter=5)
    assert run.stop == "lbfgs:budget newton:target" and run.lbfgs_iterations == 5 and run.num_hvps > 0
    assert run.grad_norm2 <= run.target
    for method in ("trust-krylov", "none"):
        other = converge(loss_fn, theta0, max_iter=5, newton=method)
        assert (other.grad_norm2 <= other.target) == (method != "none")
    with pytest.raises(ValueError, match="newton='bfgs' is invalid"):
        converge(loss_fn, theta0, newton="bfgs")


def test_an_embedded_saddle_is_certified_with_its_dense_index():
    spec, loss_fn, theta0 = tanh_problem(0.01)
    run = converge(loss_fn, theta0, tol=1e-24, rtol=1e-24)
    new = transforms.add_zero_units(spec, unflatten(run.theta, spec), 0, 3)
    names = list(new.params)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=gen, **F64), torch.randn(30, 3, generator=gen, **F64)

    def wide_loss(theta):
        return objective_values(new.spec, unflatten(theta, new.spec), x, y, "mse", l2={n: 0.01 for n in names})[0]

    saddle = flatten(new.params)[0]
    eig = torch.linalg.eigvalsh(dense_hessian(wide_loss, saddle))
    for method in ("dense", "inertia", "lanczos"):
        cert = certify(wide_loss, saddle, index_options={"method": method})
        assert cert.certified and cert.classification == "saddle"
        assert cert.index_count == int((eig < -1e-5 * eig.abs().max()).sum()) and cert.index_count % 3 == 0
        assert cert.lambda_min == pytest.approx(float(eig[0]), rel=1e-8)  # inertia: Lanczos, not the last counted
        assert cert.lambda_max == pytest.approx(float(eig[-1]), rel=1e-8)
        assert math.isnan(cert.grad_norm2_relative)  # no start given: absolute test only


def test_failures_are_classified_and_never_certified():
    # diverged: cross-entropy on separable data without weight decay has no minimum; run to the float64
    # floor (loss 0) the point leaves for infinity and the distance rule catches it ...
    _, loss_fn, theta0 = tanh_problem(0.0, loss="cross_entropy")
    run = converge(loss_fn, theta0, tol=0.0, rtol=0.0, max_iter=3000, newton="none")
    assert run.distance > 5 * float(theta0.norm()) and run.loss < 1e-12
    kw = dict(start_grad_norm2=run.start_grad_norm2, distance=run.distance, start_norm=float(theta0.norm()))
    cert = certify(loss_fn, run.theta, max_distance=5.0, **kw)
    assert not cert.certified and cert.reason == "diverged"
    # ... which is all that stands between such a point and a false certificate (the known limit,
    # documented: the gradient tests pass on the way to infinity, and all curvature vanishes with g)
    assert certify(loss_fn, run.theta, **kw).certified
    # non-smooth: a point the caller knows to lie on a kink is never certified, whatever its gradient
    _, smooth_loss, theta0 = tanh_problem(0.01)
    done = converge(smooth_loss, theta0)
    kink = certify(smooth_loss, done.theta, smooth=False)
    assert not kink.certified and kink.reason == "non-smooth" and kink.index_count == -1
    # gradient-flat: f = x^2 + y^3 at (0, 0.01): g = (0, 3e-4) nearly in the kernel of H = diag(2, 0.06)
    cubic = lambda t: t[0] ** 2 + t[1] ** 3  # noqa: E731
    flat = certify(cubic, torch.tensor([0.0, 0.01], **F64))
    assert flat.reason == "gradient-flat" and flat.flat_ratio == pytest.approx(0.03, rel=1e-6)
    # budget: the same kind of point where H g is not small
    budget = certify(cubic, torch.tensor([0.001, 0.5], **F64))
    assert budget.reason == "budget" and not budget.certified
    # relative test: ||g||^2 below the absolute cutoff but not 1e-10 of the start's
    rel = certify(cubic, torch.tensor([1e-6, 0.0], **F64), start_grad_norm2=1e-10)
    assert not rel.certified and rel.grad_norm2 < 1e-10
    # non-finite
    assert certify(lambda t: (t ** 2).sum() / 0.0, torch.ones(2, **F64)).reason == "diverged"
    with pytest.raises(ValueError, match="must be > 0"):
        certify(cubic, torch.zeros(2, **F64), cutoff=0.0)
