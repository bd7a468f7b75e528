"""Fixtures of the curvature tests: problems from :mod:`surfacekit.problems` with dense references,
and float64 as the default dtype inside each test (set and restored here, never at import)."""

import pytest
import torch

from surfacekit.problems import Problem, perturbed_quadratic, trained_digits_mlp


@pytest.fixture(autouse=True)
def _float64_single_thread():
    """Tiny float64 products: threading overhead dominates on small machines."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mlp() -> Problem:
    """Over-parameterized trained digits MLP: P = 610 on 60 examples, many near-zero eigenvalues."""
    loss_fn, theta = trained_digits_mlp(hidden=8, steps=300, n=60, init_scale=0.3, lr=0.02)
    return Problem("mlp610", loss_fn, theta)


@pytest.fixture(scope="session")
def small_mlp() -> Problem:
    """Small MLP (P = 142) for forcing the Lanczos index path against the dense one."""
    loss_fn, theta = trained_digits_mlp(hidden=2, steps=200, n=30, seed=1, init_scale=0.3, lr=0.02)
    return Problem("mlp142", loss_fn, theta)


@pytest.fixture(scope="session", params=["quadratic", "mlp"])
def problem(request, mlp) -> Problem:
    return perturbed_quadratic(120, seed=3) if request.param == "quadratic" else mlp
