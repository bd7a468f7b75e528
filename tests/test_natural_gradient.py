"""PRONG (whitened layer inputs, function-preserving reparametrisation) and K-FAC's Kronecker factors:
exact invariants, the Gauss-Newton step of a linear layer, independent references, populations."""

import numpy as np
import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.curvature import dense_hessian
from surfacekit.data import load_data
from surfacekit.models import MLPSpec, forward, member_losses, param_name
from surfacekit.objective import objective_fn
from surfacekit.population import flatten, init_population, member_seed
from surfacekit.seeds import stream_generators
from surfacekit.train import kfac, prong

F64 = torch.float64


@pytest.fixture(scope="module")
def teacher():
    """Regression data with Gaussian inputs (a full-rank input covariance): 60 train examples, 5 -> 3."""
    return load_data({"name": "teacher", "train_size": 60, "test_size": 20, "input_dim": 5, "teacher_width": 4,
                      "outputs": 3}).to("cpu", F64)


# ----------------------------------------------------------------------------- PRONG


@pytest.mark.parametrize("activation", ["tanh", "maxout"])
def test_reparametrisation_preserves_the_function_and_whitens(activation, teacher):
    spec = MLPSpec(5, (4, 3), 3, activation)
    k = 2
    whitened = init_population(spec, [1, 2])
    whitening = prong.Whitening.identity(spec, k, F64, "cpu")
    gen = torch.Generator().manual_seed(0)
    gens = stream_generators([11, 12], "statistics")
    for _ in range(3):  # reparametrise, move (V, d) as training would, reparametrise again
        x_stats = prong.statistics_sample(teacher.x_train, 40, gens)  # each member its own 40 examples
        before = forward(spec, prong.canonical(spec, whitened, whitening), teacher.x_train)
        whitened, whitening, valid, change, inputs = prong.reparametrize(spec, whitened, whitening, x_stats,
                                                                          epsilon=0.0)
        assert bool(valid.all())
        after = forward(spec, prong.canonical(spec, whitened, whitening), teacher.x_train)
        assert float((after - before).abs().max()) < 1e-10  # on all data, not only the statistics sample
        assert float(change.max()) < 1e-10
        for i, h in enumerate(inputs):
            u = torch.bmm(h - whitening.centers[i].unsqueeze(1), whitening.matrices[i].transpose(1, 2))
            cov = torch.bmm(u.transpose(1, 2), u) / u.shape[1]
            torch.testing.assert_close(cov, torch.eye(h.shape[2], dtype=F64).expand_as(cov), rtol=0, atol=1e-8)
            torch.testing.assert_close(u.mean(dim=1), torch.zeros_like(u[:, 0]), rtol=0, atol=1e-12)
        whitened = {n: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=F64) for n, v in whitened.items()}
    # 3 examples cannot whiten 5 inputs without epsilon; a member with non-finite activations cannot either:
    # both keep their old parametrisation, flagged invalid
    poisoned = {n: v.clone() for n, v in whitened.items()}
    poisoned["layers.0.weight"][1] = float("inf")
    for x_bad, member in ((teacher.x_train[:3], [0, 1]), (teacher.x_train, [1])):
        new, new_whitening, valid, change, _ = prong.reparametrize(spec, poisoned, whitening, x_bad, epsilon=0.0)
        assert torch.nonzero(~valid).flatten().tolist() == member and torch.isnan(change[member]).all()
        for m in member:
            assert torch.equal(new["layers.0.weight"][m], poisoned["layers.0.weight"][m])
            assert torch.equal(new_whitening.matrices[1][m], whitening.matrices[1][m])


def test_momentum_buffer_keeps_its_canonical_displacement(teacher):
    spec = MLPSpec(5, (4,), 3, "tanh")
    whitened = init_population(spec, [3])
    old = prong.Whitening.identity(spec, 1, F64, "cpu")
    _, middle, _, _, _ = prong.reparametrize(spec, whitened, old, teacher.x_train, 1e-3)
    _, new, _, _, _ = prong.reparametrize(spec, whitened, middle, teacher.x_train[:30], 1e-3)
    gen = torch.Generator().manual_seed(5)
    buffers = {n: torch.randn(v.shape, generator=gen, dtype=F64) for n, v in whitened.items()}

    def displacement(b, w):  # canonical parameters of (V + B) minus those of V: linear in B
        zero = {n: torch.zeros_like(v) for n, v in b.items()}
        one, base = prong.canonical(spec, b, w), prong.canonical(spec, zero, w)
        return {n: one[n] - base[n] for n in one}

    expected = displacement(buffers, middle)
    prong.map_momentum(spec, buffers, middle, new)
    for name, value in displacement(buffers, new).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-12)


