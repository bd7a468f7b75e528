"""The minimum-length least-squares Krylov solver against dense pseudo-inverses, on hard inputs."""

import pytest
import torch

from surfacekit.critical import minimum_length_solve
from surfacekit.problems import F64


def symmetric(eigenvalues, seed=0):
    lam = torch.as_tensor(eigenvalues, **F64)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=torch.Generator().manual_seed(seed), **F64))
    a = q @ torch.diag(lam) @ q.T
    return 0.5 * (a + a.T), q, lam


CASES = {  # name: (eigenvalues, kernel component of b)
    "nonsingular indefinite": ([3.0, -2.0, 1.5, -0.7, 1.0, 0.5, -4.0, 2.5], 0.0),
    "singular consistent": ([3.0, -2.0, 1.5, -0.7, 1.0, 0.5, 0.0, 0.0], 0.0),
    "singular inconsistent": ([3.0, -2.0, 1.5, -0.7, 1.0, 0.5, 0.0, 0.0], 0.3),
    "tiny inconsistency": ([3.0, -2.0, 1.5, -0.7, 1.0, 0.5, 0.0, 0.0], 1e-6),
    "repeated and zero": ([2.0] * 6 + [-1.0] * 6 + [0.0] * 8 + [0.5, 7.0], 1.0),
    "clustered": ([1.0 + 1e-9 * i for i in range(10)] + [-3.0, 0.0], 0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_solution_is_the_pseudo_inverse_one(name):
    eigenvalues, kernel = CASES[name]
    a, q, lam = symmetric(eigenvalues)
    gen = torch.Generator().manual_seed(1)
    b = a @ torch.randn(len(lam), generator=gen, **F64)
    null = q[:, lam == 0]
    if null.shape[1]:
        b = b + kernel * null @ torch.randn(null.shape[1], generator=gen, **F64)
    expected = torch.linalg.pinv(a, hermitian=True, rtol=1e-12) @ b
    solve = minimum_length_solve(lambda v: a @ v, b, rtol=1e-12)
    assert solve.converged
    assert (solve.solution - expected).norm() <= 1e-10 * expected.norm()
    residual = float((b - a @ solve.solution).norm())
    assert abs(solve.residual_norm - residual) <= 1e-10 * float(b.norm())
    assert abs(residual - float((null.T @ b).norm())) <= 1e-10 * float(b.norm())  # what is left is b's kernel part
    if kernel:
        assert solve.kernel_dim >= 1
    distinct = len(set(eigenvalues)) - (0 in eigenvalues)  # Krylov dimension of the range part
    assert solve.iterations <= distinct + 2


def test_scaling_the_operator_leaves_the_solution_unchanged():
    a, _, _ = symmetric([3.0, -2.0, 1.5, -0.7, 1.0, 0.5, 0.0, 0.0])
    b = torch.randn(8, generator=torch.Generator().manual_seed(2), **F64)
    ref = minimum_length_solve(lambda v: a @ v, b)
    for c in (1e-9, 1e6):
        scaled = minimum_length_solve(lambda v: c * (a @ v), c * b)
        assert scaled.iterations == ref.iterations and scaled.kernel_dim == ref.kernel_dim
        assert (scaled.solution - ref.solution).norm() <= 1e-12 * ref.solution.norm()


def test_edge_cases():
    a, q, _ = symmetric([3.0, -2.0, 1.5, 0.0])
    solve = minimum_length_solve(lambda v: a @ v, q[:, 0])  # an eigenvector: invariant after one step
    assert solve.iterations == 1 and solve.reason in ("invariant", "residual")
    assert torch.allclose(solve.solution, q[:, 0] / 3.0, atol=1e-14)
    zero = minimum_length_solve(lambda v: torch.zeros_like(v), torch.ones(5, **F64))  # H = 0: x = 0
    assert torch.equal(zero.solution, torch.zeros(5, **F64)) and zero.converged and zero.kernel_dim == 1
    nothing = minimum_length_solve(lambda v: a @ v, torch.zeros(4, **F64))
    assert nothing.reason == "zero_rhs" and nothing.iterations == 0
    capped = minimum_length_solve(lambda v: a @ v, torch.ones(4, **F64), maxiter=1)
    assert capped.iterations == 1 and capped.reason == "maxiter" and not capped.converged
    nan = minimum_length_solve(lambda v: v * float("nan"), torch.ones(4, **F64))
    assert nan.reason == "nonfinite" and not nan.converged and torch.equal(nan.solution, torch.zeros(4, **F64))
    with pytest.raises(ValueError, match="finite"):
        minimum_length_solve(lambda v: v, torch.full((3,), float("inf"), **F64))
    with pytest.raises(ValueError, match="maxiter"):
        minimum_length_solve(lambda v: v, torch.ones(3, **F64), maxiter=0)


def test_least_squares_stop_is_a_least_squares_solution():
    # An inconsistent system stops when ||H r|| <= rtol ||T|| ||r|| (a formula from the Givens
    # rotations); check it on the true residual at loose tolerances, where the stop comes early
    # (equally spaced eigenvalues through 0 are slow: ||H r|| / (||H|| ||r||) was 0.15 after 10
    # steps, 0.011 after 30, and the subspace becomes invariant after 41).
    a, q, lam = symmetric(list(torch.linspace(-5, 5, 40).tolist()) + [0.0] * 5, seed=4)
    b = a @ torch.randn(45, generator=torch.Generator().manual_seed(5), **F64) + q[:, lam == 0].sum(1)
    for rtol in (1e-1, 3e-2):
        solve = minimum_length_solve(lambda v: a @ v, b, rtol=rtol)
        r = b - a @ solve.solution
        assert solve.reason == "least_squares" and solve.iterations < 41
        assert float((a @ r).norm()) <= rtol * float(torch.linalg.matrix_norm(a, 2)) * float(r.norm())


def test_basis_grows_past_its_first_block():
    # P = 300 with a 20-dimensional kernel, inconsistent: about 280 iterations, the basis grows by
    # doubling from 33 rows; the answer is still the pseudo-inverse one.
    lam = torch.cat([torch.linspace(-3, 3, 280, **F64) + 0.01, torch.zeros(20, **F64)])
    a, q, _ = symmetric(lam.tolist(), seed=6)
    b = torch.randn(300, generator=torch.Generator().manual_seed(7), **F64)
    solve = minimum_length_solve(lambda v: a @ v, b, rtol=1e-12)
    expected = torch.linalg.pinv(a, hermitian=True, rtol=1e-12) @ b
    assert solve.converged and solve.iterations > 33
    assert (solve.solution - expected).norm() <= 1e-9 * expected.norm()
