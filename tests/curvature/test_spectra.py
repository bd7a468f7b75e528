"""Every routine on the library of hard spectra (surfacekit.problems), each against dense
eigvalsh of the HVP-assembled Hessian: repeated eigenvalues (x2, x3, x8, x20, x30 at the top, the
bottom and inside the negative tail), clusters split by 1e-10, a zero block of half the dimension, and
networks at symmetric points (a trained net with a unit split into copies; identical hidden units)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from surfacekit import problems
from surfacekit.curvature import extreme_eigenvalues, index, spectral_density
from surfacekit.curvature.clusters import cluster_sizes

DESIGNED = problems.multiplicity_cases() + problems.cluster_cases()


@pytest.fixture(scope="module", params=DESIGNED, ids=lambda c: c.name)
def case(request):
    c = request.param
    return c, c.eigenvalues


@pytest.fixture(scope="module", params=["split", "identical"])
def network(request):
    c = problems.split_network(5) if request.param == "split" else problems.identical_units_network()
    return c, c.eigenvalues


def thresholds(eig: torch.Tensor) -> list[tuple[float | None, float]]:
    """Three thresholds: relative 1e-6 and 1e-3, and an absolute one in the widest gap of the negative spectrum."""
    neg = torch.unique(eig[eig < -1e-3 * eig.abs().max()])
    gaps = neg[1:] - neg[:-1]
    i = int(torch.argmax(gaps))
    return [(None, 1e-6), (None, 1e-3), (float(neg[i] + neg[i + 1]) / 2, 1e-5)]


def check_extreme(c, eig, which):
    res = extreme_eigenvalues(c.loss_fn, c.theta, c.k, which, return_vectors=True)
    ref = eig.flip(0)[: c.k] if which == "largest" else eig[: c.k]
    scale = float(eig.abs().max())
    assert res.converged
    assert (res.eigenvalues - ref).abs().max() <= 1e-8 * scale, (res.eigenvalues, ref)
    gram = res.eigenvectors @ res.eigenvectors.T
    assert (gram - torch.eye(c.k)).abs().max() < 1e-8  # distinct copies, not one vector returned twice
    # the certificate: nothing beyond the k-th value in the complement of the returned vectors
    beyond = res.certificate - float(res.eigenvalues[-1])
    assert (beyond <= 1e-8 * scale) if which == "largest" else (beyond >= -1e-8 * scale)
    # multiplicities as the same clustering of the reference values gives them (with the accuracy the
    # tolerance guarantees: 1e-8 x max(|value|, 1e-6 max|lambda|))
    expected = cluster_sizes(ref, 1e-8 * torch.clamp(ref.abs(), min=1e-6 * scale), 1e-8, 1e-6 * scale)
    assert torch.equal(res.multiplicity, expected)
    return res


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_eigenvalues(case, which):
    c, eig = case
    res = check_extreme(c, eig, which)
    top = eig.flip(0) if which == "largest" else eig
    m = int(cluster_sizes(top[: c.k + 1], torch.zeros(c.k + 1), 1e-8, 1e-6 * float(eig.abs().max()))[0])
    first = res.summary().split(",")[0]
    if m > c.k:  # the whole result is one cluster and more copies exist: shown as (xk+)
        assert first.endswith(f"(x{c.k}+)")
    elif m > 1:
        assert first.endswith(f"(x{m})")


def test_index_dense_and_lanczos(case):
    c, eig = case
    for threshold, relative in thresholds(eig):
        dense = index(c.loss_fn, c.theta, threshold, relative_threshold=relative, method="dense")
        lanc = index(c.loss_fn, c.theta, threshold, relative_threshold=relative, method="lanczos")
        expected = int((eig < dense.threshold).sum())
        assert dense.count == lanc.count == expected, (threshold, relative, dense.count, lanc.count, expected)
        assert math.isclose(lanc.threshold, dense.threshold, rel_tol=1e-9)
        assert not lanc.at_least and lanc.certificate >= lanc.threshold
        # the certificate lies (within its residual) on an eigenvalue at or above the first one not counted
        assert float((eig - lanc.certificate).abs().min()) <= lanc.certificate_residual + 1e-8 * dense.max_abs_eigenvalue
        assert lanc.certificate >= dense.certificate - 1e-8 * dense.max_abs_eigenvalue
        torch.testing.assert_close(lanc.eigenvalues, eig[:expected], rtol=0, atol=1e-8 * dense.max_abs_eigenvalue)


def test_spectral_density(case):
    c, eig = case
    d = spectral_density(c.loss_fn, c.theta, num_probes=10, num_steps=40)
    w1 = wasserstein_distance(d.nodes.flatten().numpy(), eig.numpy(), d.weights.flatten().numpy())
    assert w1 / float(eig[-1] - eig[0]) < 0.02
    assert abs(float(d.nodes.max() - eig[-1])) < 1e-8 * float(eig.abs().max())
    assert abs(float(d.nodes.min() - eig[0])) < 1e-6 * float(eig.abs().max())
    # a repeated eigenvalue carries its multiplicity's share of the weight
    top = float(eig[-1])
    share = float((d.weights * ((d.nodes - top).abs() < 1e-6)).sum(dim=1).mean())
    expected = float(((eig - top).abs() < 1e-6).double().mean())
    assert abs(share - expected) < 3 * math.sqrt(expected * 2 / d.nodes.shape[0]) + 1e-3


def test_symmetric_networks_dense_and_lanczos_agree(network):
    c, eig = network
    for relative in (1e-6, 1e-5, 1e-3):
        dense = index(c.loss_fn, c.theta, relative_threshold=relative, method="dense")
        lanc = index(c.loss_fn, c.theta, relative_threshold=relative, method="lanczos")
        assert dense.count == lanc.count == int((eig < dense.threshold).sum()) > 0
    for which in ("largest", "smallest"):
        check_extreme(c, eig, which)


def test_split_network_is_a_degenerate_saddle(network):
    """The split point is critical and its negative eigenvalue is 4-fold (5 copies): the Lanczos
    count finds every copy, and the summary says so."""
    c, eig = network
    if not c.name.startswith("split"):
        pytest.skip("identical units: not a critical point")
    grad = torch.func.grad(c.loss_fn)(c.theta)
    assert float(grad @ grad) < 1e-15
    res = index(c.loss_fn, c.theta, method="lanczos")
    assert res.count == 4 and res.summary().endswith("(x4)")
    assert res.block > 1  # the block grew after a certificate found a missed copy


@pytest.mark.parametrize("m", [2, 8, 20])
def test_old_single_vector_failure_is_fixed(m):
    """The issue's case: 5 repeated m times at the top; a single start vector returned the next
    distinct value in place of the extra copies, flagged converged."""
    c = problems.designed(f"top x{m}", problems.background(600 - m, [-0.2]) + [5.0] * m, seed=1, k=m + 1)
    res = extreme_eigenvalues(c.loss_fn, c.theta, m + 1, "largest")
    np.testing.assert_allclose(res.eigenvalues.numpy(), [5.0] * m + [4.0], rtol=1e-9)
    assert res.summary() == f"5 (x{m}), 4"
    assert res.converged and res.certificate_hvps > 0 and res.certificate_steps > 0
    # the certificate is an eigenvalue (of the operator without the locked vectors) below the k-th
    assert res.certificate <= 4.0 + 1e-8
    assert float((c.eigenvalues - res.certificate).abs().min()) <= res.certificate_residual + 1e-8