def _linear_problem(teacher):
    spec = MLPSpec(5, (), 3)
    params = init_population(spec, [member_seed(0, 0)])
    loss_fn = objective_fn(spec, teacher.x_train, teacher.y_train, "mse", objective="data")
    theta = flatten(params)[0]
    hessian = dense_hessian(loss_fn, theta)  # = the Gauss-Newton matrix: the model is linear in theta
    grad = torch.func.grad(loss_fn)(theta)
    return spec, params, theta, torch.linalg.solve(hessian, grad)


@pytest.mark.parametrize("lr", [0.5, 0.1])
def test_prong_step_of_a_linear_layer_is_a_gauss_newton_step(lr, teacher):
    """T = 1, statistics on the whole batch, epsilon = 0: the Gauss-Newton matrix in (V, d) is 2 I, so one
    SGD step of size lr moves theta by -2 lr G^{-1} g (lr = 1/2: the exact Gauss-Newton step)."""
    spec, params, theta, newton = _linear_problem(teacher)
    cfg = {**group_defaults("trainer", "prong"), "epochs": 1, "batch_size": None, "reparam_every": 1,
           "stats_samples": None, "epsilon": 0.0}
    result = prong.train(spec, teacher, params, [member_seed(0, 0)], {"name": "sgd", "lr": lr, "schedule": "constant"},
                         cfg, "mse", progress=False)
    torch.testing.assert_close(flatten(result.params)[0], theta - 2 * lr * newton, rtol=0, atol=1e-10)


def test_prong_trainer_preserves_the_function_at_every_reparametrisation(digits64):
    spec = MLPSpec(64, (6,), 10, "tanh")
    seeds = [member_seed(7, k) for k in range(2)]
    cfg = {**group_defaults("trainer", "prong"), "epochs": 3, "batch_size": 40, "reparam_every": 3,
           "stats_samples": 100, "epsilon": 1e-3}
    result = prong.train(spec, digits64, init_population(spec, seeds), seeds, {"name": "momentum", "lr": 0.05},
                         cfg, "cross_entropy", progress=False)
    change = result.extra_curves["reparam_change"]
    assert change.shape == (2, 4) and np.isnan(change[:, 0]).all()  # no reparametrisation before training
    assert (change[:, 1:] < 1e-10).all()  # 5 batches per epoch: reparametrised in every epoch
    assert (result.curves["train_loss"][:, -1] < 0.8 * result.curves["train_loss"][:, 0]).all()
    aux = result.aux_params
    assert aux["whitening.0.matrix"].shape == (2, 64, 64) and aux["whitening.1.center"].shape == (2, 6)
    assert torch.equal(result.init_aux_params["whitening.0.matrix"][0], torch.eye(64, dtype=F64))
    # the stored params are the canonical network, whose loss is the recorded one
    loss = member_losses(forward(spec, result.params, digits64.x_train), digits64.y_train, "cross_entropy")
    np.testing.assert_allclose(loss.numpy(), result.curves["train_loss"][:, -1], rtol=1e-12)


@pytest.mark.parametrize("module,optimizer", [(prong, {"name": "momentum", "lr": 0.05}),
                                              (kfac, {"name": "nesterov", "lr": 0.02, "weight_decay": 1e-3})])
def test_population_equals_separate_runs(module, optimizer, digits64):
    spec = MLPSpec(64, (5,), 10, "maxout")
    method = module.__name__.rsplit(".", 1)[-1]
    cfg = {**group_defaults("trainer", method), "epochs": 2, "batch_size": 50, "stats_samples": 80,
           "reparam_every" if method == "prong" else "update_every": 4}
    seeds = [member_seed(8, k) for k in range(3)]
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=F64)

    def run(index):
        members = [seeds[i] for i in index]
        return module.train(spec, digits64, init_population(spec, members), members, optimizer, cfg, "cross_entropy",
                            progress=False, lr_scale=scale[index])

    together = run([0, 1, 2])
    for k in range(3):
        alone = run([k])
        for name, value in together.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[name][0].numpy(), rtol=0, atol=1e-10)
    assert together.curves["train_loss"][:, -1].std() > 0


