"""Tests for surfacekit.spinglass: thresholds, derivatives against autograd and finite differences,
batch/single equivalence, seeding, and the statistics of gradient-descent endpoints."""

import itertools
import math

import numpy as np
import pytest
import torch

from surfacekit import spinglass as sg

# torch.func.hessian loads forward-AD decompositions that still call torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These problems are tiny: one thread avoids OpenMP stalls on a busy machine (10-20x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _setup(n=7, p=3, s=4, seed=0, device="cpu"):
    x = sg.couplings(n, p, seed, device=device)
    w = sg.random_starts(s, n, seed, device=device)
    return x, w


def _tangent(w, seed=1):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device)
    return sg._project(w, v)


# ---------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    "p, e0, einf", [(3, 1.656998, 1.632993), (4, 1.794085, 1.732051)]
)
def test_thresholds_reference_values(p, e0, einf):
    got_e0, got_einf = sg.thresholds(p)
    assert got_einf == pytest.approx(einf, abs=1e-5)
    assert got_e0 == pytest.approx(e0, abs=1e-5)
    assert got_e0 > got_einf > 0
    assert abs(sg.complexity(-got_e0, p)) < 1e-12


@pytest.mark.parametrize("p", [0, 1, 2])
def test_thresholds_reject_small_p(p):
    with pytest.raises(ValueError, match="p must be an integer >= 3"):
        sg.thresholds(p)


def test_complexity_at_threshold_and_domain():
    for p in (3, 4, 5):
        _, einf = sg.thresholds(p)
        assert sg.complexity(-einf, p) == pytest.approx(0.5 * math.log(p - 1) - (p - 2) / p)
        with pytest.raises(ValueError):
            sg.complexity(-einf + 0.1, p)


# ---------------------------------------------------------------- couplings


@pytest.mark.parametrize("p", [3, 4])
def test_symmetrized_tensor_is_symmetric_and_gives_same_energy(p):
    n = 6
    raw = sg.couplings(n, p, 3, symmetric=False)
    sym = sg.couplings(n, p, 3)
    assert torch.equal(sym, sg.symmetrize(raw))
    for perm in itertools.permutations(range(p)):
        torch.testing.assert_close(sym.permute(perm), sym, rtol=0, atol=1e-15)
    w = sg.random_starts(5, n, 3)
    torch.testing.assert_close(sg.energy(raw, w), sg.energy(sym, w), rtol=0, atol=1e-12)
    # the normalization of the model, written out with an explicit sum
    operands = [raw, list(range(p))]
    for i in range(p):
        operands += [w[0], [i]]
    h0 = n ** (-(p - 1) / 2) * torch.einsum(*operands, [])
    torch.testing.assert_close(sg.energy(raw, w[:1])[0], h0, rtol=0, atol=1e-12)


