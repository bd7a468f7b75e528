import numpy as np
import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.data import load_data
from surfacekit.models import MLPSpec
from surfacekit.population import init_population, member_seed
from surfacekit.train import backprop, penalty

SPEC = MLPSpec(64, (16, 16), 10, "tanh", init="orthogonal")
SEEDS = [member_seed(4, k) for k in range(2)]
PENALTY = group_defaults("trainer", "penalty")
FAST = {**PENALTY, "stages": 6, "alternations": 3, "w_steps": 5, "z_steps": 5, "refit_steps": 30}


def run(data, seeds=SEEDS, spec=SPEC, **trainer):
    params = init_population(spec, seeds, data.x_train.dtype)
    return penalty.train(spec, data, params, seeds, {}, {**FAST, **trainer}, "cross_entropy", progress=False)


def stage_sequences(result):
    """Per stage, the monitored objective [K, m] in time order (stage start, then W/Z half-steps)."""
    e = result.extra_curves
    out = []
    for s in np.unique(e["stage"][e["phase"] < 2]):
        seq = []
        for i in np.flatnonzero((e["stage"] == s) & (e["phase"] < 2)):
            if e["phase"][i] == 1:
                seq.append(e["objective_w"][:, i])
            seq.append(e["objective"][:, i])
        out.append(np.stack(seq, axis=1))
    return out


@pytest.fixture(scope="module")
def result():
    d = load_data({"name": "digits", "train_size": 200, "test_size": 100}).to("cpu", torch.float64)
    return run(d)


def test_objective_never_increases_within_a_stage(result):
    seqs = stage_sequences(result)
    assert len(seqs) == FAST["stages"]
    for seq in seqs:
        assert seq.shape[1] == 1 + 2 * FAST["alternations"]
        rise = np.diff(seq, axis=1) / np.abs(seq[:, :-1])
        assert rise.max() <= 1e-9, rise.max()
    # and it really decreases
    assert all((seq[:, -1] < seq[:, 0]).all() for seq in seqs[1:])


def test_violation_falls_100x(result):
    e = result.extra_curves
    v = e["violation"]
    first = v[:, np.flatnonzero(e["phase"] == 1)[0]]
    final = v[:, np.flatnonzero(e["phase"] == 1)[-1]]
    assert (first / final > 100).all(), first / final
    assert np.all(np.diff(e["mu"][e["phase"] < 2]) >= 0)
    np.testing.assert_allclose(e["mu"][e["phase"] == 0], 2.0 ** np.arange(FAST["stages"]))


def test_curves_and_refit(result):
    c, e = result.curves, result.extra_curves
    t = c["train_loss"].shape[1]
    for name in ("objective", "objective_w", "violation"):
        assert e[name].shape == (2, t)
    for name in ("mu", "stage", "phase"):
        assert e[name].shape == (t,)
    assert e["phase"][-1] == 2 and e["violation"][:, -1].max() < 1e-20  # codes reset to the forward pass
    assert (c["train_loss"][:, -1] < 0.1 * c["train_loss"][:, 0]).all()
    assert (c["train_error"][:, -1] < 0.05).all()


