import numpy as np
import pytest
import torch

from surfacekit.config import group_defaults
from surfacekit.data import load_data
from surfacekit.models import MLPSpec
from surfacekit.population import init_population, member_seed
from surfacekit.train import backprop, dtp

SPEC = MLPSpec(64, (12, 10, 8), 10, "tanh", init="orthogonal")
SEEDS = [member_seed(3, k) for k in range(3)]
DTP = group_defaults("trainer", "dtp")
TP = group_defaults("trainer", "tp")


def run(data, seeds, spec=SPEC, epochs=2, batch_size=50, **trainer):
    params = init_population(spec, seeds, data.x_train.dtype)
    cfg = {**DTP, "epochs": epochs, "batch_size": batch_size, **trainer}
    return dtp.train(spec, data, params, seeds, {}, cfg, "cross_entropy", progress=False)


def test_top_hidden_update_is_parallel_to_backprop(digits64):
    params = init_population(SPEC, SEEDS)
    inv = dtp.init_inverses(SPEC, SEEDS, torch.float64, "cpu")
    for correction in (True, False):
        cfg = {**DTP, "difference_correction": correction}
        cos = dtp.cosines(SPEC, params, inv, digits64.x_train[:50], digits64.y_train[:50], "cross_entropy", cfg)
        assert len(cos) == SPEC.num_layers and cos[0].shape == (3,)
        assert (cos[-2] > 0.999).all()  # top hidden layer
        assert (cos[-1] > 0.999999).all()  # output layer: its own gradient
    # below the top, DTP directions are approximate but descent-like even at initialization
    assert (cos[0].abs() < 0.999).all()


def test_target_reduction_sum_equals_mean_times_batch(digits64):
    params = init_population(SPEC, SEEDS[:1])
    inv = dtp.init_inverses(SPEC, SEEDS[:1], torch.float64, "cpu")
    x, y = digits64.x_train[:40], digits64.y_train[:40]
    h = dtp.hiddens(SPEC, params, x)
    a = dtp.targets(SPEC, params, inv, h, y, "cross_entropy", {**DTP, "target_reduction": "sum", "target_step": 0.01})
    b = dtp.targets(SPEC, params, inv, h, y, "cross_entropy", {**DTP, "target_reduction": "mean", "target_step": 0.4})
    for l in a:
        torch.testing.assert_close(a[l], b[l], rtol=1e-12, atol=1e-14)


def test_every_parameter_moves(digits64):
    result = run(digits64, SEEDS[:2], epochs=1)
    moved = {**result.params, **result.aux_params}
    start = {**result.init_params, **result.init_aux_params}
    assert set(result.aux_params) == {f"inverse.{l}.{p}" for l in (2, 3) for p in ("weight", "bias")}
    for name, value in moved.items():
        assert (value - start[name]).flatten(1).abs().amax(dim=1).min() > 1e-6, name
    assert result.extra_curves["cosine_layer2"].shape == result.curves["train_loss"].shape