def test_seeds_reproduce_and_differ():
    assert torch.equal(sg.couplings(5, 3, 11), sg.couplings(5, 3, 11))
    assert not torch.equal(sg.couplings(5, 3, 11), sg.couplings(5, 3, 12))
    assert torch.equal(sg.random_starts(4, 5, 11), sg.random_starts(4, 5, 11))
    a = sg.simulate(8, 3, 3, seed=5)
    b = sg.simulate(8, 3, 3, seed=5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("device", DEVICES)
def test_disorder_does_not_depend_on_device(device):
    x = sg.couplings(5, 3, 2, device=device)
    assert x.device.type == device and x.dtype == torch.float64
    torch.testing.assert_close(x.cpu(), sg.couplings(5, 3, 2), rtol=0, atol=0)
    w = sg.random_starts(2, 5, 2, device=device)
    torch.testing.assert_close(
        sg.energy(x, w).cpu(), sg.energy(sg.couplings(5, 3, 2), w.cpu()), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_split_couplings_sum_back(symmetric):
    x = sg.couplings(6, 3, 0, symmetric=symmetric)
    pieces = sg.split_couplings(x, 5, seed=9, symmetric=symmetric)
    assert pieces.shape == (5, 6, 6, 6)
    torch.testing.assert_close(pieces.sum(0) / math.sqrt(5), x, rtol=0, atol=1e-13)
    if symmetric:
        torch.testing.assert_close(pieces.permute(0, 2, 1, 3), pieces, rtol=0, atol=1e-15)


def test_split_couplings_pieces_are_standard_gaussian():
    x = sg.couplings(20, 3, 0, symmetric=False)
    pieces = sg.split_couplings(x, 4, seed=1, symmetric=False).reshape(4, -1)
    assert abs(pieces.mean().item()) < 0.02
    np.testing.assert_allclose(pieces.var(dim=1).numpy(), 1.0, atol=0.05)
    corr = torch.corrcoef(pieces)
    assert (corr - torch.eye(4, dtype=corr.dtype)).abs().max() < 0.05


def test_starts_on_sphere():
    w = sg.random_starts(6, 9, 0)
    torch.testing.assert_close(w.pow(2).sum(-1), torch.full((6,), 9.0, dtype=w.dtype))


def test_chunked_contraction_matches(monkeypatch):
    x, w = _setup(n=6, s=9)
    full = sg.euclidean_gradient(x, w)
    monkeypatch.setattr(sg, "_CHUNK_ELEMENTS", 2 * 36)  # two starts per chunk
    torch.testing.assert_close(sg.euclidean_gradient(x, w), full, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- derivatives


@pytest.mark.parametrize("p", [3, 4])
def test_euclidean_gradient_and_hessian_match_autograd(p):
    x, w = _setup(n=5, p=p, s=3)
    raw = sg.couplings(5, p, 0, symmetric=False)  # autograd through the raw tensor

    def h(v):
        return sg.energy(raw, v.unsqueeze(0))[0]

    for i in range(w.shape[0]):
        g = torch.func.grad(h)(w[i])
        torch.testing.assert_close(sg.euclidean_gradient(x, w[i : i + 1])[0], g, rtol=1e-12, atol=1e-12)
        hess = torch.func.hessian(h)(w[i])
        torch.testing.assert_close(sg.euclidean_hessian(x, w[i : i + 1])[0], hess, rtol=1e-12, atol=1e-12)
    # Euler's identity for a degree-p form
    torch.testing.assert_close((w * sg.euclidean_gradient(x, w)).sum(-1), p * sg.energy(x, w))


@pytest.mark.parametrize("p", [3, 4])
def test_riemannian_gradient_finite_differences_along_retraction(p):
    x, w = _setup(n=8, p=p, s=4)
    v = _tangent(w)
    g = sg.riemannian_gradient(x, w)
    torch.testing.assert_close((g * w).sum(-1), torch.zeros(4, dtype=w.dtype), rtol=0, atol=1e-12)
    t = 1e-5
    fd = (sg.energy(x, sg.retract(w + t * v)) - sg.energy(x, sg.retract(w - t * v))) / (2 * t)
    torch.testing.assert_close((g * v).sum(-1), fd, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("p", [3, 4])
def test_riemannian_hessian_finite_differences_along_retraction(p):
    x, w = _setup(n=8, p=p, s=4)
    v = _tangent(w)
    hess = sg.riemannian_hessian(x, w)
    t = 1e-4
    e0 = sg.energy(x, w)
    ep = sg.energy(x, sg.retract(w + t * v))
    em = sg.energy(x, sg.retract(w - t * v))
    fd = (ep - 2 * e0 + em) / t**2
    quad = torch.einsum("si,sij,sj->s", v, hess, v)
    torch.testing.assert_close(quad, fd, rtol=1e-5, atol=1e-5)
    # the normal direction is a null vector of the matrix
    torch.testing.assert_close(
        (hess @ w.unsqueeze(-1)).squeeze(-1), torch.zeros_like(w), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(hess, hess.transpose(-1, -2), rtol=0, atol=1e-13)


@pytest.mark.parametrize("p", [3, 4])
def test_riemannian_hessian_matches_autograd_of_pullback(p):
    """Metric projection is a second-order retraction, so the Hessian of v -> H(R(w + Q v)) at
    v = 0 equals Q^T Hess_R Q at every point, critical or not."""
    n = 6
    x, w = _setup(n=n, p=p, s=3)
    q = sg.tangent_basis(w)
    tangent = q.transpose(-1, -2) @ sg.riemannian_hessian(x, w) @ q
    for i in range(w.shape[0]):

        def pullback(v, i=i):
            point = sg.retract((w[i] + q[i] @ v).unsqueeze(0))
            return sg.energy(x, point)[0]

        dense = torch.func.hessian(pullback)(torch.zeros(n - 1, dtype=w.dtype))
        torch.testing.assert_close(tangent[i], dense, rtol=1e-10, atol=1e-10)
    eig = sg.hessian_eigenvalues(x, w)
    torch.testing.assert_close(eig, torch.linalg.eigvalsh(tangent), rtol=0, atol=1e-12)


def test_tangent_basis_is_orthonormal_and_tangent():
    w = sg.random_starts(5, 7, 4)
    w[0] = 0.0
    w[0, -1] = math.sqrt(7)  # the pole, where a naive Householder vector vanishes
    w[1] = -w[0]
    q = sg.tangent_basis(w)
    eye = torch.eye(6, dtype=w.dtype).expand(5, 6, 6)
    torch.testing.assert_close(q.transpose(-1, -2) @ q, eye, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        (w.unsqueeze(1) @ q).squeeze(1), torch.zeros(5, 6, dtype=w.dtype), rtol=0, atol=1e-13
    )


def test_index_uses_the_curvature_threshold_convention():
    """The spin glass counts with curvature.count_below: lambda < -rel max|lambda| (a negative absolute
    threshold), the same fields as curvature.index, the same refusal of a non-positive relative one."""
    from surfacekit.curvature import index

    res = sg.simulate(8, 3, 3, seed=2, tol=1e-9)
    x = sg.couplings(8, 3, 2)
    w = sg.gradient_descent(x, sg.random_starts(3, 8, 2), tol=1e-9)["w"]
    eig = sg.hessian_eigenvalues(x, w)
    for s in range(3):
        q = sg.tangent_basis(w[s : s + 1])[0]
        u0 = torch.zeros(7, dtype=torch.float64)
        # the energy pulled back to the tangent space by the retraction: its Hessian at 0 is the Riemannian one
        pullback = lambda u, s=s, q=q: sg.energy(x, sg.retract(w[s : s + 1] + (q @ u)[None]))[0]  # noqa: E731
        ref = index(pullback, u0, method="dense")
        assert res["index"][s] == ref.count == int((eig[s] < res["index_threshold"][s]).sum())
        assert res["index_threshold"][s] == pytest.approx(ref.threshold, rel=1e-6) and ref.threshold < 0
    assert set(res["index_method"]) == {"dense"} and not res["index_at_least"].any()
    assert np.all(res["index_certificate"] >= res["index_threshold"])
    with pytest.raises(ValueError, match="relative_threshold"):
        sg.simulate(8, 3, 2, seed=1, index_rel_threshold=0.0)


# ---------------------------------------------------------------- optimizers


def test_gradient_descent_batch_equals_single():
    x, w0 = _setup(n=12, s=5, seed=2)
    batch = sg.gradient_descent(x, w0, tol=1e-8, max_steps=3000)
    for s in range(5):
        one = sg.gradient_descent(x, w0[s : s + 1], tol=1e-8, max_steps=3000)
        torch.testing.assert_close(one["w"][0], batch["w"][s], rtol=0, atol=1e-12)
        assert one["steps"][0] == batch["steps"][s]
        assert abs(one["energy_per_n"][0] - batch["energy_per_n"][s]) < 1e-12
    assert batch["converged"].all()
    assert len(set(batch["steps"].tolist())) > 1  # starts were frozen at different steps


def test_sgd_batch_equals_single():
    x, w0 = _setup(n=10, s=4, seed=3)
    pieces = sg.split_couplings(x, 3, seed=0)
    batch = sg.stochastic_gradient_descent(pieces, w0, num_steps=200)
    for s in range(4):
        one = sg.stochastic_gradient_descent(pieces, w0[s : s + 1], num_steps=200)
        torch.testing.assert_close(one[0], batch[s], rtol=0, atol=1e-12)


def test_gradient_descent_endpoints_are_minima_in_band():
    res = sg.simulate(25, 3, 24, seed=0)
    assert res["converged"].all()
    assert np.all(res["grad_norm"] < 1e-7)
    assert np.mean(res["index"] == 0) >= 0.9
    # finite-size minima: most lie in [-1.75, -1.25]; N = 25 has a few shallow ones above it
    e = res["energy_per_n"]
    assert np.mean((e > -1.75) & (e < -1.25)) >= 0.9
    assert -1.55 < e.mean() < -1.35
    assert np.all(res["lambda_min"][res["index"] == 0] > -1e-5 * res["lambda_max"][res["index"] == 0])


def test_simulate_sgd_and_result_keys():
    res = sg.simulate(12, 3, 6, seed=1, method="sgd", sgd_steps=300, sgd_tensors=4)
    assert set(res) == {
        "energy_per_n", "grad_norm", "steps", "converged", "sgd_steps",
        "index", "index_fraction", "index_threshold", "index_method", "index_at_least", "index_certificate",
        "lambda_min", "lambda_max",
    }
    assert all(isinstance(v, np.ndarray) and v.shape == (6,) for v in res.values())
    assert res["converged"].all()
    assert np.all(res["index_threshold"] < 0)
    no_index = sg.simulate(12, 3, 2, seed=1, index_max_n=10)
    assert "index" not in no_index
    with pytest.raises(ValueError, match="method"):
        sg.simulate(12, 3, 2, seed=1, method="adam")


@pytest.mark.parametrize("device", DEVICES)
def test_simulate_on_device(device):
    res = sg.simulate(10, 3, 4, seed=0, device=device)
    ref = sg.simulate(10, 3, 4, seed=0)
    np.testing.assert_allclose(res["energy_per_n"], ref["energy_per_n"], rtol=0, atol=1e-10)