def test_population_equals_separate_runs(digits64):
    small = {"stages": 2, "alternations": 2}
    together = run(digits64, **small)
    for k, s in enumerate(SEEDS):
        alone = run(digits64, [s], **small)
        for name, value in together.params.items():
            np.testing.assert_allclose(value[k].numpy(), alone.params[name][0].numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(together.extra_curves["objective"][k], alone.extra_curves["objective"][0], rtol=1e-10)


def test_descend_never_increases_any_entry():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 5, generator=gen, dtype=torch.float64)
    hess = a @ a.transpose(1, 2) + 0.01 * torch.eye(5, dtype=torch.float64)
    x0 = torch.randn(3, 5, generator=gen, dtype=torch.float64)

    def energy(ts):
        x = ts[0]
        return torch.stack([0.5 * torch.einsum("ki,kij,kj->k", x, hess, x) + torch.cos(3 * x).sum(-1)])

    values = [energy([x0])[0]]
    x, step = [x0], torch.full((1, 3), 10.0, dtype=torch.float64)
    for _ in range(20):
        x, step, cur = penalty.descend(energy, x, [0], step, 1, 1e-4, 40, 2.0)
        values.append(cur[0])
    values = torch.stack(values)
    assert (values[1:] <= values[:-1]).all() and (values[-1] < values[0]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_collapse_warns(digits64, seed):
    # strong weight decay from a small initialization: weights and codes collapse to constants
    # (outputs' spread ~1e-10, six orders below the cut, for every seed)
    spec = MLPSpec(64, (8, 8), 10, "tanh", init="normal", init_std=0.05)
    with pytest.warns(RuntimeWarning, match="collapsed for members \\[0\\]"):
        run(digits64, [member_seed(seed, 0)], spec=spec, weight_decay=3.0, stages=3, alternations=2)


def test_trained_members_do_not_warn_collapse(digits64):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = run(digits64, stages=2)
    assert (res.curves["train_error"][:, -1] < 0.2).all()


def test_rejects_lr_scale(digits64):
    with pytest.raises(ValueError, match="lr_scale"):
        penalty.train(SPEC, digits64, init_population(SPEC, SEEDS), SEEDS, {}, FAST, "cross_entropy",
                      progress=False, lr_scale=torch.ones(2, dtype=torch.float64))


@pytest.mark.slow
def test_escapes_poor_initialization_where_sgd_stays_at_chance():
    """8 x 32 tanh, N(0, 0.05^2) weights, digits (1000 train): SGD with momentum stays at chance."""
    data = load_data({"name": "digits", "train_size": 1000}).to("cpu", torch.float64)
    spec = MLPSpec(64, (32,) * 8, 10, "tanh", init="normal", init_std=0.05)
    seeds = [member_seed(0, 0)]
    sgd = backprop.train(spec, data, init_population(spec, seeds), seeds, {"name": "momentum", "lr": 0.01, "momentum": 0.9},
                         {**group_defaults("trainer", "backprop"), "epochs": 50, "batch_size": 50, "eval_every": 50},
                         "cross_entropy", progress=False)
    pen = penalty.train(spec, data, init_population(spec, seeds), seeds, {}, {**PENALTY, "stages": 4, "alternations": 3},
                        "cross_entropy", progress=False)
    sgd_loss, pen_loss = sgd.curves["train_loss"][0, -1], pen.curves["train_loss"][0, -1]
    assert sgd_loss > 2.2  # chance: log(10) = 2.303
    assert pen_loss < 1.5 and pen_loss < sgd_loss - 0.8, (sgd_loss, pen_loss)


def stacked_lstsq(u, d, r, weight, mu, wd, decayed):
    """Reference Gauss-Newton step: per member and unit, lstsq of the augmented least-squares problem
    [sqrt(mu/N) d_j * U; sqrt(wd) diag(decayed)] delta = [sqrt(mu/N) r_j; -sqrt(wd) decayed * w_j]."""
    k, n, p = u.shape
    out = torch.empty_like(weight)
    for m in range(k):
        for j in range(weight.shape[1]):
            a = torch.cat([(mu / n) ** 0.5 * d[m, :, j : j + 1] * u[m], wd ** 0.5 * torch.diag(decayed)])
            b = torch.cat([(mu / n) ** 0.5 * r[m, :, j], -(wd ** 0.5) * decayed * weight[m, j]])
            out[m, j] = torch.linalg.lstsq(a, b.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    return out


@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_gauss_newton_direction_equals_lstsq(wd):
    gen = torch.Generator().manual_seed(2)
    k, n, p, out = 2, 40, 6, 3
    inputs = torch.randn(k, n, p - 1, generator=gen, dtype=torch.float64)
    u = torch.cat([inputs, torch.ones(k, n, 1, dtype=torch.float64)], -1)
    weight = torch.randn(k, out, p, generator=gen, dtype=torch.float64)
    post = torch.tanh(u @ weight.transpose(1, 2))
    d = 1 - post * post
    r = torch.randn(k, n, out, generator=gen, dtype=torch.float64)
    decayed = torch.ones(p, dtype=torch.float64)
    decayed[-1] = 0.0  # no weight decay on the bias column
    step = penalty.gauss_newton_direction(u, d, r, weight, 2.0, wd, decayed, damping=0.0)
    torch.testing.assert_close(step, stacked_lstsq(u, d, r, weight, 2.0, wd, decayed), rtol=1e-10, atol=1e-12)


def test_gauss_newton_layer_solves_a_linear_layer_exactly():
    """Linear activation, no damping: one Gauss-Newton step is the exact least-squares fit of the codes.
    (Full-rank inputs: digits has constant pixels, whose normal matrix is singular without damping.)"""
    spec = MLPSpec(8, (5,), 3, "linear")
    params = init_population(spec, SEEDS)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 8, generator=gen, dtype=torch.float64)
    problem = penalty.Problem(spec, x, torch.zeros(200, dtype=torch.int64), "cross_entropy", 0.0)
    codes = [torch.randn(2, 200, 5, generator=gen, dtype=torch.float64)]
    fitted = penalty.gauss_newton_layer(problem, dict(params), codes, 1.0, 0, iterations=1, max_backtracks=5, damping=0.0)
    u = torch.cat([x, torch.ones(200, 1, dtype=torch.float64)], dim=1)
    for m in range(2):
        exact = torch.linalg.lstsq(u, codes[0][m], driver="gelsd").solution.T
        torch.testing.assert_close(fitted["layers.0.weight"][m], exact[:, :-1], rtol=0, atol=1e-8)
        torch.testing.assert_close(fitted["layers.0.bias"][m], exact[:, -1], rtol=0, atol=1e-8)
