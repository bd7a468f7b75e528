import pytest
import torch

from surfacekit.curvature import (
    ConvergenceWarning,
    NotConvergedError,
    extreme_eigenvalues,
    hessian_operator,
    lanczos,
    ritz,
)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_five(problem, which):
    res = extreme_eigenvalues(problem.loss_fn, problem.theta, 5, which, return_vectors=True)
    ref = problem.eigenvalues.flip(0)[:5] if which == "largest" else problem.eigenvalues[:5]
    assert res.converged
    assert ((res.eigenvalues - ref).abs() <= 1e-8 * ref.abs()).all()
    resid = (res.eigenvectors @ problem.hessian - res.eigenvalues[:, None] * res.eigenvectors).norm(dim=1)
    torch.testing.assert_close(resid, res.residuals, rtol=1e-3, atol=1e-12 * ref.abs().max())
    if which == "largest":  # the values; the completion certificate comes on top
        assert res.num_hvps - res.certificate_hvps <= 40


def test_not_converged_is_loud(mlp):
    with pytest.raises(NotConvergedError, match="residual"):
        extreme_eigenvalues(mlp.loss_fn, mlp.theta, 5, "smallest", max_steps=10)
    with pytest.warns(ConvergenceWarning, match="residual"):
        res = extreme_eigenvalues(mlp.loss_fn, mlp.theta, 5, "smallest", max_steps=10, on_fail="warn")
    assert not res.converged and res.num_hvps == 10


def test_restart_small_basis(mlp):
    res = extreme_eigenvalues(mlp.loss_fn, mlp.theta, 3, "largest", max_basis=12)
    assert res.converged
    assert ((res.eigenvalues - mlp.eigenvalues.flip(0)[:3]).abs() <= 1e-8 * mlp.eigenvalues[-1]).all()


def test_lanczos_no_ghosts(mlp):
    """Full reorthogonalization: the basis stays orthonormal and the top Ritz value is not repeated."""
    op = hessian_operator(mlp.loss_fn, mlp.theta)
    v = torch.randn(mlp.theta.numel(), generator=torch.Generator().manual_seed(0))
    res = lanczos(op, v / v.norm(), 80)
    q = res.basis
    assert (q @ q.T - torch.eye(len(q))).abs().max() < 1e-12
    values, _, residuals = ritz(res)
    top = mlp.eigenvalues[-1]
    assert ((values - top).abs() < 1e-6 * top).sum() == 1
    assert abs(values[-1] - top) < 1e-10 * top
