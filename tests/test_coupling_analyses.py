"""analyses/easgd.py, flatness.py and edge_of_stability.py: the numbers they report against their
inputs (hand-made series and files, tiny real jobs), their outputs beside the source, one-line errors."""

import importlib

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from surfacekit import store
from support import TINY

SCRIPTS = ["easgd", "flatness", "edge_of_stability"]


def script(name):
    return importlib.import_module(f"analyses.{name}")


def one_error_line(capsys, name):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_and_missing_paths(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        script(name).main(["--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {name}")
    assert script(name).main([str(tmp_path / "missing.h5")]) == 2
    assert "no such results file" in one_error_line(capsys, name)
    (tmp_path / "empty").mkdir()
    assert script(name).main([str(tmp_path / "empty")]) == 2
    assert "empty sweep" in one_error_line(capsys, name)


# ------------------------------------------------------------------------------- edge of stability

def test_threshold_factors():
    eos = script("edge_of_stability")
    assert eos.threshold_factor({"name": "sgd"}) == 2
    assert eos.threshold_factor({"name": "momentum", "momentum": 0.9}) == pytest.approx(3.8)
    assert eos.threshold_factor({"name": "nesterov", "momentum": 0.9}) == pytest.approx(3.8 / 2.8)


def test_regimes_of_hand_made_series():
    eos = script("edge_of_stability")
    steps = np.arange(0, 200, 10)
    rising = np.concatenate([np.linspace(0.8, 0.5, 3), np.linspace(0.55, 0.99, 7), 1.0 + 0.03 * (-1.0) ** np.arange(10)])
    loss = np.linspace(1.0, 0.1, 20) + np.where(np.arange(20) == 15, 0.2, 0.0)  # one rise after the edge
    record = eos.member_record(rising, steps, loss, steps)
    assert record["regime"] == "stable to edge" and record["edge_step"] == 90  # r = 0.99 after the dip below 0.9
    late = rising[9 + (20 - 9) // 2:]
    assert record["late_mean"] == pytest.approx(late.mean()) and record["in_target"]
    assert record["loss_rises"] == 1 and record["falls_overall"]
    assert eos.member_record(np.full(20, 1.3), steps, loss, steps)["regime"] == "above the edge at the start"
    assert eos.member_record(np.full(20, 0.97), steps, loss, steps)["regime"] == "at the edge from the start"
    below = eos.member_record(np.full(20, 0.5), steps, loss, steps)
    assert below["regime"] == "below the edge" and not below["in_target"] and np.isnan(below["late_mean"])
    high = eos.member_record(np.concatenate([np.full(5, 0.5), np.full(15, 1.2)]), steps, loss, steps)
    assert high["regime"] == "stable to edge" and not high["in_target"] and high["late_mean"] == pytest.approx(1.2)


def test_edge_of_stability_on_a_tiny_job(run_cli, tmp_path, capsys):
    out = run_cli(*TINY, "model.loss=mse", "model.activation=tanh", "trainer.batch_size=null", "trainer.epochs=40",
                  "trainer.eval_every=5", "trainer.track_sharpness=5", "optimizer.schedule=constant",
                  "population.lr_scale=[1.0,4.0]", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    assert script("edge_of_stability").main([str(tmp_path / "run")]) == 0
    folder = tmp_path / "run" / "analysis" / "edge_of_stability"
    for name in ("ratio_vs_step", "sharpness_vs_step", "loss_vs_step"):
        assert (folder / f"{name}.png").exists() and (folder / f"{name}.pdf").exists()
    table = pd.read_csv(folder / "edge_of_stability.csv")
    assert table["eta"].tolist() == pytest.approx([0.05, 0.2])
    assert table["threshold"].tolist() == pytest.approx([40.0, 10.0])
    tracked = store.load_group(tmp_path / "run", "tracked_sharpness")
    assert table["ratio_start"].tolist() == pytest.approx((tracked["lambda_max"][:, 0] * np.array([0.05, 0.2]) / 2).tolist())
    capsys.readouterr()
    plain = tmp_path / "plain"
    assert run_cli(*TINY, f"hydra.run.dir={plain}").returncode == 0
    assert script("edge_of_stability").main([str(plain)]) == 2
    assert "no /tracked_sharpness" in one_error_line(capsys, "edge_of_stability")


@pytest.mark.slow
def test_the_preset_reaches_the_edge_of_stability(run_cli, tmp_path):
    """The issue's target on one member of experiment=edge_of_stability (gradient descent, eta 0.13,
    800 of the preset's 2500 steps): from below the edge, the late-phase mean of lambda_max eta / 2
    lies in [0.95, 1.10], and the loss rises at least once after the edge while it falls overall."""
    out = run_cli("experiment=edge_of_stability", "population.size=1", "population.lr_scale=[13]", "trainer.epochs=800",
                  "progress=false", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    assert script("edge_of_stability").main([str(tmp_path / "run")]) == 0
    row = pd.read_csv(tmp_path / "run" / "analysis" / "edge_of_stability" / "edge_of_stability.csv").iloc[0]
    assert row["eta"] == pytest.approx(0.13) and row["regime"] == "stable to edge"
    assert 0.95 <= row["late_mean"] <= 1.10 and row["in_target"]
    assert row["loss_rises"] >= 1 and row["falls_overall"] and row["checks_not_converged"] == 0


# ------------------------------------------------------------------------------------- easgd

def test_method_of_a_job():
    easgd = script("easgd")
    case = lambda coupling, beta, optimizer="sgd": {"trainer": {"coupling": coupling, "beta": beta},  # noqa: E731
                                                    "optimizer": {"name": optimizer}}
    assert easgd.method_of(case("easgd", 0.9)) == "EASGD" and easgd.method_of(case("eamsgd", 0.9)) == "EAMSGD"
    assert easgd.method_of(case("averaging", 0.0)) == "averaging"
    assert easgd.method_of(case("easgd", 0.0)) == "SGD" and easgd.method_of(case("eamsgd", 0.0)) == "momentum SGD"
    assert easgd.method_of(case("none", 0.9)) == "SGD"
    assert easgd.method_of(case("none", 0.9, "nesterov")) == "momentum SGD"
    assert easgd.method_of(case("none", 0.9, "momentum")) == "momentum SGD"
    for coupling, optimizer in (("easgd", "adam"), ("easgd", "momentum"), ("averaging", "nesterov")):
        with pytest.raises(easgd.AnalysisError, match=f"optimizer={optimizer}"):
            easgd.method_of(case(coupling, 0.9, optimizer))


def test_easgd_analysis_on_tiny_jobs(run_cli, tmp_path, capsys):
    common = (*TINY, "population.size=3", "trainer.batch_size=25", "trainer.epochs=3", "optimizer.schedule=constant")
    for name, extra in (("c", ["trainer.coupling=easgd", "trainer.tau=2"]), ("m", ["trainer.coupling=eamsgd", "trainer.tau=2"]),
                        ("b", ["trainer.coupling=easgd", "trainer.beta=0"]), ("n", ["trainer.coupling=eamsgd", "trainer.beta=0"])):
        out = run_cli(*common, *extra, f"hydra.run.dir={tmp_path}/sweep/{name}")
        assert out.returncode == 0, out.stderr
    easgd = script("easgd")
    assert easgd.main([str(tmp_path / "sweep")]) == 0
    folder = tmp_path / "sweep" / "analysis" / "easgd"
    summary = pd.read_csv(folder / "summary.csv")
    assert dict(zip(summary["method"], summary["runs"])) == {"SGD": 3, "momentum SGD": 3, "EASGD": 1, "EAMSGD": 1}
    centre = store.load_group(tmp_path / "sweep" / "c", "centre/curves")
    row = summary[summary["method"] == "EASGD"].iloc[0]
    assert row["final_test_error"] == pytest.approx(centre["test_error"][0, -1])
    assert row["gradient_evaluations"] == 3 * 12  # 3 workers x 4 steps per epoch x 3 epochs
    workers = store.load_group(tmp_path / "sweep" / "b", "curves")
    sgd = summary[summary["method"] == "SGD"].iloc[0]
    assert sgd["final_train_loss"] == pytest.approx(workers["train_loss"][:, -1].mean())
    momentum = pd.read_csv(folder / "momentum_effect.csv")
    assert set(momentum["comparison"]) == {"momentum SGD vs SGD", "EAMSGD vs EASGD"}
    for name in ("test_error_vs_steps", "test_error_vs_gradient_evaluations", "train_loss_vs_steps", "spread_vs_tau"):
        assert (folder / f"{name}.png").exists()
    capsys.readouterr()
    assert easgd.main([str(tmp_path / "sweep" / "c")]) == 0  # one job: nothing to compare, said in words
    assert "momentum effect: no pair to compare" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- flatness

def flatness_job(path, lr_scales, batch_size, measures, gaps, seed=0):
    k = len(lr_scales)
    members = {"member": np.arange(k), "seed": np.arange(k) % 2, "lr_scale": np.asarray(lr_scales, dtype=float),
               "diverged": np.zeros(k, dtype=bool), "train_error": np.full(k, 0.1), "test_error": 0.1 + np.asarray(gaps),
               "final_train_loss": np.full(k, 0.3), "final_test_loss": 0.3 + 2 * np.asarray(gaps),
               **{name: np.asarray(values, dtype=float) for name, values in measures.items()}}
    config = yaml.safe_dump({"seed": seed, "optimizer": {"lr": 0.1}, "trainer": {"batch_size": batch_size, "coupling": "none"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_results(path, {"members": members}, {**store.provenance(), "kind": "job", "config": config, "overrides": []})


def test_granulated_kendall_against_hand_computed_values(tmp_path):
    """Two batch sizes x 4 learning rates; lambda_max follows the gap exactly along lr, the trace is
    reversed along batch size, Keskar is noise."""
    flat = script("flatness")
    rng = np.random.default_rng(0)
    lrs = [0.25, 0.5, 1.0, 2.0]
    for j, bs in enumerate((16, 256)):
        gaps = np.array([0.04, 0.03, 0.02, 0.01]) + 0.05 * j
        measures = {"sharpness_lambda_max": 10 * gaps, "sharpness_trace": np.full(4, 5.0 - j),
                    "keskar_sharpness": rng.uniform(1, 2, 4), "adaptive_sharpness": rng.uniform(1, 2, 4),
                    "pac_bayes_flatness": rng.uniform(1, 2, 4)}
        flatness_job(tmp_path / "sweep" / str(j) / "results.h5", lrs, bs, measures, gaps)
    table = flat.networks(tmp_path / "sweep", "s")
    assert flat.varying_axes(table) == ["lr", "batch_size"]
    kendall = flat.kendall_table(table)
    get = lambda m, a: kendall[(kendall["measure"] == m) & (kendall["axis"] == a)].iloc[0]  # noqa: E731
    assert get("sharpness_lambda_max", "lr")["psi"] == pytest.approx(1.0)
    assert get("sharpness_lambda_max", "lr")["groups"] == 2  # one per batch size (and seed)
    # both groups of 4 perfectly ordered: under shuffling P(|psi| = 1) = 2 / 24^2
    assert get("sharpness_lambda_max", "lr")["p_permutation"] < 0.01
    assert get("sharpness_lambda_max", "lr")["verdict"] == "correlates positively"
    assert get("sharpness_trace", "batch_size")["psi"] == pytest.approx(-1.0)
    assert get("sharpness_trace", "batch_size")["groups"] == 4  # one per learning rate and initialization
    # four pairs each reversed: P(|psi| = 1) = 2 / 2^4 under shuffling, so no evidence at 0.05
    assert get("sharpness_trace", "batch_size")["p_permutation"] == pytest.approx(0.125, abs=0.03)
    assert get("sharpness_trace", "batch_size")["verdict"] == "no evidence"
    pooled = stats.kendalltau(table["keskar_sharpness"], table["error_gap"]).statistic
    assert get("keskar_sharpness", "lr")["tau_overall"] == pytest.approx(pooled)
    psi_lr, psi_bs = get("keskar_sharpness", "lr")["psi"], get("keskar_sharpness", "batch_size")["psi"]
    assert get("keskar_sharpness", "lr")["Psi"] == pytest.approx((psi_lr + psi_bs) / 2)


def test_vectorized_kendall_equals_scipy():
    rng = np.random.default_rng(1)
    y = np.array([0.3, 0.1, 0.1, 0.7, 0.5, 0.2])  # with a tie
    x = np.round(rng.normal(size=(50, 6)), 1)  # with ties
    ours = script("flatness").kendall_tau_b(x, y)
    np.testing.assert_allclose(ours, [stats.kendalltau(row, y).statistic for row in x], rtol=1e-12)
    assert np.isnan(script("flatness").kendall_tau_b(np.ones(6), y))


def test_flatness_needs_the_sharpness_task(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    store.write_results(tmp_path / "r" / "results.h5", {"members": {"member": np.arange(2), "diverged": np.zeros(2, bool)}},
                        {**store.provenance(), "kind": "job", "config": "{}", "overrides": []})
    assert script("flatness").main([str(tmp_path / "r")]) == 2
    assert "run surfacekit task=sharpness" in one_error_line(capsys, "flatness")


def test_flatness_without_a_varying_hyperparameter_is_one_line(tmp_path, capsys):
    """A width sweep at one learning rate and batch size: no axis of the granulated coefficient varies."""
    measures = {name: np.arange(1.0, 4.0) for name in ("sharpness_lambda_max", "sharpness_trace", "keskar_sharpness",
                                                        "adaptive_sharpness", "pac_bayes_flatness")}
    for j in range(2):
        flatness_job(tmp_path / "sweep" / str(j) / "results.h5", [1.0, 1.0, 1.0], 50, measures, [0.01, 0.02, 0.03])
    assert script("flatness").main([str(tmp_path / "sweep")]) == 2
    assert "varies among its 6 networks" in one_error_line(capsys, "flatness")


def test_flatness_end_to_end_on_a_tiny_job(run_cli, tmp_path):
    out = run_cli(*TINY, "population.size=4", "population.lr_scale=[0.5,1.0,2.0,4.0]", "trainer.epochs=3",
                  f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    fast = ["sharpness.trace_probes=4", "sharpness.pac_bayes_draws=3", "sharpness.pac_bayes_iterations=3",
            "sharpness.keskar_iterations=2", "progress=false"]
    assert run_cli("task=sharpness", f"source={tmp_path}/run", *fast).returncode == 0
    assert script("flatness").main([str(tmp_path / "run")]) == 0
    folder = tmp_path / "run" / "analysis" / "flatness"
    kendall = pd.read_csv(folder / "kendall.csv")
    assert set(kendall["axis"]) == {"lr"} and len(kendall) == 2 * 5  # error and loss gap x 5 measures
    assert (folder / "measures_vs_gap.png").exists() and (folder / "networks.csv").exists()
