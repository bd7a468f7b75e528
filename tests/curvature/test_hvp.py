import pytest
import torch

from surfacekit.curvature import dense_hessian, hessian_operator, hessian_vector_product


@pytest.mark.parametrize("backend", ["graph", "jvp"])
def test_hvp_matches_dense(problem, backend):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(problem.theta.numel(), generator=g)
    hv = hessian_vector_product(problem.loss_fn, problem.theta, v, backend=backend)
    ref = problem.hessian @ v
    assert hv.dtype == torch.float64
    assert (hv - ref).norm() <= 1e-10 * ref.norm()


@pytest.mark.parametrize("backend", ["graph", "jvp"])
def test_batched_equals_unbatched(problem, backend):
    v = torch.randn(5, problem.theta.numel(), generator=torch.Generator().manual_seed(1))
    op = hessian_operator(problem.loss_fn, problem.theta, backend)
    batched = op(v)
    single = torch.stack([op(u) for u in v])
    assert batched.shape == v.shape
    assert op.num_hvps == 10
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-14 * single.abs().max())


def test_backends_agree(problem):
    v = torch.randn(3, problem.theta.numel(), generator=torch.Generator().manual_seed(2))
    a = hessian_vector_product(problem.loss_fn, problem.theta, v, backend="graph")
    b = hessian_vector_product(problem.loss_fn, problem.theta, v, backend="jvp")
    assert (a - b).norm() <= 1e-11 * a.norm()


@pytest.mark.parametrize("method", ["hvp", "func"])
def test_dense_hessian(problem, method):
    h = dense_hessian(problem.loss_fn, problem.theta, method=method)
    assert (h - problem.hessian).norm() <= 1e-11 * problem.hessian.norm()
    assert torch.equal(h, h.T)


def test_linear_loss_has_zero_hessian():
    c = torch.arange(4.0)
    out = hessian_vector_product(lambda t: c @ t, torch.ones(4), torch.ones(2, 4))
    assert torch.equal(out, torch.zeros(2, 4))


def test_rejects_bad_theta():
    with pytest.raises(ValueError):
        hessian_operator(lambda t: t.sum(), torch.ones(2, 2))


def test_to_scipy_is_the_same_symmetric_operator():
    import numpy as np

    from surfacekit.curvature import hessian_operator

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    a = a + a.T
    op = hessian_operator(lambda t: 0.5 * t @ a @ t + t.sum() ** 3, torch.zeros(7, dtype=torch.float64))
    lin = op.to_scipy()
    v = np.random.default_rng(0).standard_normal(7)
    assert np.allclose(lin.matvec(v), a.numpy() @ v, rtol=0, atol=1e-12)
    assert np.allclose(lin.rmatvec(v), a.numpy() @ v, rtol=0, atol=1e-12)
    assert op.num_hvps == 2
