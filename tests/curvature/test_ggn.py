"""Generalized Gauss-Newton products against dense J^T H_z J references."""

import pytest
import torch

from surfacekit.curvature import dense_hessian, gauss_newton_operator
from surfacekit.models import MLPSpec, forward, member_losses
from surfacekit.population import flatten, init_population, unflatten

F64 = torch.float64


def _net(spec, x, y, loss):
    k = 2
    theta = flatten(init_population(spec, [3, 4])).reshape(-1)
    p = theta.numel() // k

    def outputs(t):
        return forward(spec, unflatten(t.view(k, p), spec), x)

    def output_loss(z):
        return member_losses(z, y, loss).sum()

    return outputs, output_loss, theta


@pytest.mark.parametrize("activation,loss", [("tanh", "cross_entropy"), ("maxout", "mse"), ("relu", "cross_entropy")])
def test_ggn_products_equal_dense_jacobian_reference(activation, loss):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (9,), generator=gen)
    spec = MLPSpec(4, (5,), 3, activation)
    outputs, output_loss, theta = _net(spec, x, y, loss)
    z = outputs(theta)
    jac = torch.func.jacrev(outputs)(theta).reshape(z.numel(), -1)  # [outputs, P]
    h_z = torch.func.hessian(output_loss)(z).reshape(z.numel(), z.numel())
    reference = jac.T @ h_z @ jac
    op = gauss_newton_operator(outputs, output_loss, theta)
    vectors = torch.randn(3, theta.numel(), generator=gen, dtype=F64)
    for v in vectors:
        torch.testing.assert_close(op(v), reference @ v, rtol=1e-12, atol=1e-12)
    assert op.num_products == 3
    # PSD: the members' blocks do not couple (block diagonal), and v^T G v >= 0
    p = theta.numel() // 2
    assert reference[:p, p:].abs().max() == 0
    assert torch.linalg.eigvalsh(reference).min() > -1e-12


def test_ggn_of_a_linear_model_is_its_hessian():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, generator=gen, dtype=F64), torch.randn(12, 2, generator=gen, dtype=F64)
    spec = MLPSpec(3, (), 2)
    outputs, output_loss, theta = _net(spec, x, y, "mse")
    op = gauss_newton_operator(outputs, output_loss, theta)
    ggn = torch.stack([op(e) for e in torch.eye(theta.numel(), dtype=F64)])
    hessian = dense_hessian(lambda t: output_loss(outputs(t)), theta)
    torch.testing.assert_close(ggn, hessian, rtol=1e-12, atol=1e-12)


def test_loss_linear_in_outputs_has_zero_ggn():
    theta = torch.randn(4, dtype=F64)
    op = gauss_newton_operator(lambda t: t * 2.0, lambda z: z.sum(), theta)
    assert torch.equal(op(torch.ones(4, dtype=F64)), torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        op(torch.ones(3, dtype=F64))


def test_float64_policy_and_non_finite_products():
    from surfacekit.curvature import NonFiniteError, PrecisionWarning

    theta = torch.randn(4, dtype=F64)
    with pytest.warns(PrecisionWarning):
        op = gauss_newton_operator(lambda t: t * t, lambda z: z.pow(2).sum(), theta.float())
    assert op(torch.ones(4)).dtype == F64
    with pytest.raises(ValueError, match="float64"):
        gauss_newton_operator(lambda t: t.float(), lambda z: z.pow(2).sum(), theta)
    op = gauss_newton_operator(lambda t: t * t, lambda z: z.pow(2).sum(), theta)
    with pytest.raises(NonFiniteError, match="Gauss-Newton product 1"):
        op(torch.tensor([1.0, float("inf"), 0.0, 0.0], dtype=F64))
