"""The L-BFGS two-loop recursion against a materialised BFGS inverse and against scipy's product."""

import numpy as np
import torch
from surfacekit.problems import F64
from scipy.optimize import LbfgsInvHessProduct

from surfacekit.critical import two_loop


def pairs_of_a_quadratic(p=8, m=5, seed=0):
    """m curvature pairs (s, y = A s) of an SPD A [p, p] with spread eigenvalues."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, **F64))
    a = q @ torch.diag(torch.logspace(-2, 2, p, **F64)) @ q.T
    s = torch.randn(m, p, generator=gen, **F64)
    return [(s[i], a @ s[i]) for i in range(m)], torch.randn(p, generator=gen, **F64)


def materialised_inverse(pairs, p):
    """H_0 = gamma I (gamma = s^T y / y^T y of the newest pair), then the BFGS inverse update
    H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T for each pair, oldest first (Nocedal and Wright, Eq. 6.17)."""
    s_new, y_new = pairs[-1]
    h = float(s_new @ y_new) / float(y_new @ y_new) * torch.eye(p, **F64)
    eye = torch.eye(p, **F64)
    for s, y in pairs:
        rho = 1.0 / float(y @ s)
        h = (eye - rho * torch.outer(s, y)) @ h @ (eye - rho * torch.outer(y, s)) + rho * torch.outer(s, s)
    return h


def test_two_loop_equals_the_materialised_bfgs_inverse():
    for m in (1, 2, 5, 8):
        pairs, grad = pairs_of_a_quadratic(m=m, seed=m)
        h = materialised_inverse(pairs, 8)
        got = two_loop(grad, pairs)
        assert torch.allclose(got, h @ grad, rtol=1e-12, atol=1e-12 * float((h @ grad).norm()))
        s, y = pairs[-1]  # the secant condition of the newest pair holds exactly
        assert torch.allclose(two_loop(y, pairs), s, rtol=1e-11, atol=1e-11 * float(s.norm()))
    grad = torch.randn(8, generator=torch.Generator().manual_seed(9), **F64)
    assert torch.equal(two_loop(grad, []), grad)  # no pairs: the identity


def test_two_loop_against_scipy():
    # scipy's LbfgsInvHessProduct starts from H_0 = I; scaling every y by gamma gives H_k / gamma.
    pairs, grad = pairs_of_a_quadratic(m=6, seed=3)
    s_new, y_new = pairs[-1]
    gamma = float(s_new @ y_new) / float(y_new @ y_new)
    sk = np.stack([s.numpy() for s, _ in pairs])
    yk = np.stack([gamma * y.numpy() for _, y in pairs])
    expected = gamma * LbfgsInvHessProduct(sk, yk).matvec(grad.numpy())
    np.testing.assert_allclose(two_loop(grad, pairs).numpy(), expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