def test_refusals():
    spec = MLPSpec(64, (5,), 10)
    data = load_data({"name": "digits", "train_size": 50}).to("cpu", F64)
    params = init_population(spec, [1])
    for optimizer in ({"name": "adam"}, {"name": "sgd", "weight_decay": 0.1}):
        with pytest.raises(ValueError, match="trainer=prong takes optimizer"):
            prong.train(spec, data, params, [1], optimizer, group_defaults("trainer", "prong"), "cross_entropy",
                        progress=False)
    with pytest.raises(ValueError, match="predictive distribution"):
        kfac.train(spec, data, params, [1], {"name": "sgd"}, group_defaults("trainer", "kfac"), "hinge", progress=False)
    with pytest.raises(ValueError, match="model.bias=true"):
        prong.check_spec(MLPSpec(64, (5,), 10, bias=False))


# ----------------------------------------------------------------------------- K-FAC


def test_kfac_factor_product_of_a_linear_layer_is_the_gauss_newton_block(teacher):
    spec, params, theta, newton = _linear_problem(teacher)
    (a, g), = kfac.kfac_factors(spec, params, teacher.x_train, "mse", targets="exact")
    torch.testing.assert_close(g[0], 2 * torch.eye(3, dtype=F64), rtol=0, atol=1e-14)
    # /params order is W row by row, then b; [W | b] row by row is the order of G kron A
    rows, cols = 3, 5
    order = [o * cols + j if j < cols else rows * cols + o for o in range(rows) for j in range(cols + 1)]
    loss_fn = objective_fn(spec, teacher.x_train, teacher.y_train, "mse", objective="data")
    hessian = dense_hessian(loss_fn, theta)[order][:, order]
    torch.testing.assert_close(torch.kron(g[0], a[0]), hessian, rtol=1e-12, atol=1e-12)
    # so the preconditioned gradient (vanishing damping) is the Gauss-Newton step
    grad = torch.func.grad(loss_fn)(theta)
    grads = {"layers.0.weight": grad[:15].reshape(1, 3, 5), "layers.0.bias": grad[15:].reshape(1, 3)}
    step = kfac.precondition(spec, grads, kfac.damped_inverses([(a, g)], 1e-24))
    torch.testing.assert_close(flatten(step)[0], newton, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("activation,loss", [("tanh", "cross_entropy"), ("maxout", "mse")])
def test_kfac_factors_match_per_example_jacobians(activation, loss, teacher):
    """A_i = E[a a^T] and G_i = E_n[J_n^T H_z J_n] (J_n = d outputs / d pre-activations of layer i),
    from per-example Jacobians computed independently with torch.func."""
    spec = MLPSpec(5, (4,), 3, activation, maxout_pieces=3)
    params = init_population(spec, [5, 6])
    x = teacher.x_train[:12]
    factors = kfac.kfac_factors(spec, params, x, loss, targets="exact")
    w0, b0 = params["layers.0.weight"], params["layers.0.bias"]
    for k in range(2):
        member = {n: v[k:k + 1] for n, v in params.items()}

        def head(z):  # pre-activations of layer 0 of one example -> outputs
            if activation == "maxout":
                h = z.reshape(4, 3).amax(dim=-1)
            else:
                h = torch.tanh(z)
            return h @ member["layers.1.weight"][0].T + member["layers.1.bias"][0]

        rows = 12 if activation == "maxout" else 4
        g_ref = torch.zeros(rows, rows, dtype=F64)
        g_out = torch.zeros(3, 3, dtype=F64)
        for xn in x:
            z = w0[k] @ xn + b0[k]
            jac = torch.func.jacrev(head)(z)  # [3, rows]
            out = head(z)
            if loss == "mse":
                h_z = 2 * torch.eye(3, dtype=F64)
            else:
                p = torch.softmax(out, dim=0)
                h_z = torch.diag(p) - torch.outer(p, p)
            g_ref += jac.T @ h_z @ jac / 12
            g_out += h_z / 12
        torch.testing.assert_close(factors[0][1][k], g_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(factors[1][1][k], g_out, rtol=1e-12, atol=1e-12)
        a_ref = torch.cat([x, torch.ones(12, 1, dtype=F64)], dim=1)
        torch.testing.assert_close(factors[0][0][k], a_ref.T @ a_ref / 12, rtol=1e-12, atol=1e-12)


def test_sampled_targets_estimate_the_exact_factor(teacher):
    spec = MLPSpec(5, (4,), 3, "tanh")
    params = init_population(spec, [9])
    x = teacher.x_train[:20]
    exact = kfac.kfac_factors(spec, params, x, "cross_entropy", targets="exact")
    gens = stream_generators([4], "noise")
    draws = [kfac.kfac_factors(spec, params, x, "cross_entropy", targets="sampled", generators=gens)
             for _ in range(200)]
    for i in range(2):
        mean = torch.stack([d[i][1] for d in draws]).mean(dim=0)
        error = float((mean - exact[i][1]).norm() / exact[i][1].norm())
        assert error < 0.1, (i, error)  # Monte Carlo: 4000 example draws, about 2% expected
        assert torch.equal(draws[0][i][0], exact[i][0])  # A does not depend on the targets


def test_damped_inverses_follow_factored_tikhonov():
    gen = torch.Generator().manual_seed(2)
    m = torch.randn(2, 6, 4, generator=gen, dtype=F64)
    a = torch.bmm(m.transpose(1, 2), m)  # rank 4 of 4
    n = torch.randn(2, 6, 3, generator=gen, dtype=F64)
    g = torch.bmm(n.transpose(1, 2), n) * 1e-3
    (a_inv, g_inv), = kfac.damped_inverses([(a, g)], damping=1e-2)
    for k in range(2):
        pi = torch.sqrt((torch.trace(a[k]) / 4) / (torch.trace(g[k]) / 3))
        torch.testing.assert_close(a_inv[k], torch.linalg.inv(a[k] + pi * 0.1 * torch.eye(4, dtype=F64)))
        torch.testing.assert_close(g_inv[k], torch.linalg.inv(g[k] + 0.1 / pi * torch.eye(3, dtype=F64)))
    with pytest.raises(ValueError, match="damping"):
        kfac.damped_inverses([(a, g)], 0.0)


def test_kfac_trainer_trains(digits64):
    spec = MLPSpec(64, (8,), 10, "relu")
    seeds = [member_seed(2, k) for k in range(2)]
    cfg = {**group_defaults("trainer", "kfac"), "epochs": 3, "update_every": 5, "stats_samples": 100}
    result = kfac.train(spec, digits64, init_population(spec, seeds), seeds, {"name": "sgd", "lr": 0.02}, cfg,
                        "cross_entropy", progress=False)
    assert (result.curves["train_loss"][:, -1] < 0.6 * result.curves["train_loss"][:, 0]).all()  # 2.9-3.1 -> 1.5
    assert param_name(0, "weight") in result.params


@pytest.mark.parametrize("overrides,message", [
    (["trainer=prong", "optimizer=adam"], "optimizer=adam is invalid: expected sgd, momentum or nesterov with trainer=prong"),
    (["trainer=prong", "optimizer.weight_decay=0.1"], "optimizer.weight_decay=0.1 is invalid: expected 0 with trainer=prong"),
    (["trainer=prong", "model.bias=false"], "model.bias=false is invalid: expected true with trainer=prong"),
    (["trainer=prong", "trainer.epsilon=0"], "trainer.epsilon=0 is invalid: expected a finite number > 0"),
    (["trainer=kfac", "model.loss=hinge"], "model.loss=hinge is invalid: expected cross_entropy or mse with trainer=kfac"),
    (["trainer=kfac", "model.batch_norm=true"], "model.batch_norm=true is invalid: expected false with trainer=kfac"),
    (["trainer=kfac", "trainer.targets=fisher"], "trainer.targets=fisher is invalid"),
])
def test_refused_settings_are_one_line(overrides, message):
    from support import compose_config
    from surfacekit.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides), overrides)


def test_a_member_with_a_huge_learning_rate_diverges_alone(digits64):
    """Its activations blow up: the loss or the whitening (non-finite, or not positive definite in float64)
    fails, the member is frozen and flagged; the others equal their separate runs."""
    spec = MLPSpec(64, (6,), 10, "relu")
    seeds = [member_seed(6, k) for k in range(3)]
    cfg = {**group_defaults("trainer", "prong"), "epochs": 3, "batch_size": 40, "reparam_every": 2,
           "stats_samples": 100}
    opt = {"name": "sgd", "lr": 0.05, "schedule": "constant"}
    scale = torch.tensor([1.0, 1e5, 1.0], dtype=F64)
    result = prong.train(spec, digits64, init_population(spec, seeds), seeds, opt, cfg, "cross_entropy",
                         progress=False, lr_scale=scale)
    assert result.diverged.tolist() == [False, True, False]
    reference = prong.train(spec, digits64, init_population(spec, [seeds[0], seeds[2]]), [seeds[0], seeds[2]], opt,
                            cfg, "cross_entropy", progress=False)
    for name, value in result.params.items():
        np.testing.assert_allclose(value[[0, 2]].numpy(), reference.params[name].numpy(), rtol=0, atol=1e-10)
