"""objective_from_module and layer_spectra: a user's module and data as loss_fn(theta), checked against
the plain module, finite differences and the full Hessian; the module is never modified."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surfacekit
from surfacekit import curvature
from surfacekit.module_objective import layer_spectra, objective_from_module, parameter_groups


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3))


class WithUnusedHead(nn.Module):
    """A CNN with a second head that forward never uses."""

    def __init__(self):
        super().__init__()
        self.body, self.unused = small_cnn(), nn.Linear(3, 3)

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 1, 8, 8, generator=gen)
    y = torch.randint(0, 3, (30,), generator=gen)
    return x, y


@pytest.fixture
def net(data):
    """A float32 CNN with batch norm whose running statistics have moved, left in train mode."""
    net = small_cnn()
    with torch.no_grad():
        net.train()(data[0] * 2 + 1)
    return net


def reference_loss(net, x, y, mode, theta=None):
    """The plain module's full-data loss in float64 (eval: running statistics; batch: train mode on
    all examples at once), optionally at flat parameters theta (all parameters, module order)."""
    ref = copy.deepcopy(net).double()
    if theta is not None:
        torch.nn.utils.vector_to_parameters(theta, ref.parameters())
    ref.train(mode == "batch")
    return F.cross_entropy(ref(x.double()), y)


def reference_gradient(net, x, y, mode, theta):
    ref = copy.deepcopy(net).double().train(mode == "batch")
    torch.nn.utils.vector_to_parameters(theta, ref.parameters())
    loss = F.cross_entropy(ref(x.double()), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(ref.parameters()))])


def snapshot(net):
    return ({k: v.clone() for k, v in net.state_dict().items()}, [p.requires_grad for p in net.parameters()],
            [m.training for m in net.modules()], [p.dtype for p in net.parameters()])


def assert_unchanged(net, before):
    state, flags, training, dtypes = before
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [p.requires_grad for p in net.parameters()] == flags
    assert [m.training for m in net.modules()] == training
    assert [p.dtype for p in net.parameters()] == dtypes


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_value_and_gradient_equal_the_module_and_uneven_batches_weigh_by_size(net, data, mode):
    x, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=7)  # 7, 7, 7, 7, 2
    obj = objective_from_module(net, "cross_entropy", loader, bn_mode=mode)
    assert obj.theta.dtype == torch.float64 and obj.info["num_examples"] == 30 and obj.info["num_batches"] == 5
    torch.testing.assert_close(obj(obj.theta), reference_loss(net, x, y, mode), rtol=1e-13, atol=0)
    theta = obj.theta + 0.1 * torch.randn(obj.theta.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    point = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(obj(point), point)
    torch.testing.assert_close(obj(theta), reference_loss(net, x, y, mode, theta), rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, reference_gradient(net, x, y, mode, theta), rtol=1e-10, atol=1e-13)
    # the unweighted mean of the batch means is a different number: the weighting matters here
    if mode == "eval":
        means = torch.stack([reference_loss(net, xb, yb, mode).detach() for xb, yb in loader])
        assert abs(float(means.mean()) - float(obj(obj.theta).detach())) > 1e-4


@pytest.mark.parametrize("mode", ["eval", "batch"])
def test_dense_hessian_equals_finite_differences_of_the_module_gradient(net, data, mode):
    x, y = data
    obj = objective_from_module(net, "cross_entropy", DataLoader(TensorDataset(x, y), batch_size=8), bn_mode=mode)
    theta = obj.theta
    hess = curvature.dense_hessian(obj, theta)
    h = 1e-5
    eye = torch.eye(len(theta), dtype=torch.float64)
    cols = [(reference_gradient(net, x, y, mode, theta + h * e) - reference_gradient(net, x, y, mode, theta - h * e))
            / (2 * h) for e in eye[:40]]
    fd = torch.stack(cols)
    scale = float(hess.abs().max())
    torch.testing.assert_close(hess[:40], fd, rtol=0, atol=1e-8 * scale)  # measured: 8e-12 (eval), 5e-10 (batch)


def test_the_module_is_never_modified(net, data):
    x, y = data
    net.conv = None  # an attribute that is no module: harmless
    list(net.parameters())[1].requires_grad_(False)  # a frozen bias stays frozen
    before = snapshot(net)
    loader = DataLoader(TensorDataset(x, y), batch_size=9)
    for mode in ("eval", "batch"):
        obj = objective_from_module(net, "cross_entropy", loader, bn_mode=mode)
        curvature.hessian_vector_product(obj, obj.theta, torch.ones_like(obj.theta))
        curvature.extreme_eigenvalues(obj, obj.theta, 1, on_fail="warn")
    layer_spectra(net, "cross_entropy", loader, quantities=("lambda_max",))
    assert_unchanged(net, before)
    assert net.training  # still in train mode, as the user left it
    # what the objective avoids: a plain forward pass in train mode moves the running statistics
    net(x)
    assert not torch.equal(net[1].running_mean, before[0]["1.running_mean"])


def test_selected_parameters_give_the_principal_block_of_the_hessian(net, data):
    obj = objective_from_module(net, "cross_entropy", data)
    full = curvature.dense_hessian(obj, obj.theta)
    names = [n for n, _ in net.named_parameters()]
    sizes = [p.numel() for p in net.parameters()]
    offsets = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist()))
    for params in ("5", ["1.weight", "5"], lambda name, t: name.startswith("5.") or name == "1.weight"):
        sub = objective_from_module(net, "cross_entropy", data, params=params)
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + p.numel()) for n, p in net.named_parameters()
                         if n in sub.names])
        torch.testing.assert_close(sub.theta, obj.theta[idx], rtol=0, atol=0)
        torch.testing.assert_close(curvature.dense_hessian(sub, sub.theta), full[idx][:, idx], rtol=0, atol=1e-12)
    assert objective_from_module(net, "cross_entropy", data, params="5").names == ["5.weight", "5.bias"]
    with pytest.raises(ValueError, match=r"params=\['6'\] match no parameter"):
        objective_from_module(net, "cross_entropy", data, params="6")



def test_a_predicate_sees_the_modules_own_parameters(net, data):
    """PyHessian's choice, the trainable parameters, as a predicate: it is shown the module's tensors."""
    frozen = copy.deepcopy(net)
    frozen[0].weight.requires_grad_(False)  # a frozen first convolution
    trainable = objective_from_module(frozen, "cross_entropy", data, params=lambda name, p: p.requires_grad)
    assert trainable.names == [n for n, p in frozen.named_parameters() if p.requires_grad] and "0.weight" not in trainable.names
    assert objective_from_module(frozen, "cross_entropy", data).names == [n for n, _ in frozen.named_parameters()]
    assert not frozen[0].weight.requires_grad and frozen[5].weight.requires_grad  # untouched


def test_a_loss_not_connected_to_the_selection_raises(data):
    net = WithUnusedHead()
    with pytest.raises(ValueError, match=r"does not depend on the selected parameters \['unused.weight', 'unused.bias'\]"):
        objective_from_module(net, "cross_entropy", data, params="unused")
    with pytest.raises(ValueError, match="does not depend on the selected parameters.*detached"):
        objective_from_module(net, lambda out, batch: F.cross_entropy(out.detach(), batch[1]), data)
    with pytest.warns(UserWarning, match=r"does not depend on the selected parameter\(s\) \['unused.weight', 'unused.bias'\]"):
        objective_from_module(net, "cross_entropy", data)


def test_custom_losses_and_dict_batches(net, data):
    x, y = data
    base = objective_from_module(net, "cross_entropy", data)
    value = base(base.theta)
    dicts = [{"image": x[i:i + 8], "label": y[i:i + 8]} for i in range(0, 30, 8)]
    by_module = objective_from_module(net, nn.CrossEntropyLoss(), dicts, inputs="image", targets="label")
    per_example = objective_from_module(net, lambda out, b: F.cross_entropy(out, b["label"], reduction="none"), dicts,
                                        inputs="image")
    mean_callable = objective_from_module(net, lambda out, b: F.cross_entropy(out, b["label"]), dicts, inputs="image")
    for obj in (by_module, per_example, mean_callable):
        torch.testing.assert_close(obj(obj.theta), value, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="the batches are dicts: pass inputs='KEY'"):
        objective_from_module(net, nn.CrossEntropyLoss(), dicts)
    with pytest.raises(ValueError, match=r"mean loss \(0-d\) or one loss per example \[8\], got \(8, 3\)"):
        objective_from_module(net, lambda out, b: out, dicts, inputs="image")
    with pytest.raises(ValueError, match="reduction='mean'"):
        objective_from_module(net, nn.CrossEntropyLoss(reduction="sum"), data)


def test_data_that_cannot_define_a_full_data_objective_is_refused(net, data):
    x, y = data
    with pytest.raises(TypeError, match="one-shot iterator"):
        objective_from_module(net, "cross_entropy", iter([(x, y)]))
    with pytest.raises(ValueError, match="shuffles and drops its last batch"):
        objective_from_module(net, "cross_entropy", DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True,
                                                               drop_last=True))
    with pytest.raises(ValueError, match="bn_mode='eval' needs running statistics.*track_running_stats=False"):
        objective_from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4, track_running_stats=False)),
                              "cross_entropy", data)
    with pytest.raises(ValueError, match="bn_mode='train' is invalid"):
        objective_from_module(net, "cross_entropy", data, bn_mode="train")
    with pytest.raises(ValueError, match="data hold no examples"):
        objective_from_module(net, "cross_entropy", (data[0][:0], data[1][:0]))


@pytest.mark.parametrize("bn_mode, hvp", [("eval", "batches"), ("eval", "graph"), ("batch", "batches")])
def test_curvature_of_a_float32_objective_is_refused_in_one_line(net, data, bn_mode, hvp):
    single = objective_from_module(net, "cross_entropy", data, dtype=torch.float32, bn_mode=bn_mode, hvp=hvp)
    for routine in (lambda: curvature.index(single, single.theta),
                    lambda: curvature.hessian_vector_product(single, single.theta, torch.ones_like(single.theta))):
        with pytest.raises(ValueError, match=r"^the objective computes in float32 \(objective_from_module\(dtype=...\)\); "
                                             "curvature needs dtype=torch.float64$"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            routine()


def test_explicit_cpu_device_takes_the_same_path(net, data):
    default = objective_from_module(net, "cross_entropy", data)
    cpu = objective_from_module(net, "cross_entropy", data, device="cpu")
    assert cpu.theta.device.type == "cpu" and cpu.info["device"] == "cpu"
    torch.testing.assert_close(cpu(cpu.theta), default(default.theta), rtol=0, atol=0)
    single = objective_from_module(net, "cross_entropy", data, dtype=torch.float32)
    assert single.theta.dtype == torch.float32 and single(single.theta).dtype == torch.float32


def test_a_transformer_block_with_layer_norm_and_dropout(float64):
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=True)
    tokens = torch.randn(12, 5, 8)
    target = torch.randn(12, 5, 8)
    loss = lambda out, batch: (out - batch[1]).pow(2).mean(dim=(1, 2))  # noqa: E731 - per-sequence losses
    obj = objective_from_module(block, loss, [(tokens[:5], target[:5]), (tokens[5:], target[5:])])
    with torch.no_grad():
        expected = (block.eval()(tokens) - target).pow(2).mean()  # dropout off: evaluation mode
    torch.testing.assert_close(obj(obj.theta), expected, rtol=1e-13, atol=0)
    hv = curvature.hessian_vector_product(obj, obj.theta, torch.ones_like(obj.theta))
    assert torch.isfinite(hv).all()


def test_layer_spectra_table_equals_the_blocks_of_the_dense_hessian(net, data):
    obj = objective_from_module(net, "cross_entropy", data)
    full = curvature.dense_hessian(obj, obj.theta)
    table = layer_spectra(net, "cross_entropy", data, trace_probes=400)
    assert list(table["group"]) == ["0", "1", "5"]
    assert table.attrs["bn_mode"] == "eval" and table.attrs["num_examples"] == 30
    start = 0
    for _, row in table.iterrows():
        block = full[start:start + row.num_params, start:start + row.num_params]
        start += row.num_params
        eig = torch.linalg.eigvalsh(block)
        scale = float(eig.abs().max())
        assert abs(row.lambda_max - float(eig[-1])) < 1e-7 * scale
        assert abs(row.lambda_min - float(eig[0])) < 1e-7 * scale
        assert row.index_count == int((eig < row.index_threshold).sum())
        assert abs(row.trace - float(eig.sum())) < 5 * row.trace_stderr + 1e-12
    assert parameter_groups(net, "blocks") == {"0": "0", "1": "1", "5": "5"}
    assert list(parameter_groups(net, "parameters")) == [n for n, _ in net.named_parameters()]
    with pytest.raises(ValueError, match="quantities=\\['spectrum'\\] are unknown"):
        layer_spectra(net, "cross_entropy", data, quantities=("spectrum",))


def test_top_level_entry_point():
    assert surfacekit.objective_from_module is objective_from_module
    assert surfacekit.layer_spectra is layer_spectra


def test_products_a_batch_at_a_time_equal_the_graph_products(net, data):
    from surfacekit.module_objective import BatchHessianOperator

    x, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    by_batch = objective_from_module(net, "cross_entropy", loader)
    graph = objective_from_module(net, "cross_entropy", loader, hvp="graph")
    op = curvature.hessian_operator(by_batch, by_batch.theta)
    assert isinstance(op, BatchHessianOperator) and by_batch.info["hvp"] == "batches"
    assert not isinstance(curvature.hessian_operator(graph, graph.theta), BatchHessianOperator)
    vectors = torch.randn(5, len(by_batch.theta), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = curvature.hessian_operator(graph, graph.theta)(vectors)
    torch.testing.assert_close(op(vectors), expected, rtol=1e-12, atol=1e-14)  # a block of 5
    torch.testing.assert_close(op(vectors[2]), expected[2], rtol=1e-12, atol=1e-14)  # one vector
    assert op.num_hvps == 6
    # batch norm in batch mode couples the batches: the full graph is used, and said so
    coupled = objective_from_module(net, "cross_entropy", loader, bn_mode="batch")
    assert coupled.info["hvp"] == "graph"
    assert not isinstance(curvature.hessian_operator(coupled, coupled.theta), BatchHessianOperator)
    with pytest.raises(ValueError, match="hvp='rows' is invalid"):
        objective_from_module(net, "cross_entropy", loader, hvp="rows")


def test_landscape_and_critical_point_tools_take_the_objective(net, data):
    from surfacekit import critical, landscape

    obj = objective_from_module(net, "cross_entropy", data)
    theta = obj.theta
    d = landscape.random_directions(obj, theta, 2, seed=4)  # filter-normalized against the module's shapes
    conv = obj.unflatten(theta)["0.weight"]
    for direction in d:
        filters = obj.unflatten(direction)["0.weight"]
        torch.testing.assert_close(filters.flatten(1).norm(dim=1), conv.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
        assert float(obj.unflatten(direction)["0.bias"].abs().max()) == 0.0  # biases and norm layers: zero
    grid = landscape.slice_grid(3)
    coords = torch.cartesian_prod(grid, grid)
    plane = landscape.evaluate_loss_fn(obj, theta, d, coords)
    torch.testing.assert_close(plane[4], obj(theta).detach(), rtol=0, atol=0)  # the centre (0, 0)
    other = theta + 0.5 * d[0]
    alphas = landscape.interpolation_alphas(5, 0.0, 1.0)
    path = landscape.evaluate_loss_fn(obj, theta, (other - theta)[None], alphas[:, None])
    torch.testing.assert_close(path[[0, -1]], torch.stack([obj(theta), obj(other)]).detach(), rtol=1e-14, atol=0)
    # a least-squares linear model is a quadratic: Newton-MR reaches its minimum and says so
    torch.manual_seed(0)
    linear = nn.Linear(4, 2)
    x, y = torch.randn(20, 4), torch.randn(20, 2)
    quadratic = objective_from_module(linear, lambda out, batch: (out - batch[1]).pow(2).sum(dim=1), (x, y), chunk_size=6)
    point = critical.find(quadratic, quadratic.theta, "newton_mr")
    assert point.accepted and point.index.count == 0
