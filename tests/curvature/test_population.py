"""Batched curvature of a population: products, dense Hessians (from products and from the affine
first layer's structure) and exact spectra equal the one-member path (dense_hessian + eigvalsh)."""

import math

import pytest
import torch

from surfacekit.curvature import (
    MemoryLimitError, PopulationHessian, affine_input_hessians, dense_bytes, dense_hessian, dense_members,
    dense_spectrum, hessian_vector_product, population_hessians, population_spectrum,
)
from surfacekit.models import MLPSpec, init_statistics
from surfacekit.objective import affine_input, objective_fn, population_objective_fn
from surfacekit.population import flatten, init_population

N, D, C = 23, 6, 3


def data(loss: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    return x, (y if loss != "regression" else torch.randn(N, C, generator=g))


def population(spec: MLPSpec, members: int = 3, seed: int = 0):
    """Stacked points [B, P] away from initialization (so that second-order terms are not small)."""
    thetas = flatten(init_population(spec, [seed + k for k in range(members)], torch.float64))
    g = torch.Generator().manual_seed(seed + 100)
    return thetas + 0.3 * torch.randn(thetas.shape, generator=g)


def statistics(spec: MLPSpec, members: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    stats = init_statistics(spec, members, torch.float64)
    return {n: v + (0.5 * torch.rand(v.shape, generator=g) if n.endswith("var") else 0.3 * torch.randn(v.shape, generator=g))
            for n, v in stats.items()}


OPT = {"name": "sgd", "weight_decay": 0.01}
TRAINER = {"method": "backprop"}
CASES = {
    "tanh": (MLPSpec(D, (4,), C, activation="tanh"), "cross_entropy", {}),
    "relu deep residual": (MLPSpec(D, (6, 6), C, activation="relu", residual=True), "cross_entropy", {}),
    "sigmoid mse": (MLPSpec(D, (5,), C, activation="sigmoid"), "mse", {}),
    "regression targets": (MLPSpec(D, (4,), C, activation="tanh"), "regression", {}),
    "no bias, logistic": (MLPSpec(D, (), C, bias=False), "cross_entropy", {}),
    "weight decay": (MLPSpec(D, (4,), C, activation="tanh"), "cross_entropy",
                     {"objective": "trained", "optimizer_cfg": OPT, "trainer_cfg": TRAINER}),
    "batch norm eval": (MLPSpec(D, (4,), C, activation="tanh", batch_norm=True), "cross_entropy",
                        {"bn_mode": "eval"}),
    "chunked": (MLPSpec(D, (4,), C, activation="tanh"), "cross_entropy", {"chunk_size": 7}),
}


def objective(name: str, members: int = 3):
    spec, loss, kw = CASES[name]
    x, y = data(loss)
    loss = "mse" if loss == "regression" else loss
    kw = {"objective": "data", **kw}
    if kw.get("bn_mode") == "eval":
        kw["statistics"] = statistics(spec, members)
    thetas = population(spec, members)
    return spec, x, y, loss, kw, thetas


def member_loss(spec, x, y, loss, kw, b):
    kw = dict(kw)
    if "statistics" in kw:
        kw["statistics"] = {n: v[b] for n, v in kw["statistics"].items()}
    return objective_fn(spec, x, y, loss, **kw)


def reference_hessians(spec, x, y, loss, kw, thetas):
    return torch.stack([dense_hessian(member_loss(spec, x, y, loss, kw, b), theta) for b, theta in enumerate(thetas)])


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_one_backward_pass_gives_every_members_product(float64):
    spec, x, y, loss, kw, thetas = objective("tanh")
    op = PopulationHessian(population_objective_fn(spec, x, y, loss, **kw), thetas)
    v = torch.randn(thetas.shape, generator=torch.Generator().manual_seed(1))
    out = op(v)
    assert op.num_hvps == 1
    for b in range(len(thetas)):
        single = hessian_vector_product(member_loss(spec, x, y, loss, kw, b), thetas[b], v[b])
        assert relative_error(out[b], single) < 1e-12
    blocks = op(torch.stack([v, 2 * v]))
    assert op.num_hvps == 3 and relative_error(blocks[1], 2 * out) < 1e-12
    losses = population_objective_fn(spec, x, y, loss, **kw)(thetas)
    assert torch.allclose(op.loss, losses, rtol=1e-14)


@pytest.mark.parametrize("name", ["tanh", "relu deep residual", "batch norm eval"])
def test_population_hessians_equal_dense_hessians(float64, name):
    spec, x, y, loss, kw, thetas = objective(name)
    hess = population_hessians(PopulationHessian(population_objective_fn(spec, x, y, loss, **kw), thetas))
    assert relative_error(hess, reference_hessians(spec, x, y, loss, kw, thetas)) < 1e-10
    assert torch.equal(hess, hess.transpose(1, 2))


def test_batch_norm_in_batch_mode_uses_products(float64):
    spec = MLPSpec(D, (4,), C, activation="tanh", batch_norm=True)
    x, y = data("cross_entropy")
    assert affine_input(spec, x, y, "cross_entropy", objective="data", bn_mode="batch") is None  # examples coupled
    thetas = population(spec)
    fn = population_objective_fn(spec, x, y, "cross_entropy", objective="data", bn_mode="batch")
    res = population_spectrum(fn, thetas, 2, 2)
    assert res.assembly == "hvp" and res.passes == thetas.shape[1]
    ref = torch.linalg.eigvalsh(reference_hessians(spec, x, y, "cross_entropy", {"objective": "data"}, thetas))
    assert relative_error(res.spectrum.eigenvalues, ref) < 1e-10


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("workspace", [2**29, 2**12])  # the small one: an example and a row group at a time
def test_affine_input_hessians_equal_dense_hessians(float64, name, workspace):
    spec, x, y, loss, kw, thetas = objective(name)
    structure = affine_input(spec, x, y, loss, **kw)
    hess, passes = affine_input_hessians(structure, thetas, workspace=workspace)
    assert relative_error(hess, reference_hessians(spec, x, y, loss, kw, thetas)) < 1e-10
    assert torch.equal(hess, hess.transpose(1, 2))
    p, first = thetas.shape[1], structure.rows * D
    chunks = math.ceil(N / (kw.get("chunk_size") or N)) if workspace > 2**20 else N
    assert passes == chunks * (p - first + structure.rows)  # no pass per first-layer weight


def test_dense_spectrum_reads_off_eigenvalues(float64):
    rows = torch.tensor([[-1.0, -0.5, -0.5, -0.5, 0.0, 0.0, 1e-7, 2.0, 5.0, 5.0],
                         [-3.0, -2.0, -1e-6, 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0]])
    sp = dense_spectrum(rows, 3, 4)
    assert sp.top.tolist() == [[5.0, 5.0, 2.0], [4.0, 2.0, 1.0]]
    assert sp.top_multiplicity.tolist() == [[2, 2, 1], [1, 1, 4]]  # a cluster cut by k keeps its full size
    assert sp.bottom.tolist() == [[-1.0, -0.5, -0.5, -0.5], [-3.0, -2.0, -1e-6, 0.0]]
    assert sp.bottom_multiplicity.tolist() == [[1, 3, 3, 3], [1, 1, 1, 1]]
    assert sp.top_certificate.tolist() == [1e-7, 1.0] and sp.bottom_certificate.tolist() == [0.0, 1.0]
    # index below -1e-5 max|lambda|: 4 (-1, -0.5 x3) and 2 (-1e-6 is above -4e-5)
    assert sp.index.count.tolist() == [4, 2]
    assert sp.index.threshold.tolist() == pytest.approx([-5e-5, -4e-5])
    assert sp.index.certificate.tolist() == [0.0, -1e-6]
    assert sp.trace.tolist() == pytest.approx([float(rows[0].sum()), float(rows[1].sum())], rel=1e-15)
    with pytest.raises(ValueError, match="top_k=11 is outside 1..P=10"):
        dense_spectrum(rows, 11, 1)


def test_population_spectrum_of_symmetric_points(float64):
    """Members with identical hidden units: repeated eigenvalues, counted with their multiplicities."""
    spec = MLPSpec(D, (4,), C, activation="tanh")
    x, y = data("cross_entropy")
    g = torch.Generator().manual_seed(3)
    thetas = []
    for _ in range(2):
        w1, b1 = torch.randn(1, D, generator=g).expand(4, D), torch.full((4,), 0.2)
        w2, b2 = torch.randn(C, 1, generator=g).expand(C, 4), 0.1 * torch.randn(C, generator=g)
        thetas.append(torch.cat([w1.flatten(), b1, w2.flatten(), b2]))
    thetas = torch.stack(thetas)
    fn = population_objective_fn(spec, x, y, "cross_entropy", objective="data")
    res = population_spectrum(fn, thetas, 6, 6, structure=affine_input(spec, x, y, "cross_entropy", objective="data"))
    ref = torch.linalg.eigvalsh(reference_hessians(spec, x, y, "cross_entropy", {"objective": "data"}, thetas))
    assert relative_error(res.spectrum.eigenvalues, ref) < 1e-10
    for b in range(2):
        tau = -1e-5 * ref[b].abs().max()
        assert int(res.spectrum.index.count[b]) == int((ref[b] < tau).sum())
        scale = float(ref[b].abs().max())
        top = ref[b].flip(0)
        expected = [int(((top - v).abs() <= 1e-10 * scale).sum()) for v in top[:6]]
        assert res.spectrum.top_multiplicity[b].tolist() == expected
    assert int(res.spectrum.top_multiplicity.max()) >= 2  # the symmetry repeats eigenvalues


def test_memory_is_refused_before_allocating(float64):
    spec, x, y, loss, kw, thetas = objective("tanh")
    p = thetas.shape[1]
    fn = population_objective_fn(spec, x, y, loss, **kw)
    with pytest.raises(MemoryLimitError, match=rf"dense spectra of 3 member\(s\) of P = {p}.*needs about"):
        population_spectrum(fn, thetas, 1, 1, memory_limit=dense_bytes(p, 3) - 1)
    assert population_spectrum(fn, thetas, 1, 1, memory_limit=dense_bytes(p, 3)).spectrum.eigenvalues.shape == (3, p)
    assert dense_bytes(p, 3) == 8 * 4 * p * p
    assert dense_members(p, memory_limit=dense_bytes(p) - 1) == 0  # not even one
    assert dense_members(p, memory_limit=dense_bytes(p)) == 1
    assert dense_members(p, memory_limit=2 * dense_bytes(p, 9), wanted=100) == 9  # half of the limit
    assert dense_members(p, memory_limit=2 * dense_bytes(p, 9), wanted=4) == 4