@pytest.mark.parametrize("schedule", ["passes", "interleaved"])
def test_population_equals_separate_runs(digits64, schedule):
    together = run(digits64, SEEDS, schedule=schedule)
    for k, s in enumerate(SEEDS):
        alone = run(digits64, [s], schedule=schedule)
        for name, value in {**together.params, **together.aux_params}.items():
            other = {**alone.params, **alone.aux_params}[name][0]
            np.testing.assert_allclose(value[k].numpy(), other.numpy(), rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(together.curves["test_loss"][k], alone.curves["test_loss"][0], rtol=1e-10)
        np.testing.assert_allclose(together.extra_curves["cosine_layer0"][k], alone.extra_curves["cosine_layer0"][0],
                                   rtol=0, atol=1e-9)
    assert together.curves["train_loss"][:, -1].std() > 0
    assert (together.curves["train_loss"][:, -1] < together.curves["train_loss"][:, 0]).all()


def test_rejects_batch_norm():
    with pytest.raises(ValueError, match="plain MLP"):
        dtp.check_spec(MLPSpec(64, (8, 8), 10, "tanh", batch_norm=True))


def compare(spec, epochs, seeds, methods=("backprop", "dtp", "tp"), train_size=1000):
    """Mean final test error (percent) per method, float32, batch 100, same architecture and epochs."""
    data = load_data({"name": "digits", "train_size": train_size}).to("cpu", torch.float32)
    common = {"epochs": epochs, "batch_size": 100, "eval_every": epochs}
    bp_opt = {"name": "rmsprop", "lr": 0.001, "alpha": 0.95, "momentum": 0.9, "centered": True, "eps": 1e-3}
    runs = {"backprop": (backprop.train, group_defaults("trainer", "backprop"), bp_opt), "dtp": (dtp.train, DTP, {}),
            "tp": (dtp.train, TP, {})}
    errors = {}
    for name in methods:
        fn, extra, opt = runs[name]
        params = init_population(spec, seeds, torch.float32)
        r = fn(spec, data, params, seeds, opt, {**extra, **common}, "cross_entropy", progress=False)
        errors[name] = 100 * float(r.curves["test_error"][:, -1].mean())
    return errors


def test_difference_correction_matters():
    """Fast: 3 x 64 tanh, 12 epochs, one member: DTP learns, vanilla TP stays far behind."""
    errors = compare(MLPSpec(64, (64,) * 3, 10, "tanh", init="orthogonal"), 12, [member_seed(0, 0)], ("dtp", "tp"))
    assert errors["dtp"] < 6.0, errors
    assert errors["tp"] >= errors["dtp"] + 20, errors


@pytest.mark.slow
def test_dtp_matches_backprop_and_tp_fails_reduced_size():
    """3 x 64 tanh, 20 epochs, 2 members (measured: backprop 2.45, dtp 3.64, tp 71 percent)."""
    errors = compare(MLPSpec(64, (64,) * 3, 10, "tanh", init="orthogonal"), 20, [member_seed(0, k) for k in range(2)])
    assert errors["dtp"] <= errors["backprop"] + 1.5, errors
    assert errors["tp"] >= errors["backprop"] + 20, errors


@pytest.mark.slow
def test_dtp_matches_backprop_and_tp_fails_full_size():
    """The paper's architecture, 7 x 240 tanh, 100 epochs, on digits."""
    errors = compare(MLPSpec(64, (240,) * 7, 10, "tanh", init="orthogonal"), 100, [member_seed(0, 0)])
    assert errors["dtp"] <= errors["backprop"] + 1.5, errors
    assert errors["tp"] >= errors["backprop"] + 20, errors


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_root_rmsprop_equals_torch_rmsprop_with_zero_epsilon(centered, momentum):
    """With eps = 0 the root form (eps inside the root) and torch's (eps outside) coincide."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(6)]
    ours = start.clone()
    opt = dtp.RootRMSprop([ours], decay=0.95, momentum=momentum, eps=0.0, centered=centered)
    ref = start.clone().requires_grad_(True)
    torch_opt = torch.optim.RMSprop([ref], lr=0.01, alpha=0.95, eps=0.0, momentum=momentum, centered=centered)
    for g in grads:
        opt.step([g], 0.01)
        ref.grad = g.clone()
        torch_opt.step()
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-12, atol=1e-14)
    # per-member learning rates [K] equal separate optimizers with those rates
    rates = torch.tensor([0.01, 0.002, 0.03], dtype=torch.float64)
    stacked = start.clone()
    opt = dtp.RootRMSprop([stacked], decay=0.95, momentum=momentum, eps=1e-3, centered=centered)
    singles = [start[k].clone() for k in range(3)]
    single_opts = [dtp.RootRMSprop([singles[k]], 0.95, momentum, 1e-3, centered) for k in range(3)]
    for g in grads:
        opt.step([g], rates)
        for k in range(3):
            single_opts[k].step([g[k]], float(rates[k]))
    torch.testing.assert_close(stacked, torch.stack(singles), rtol=1e-13, atol=0)
