"""task=sharpness: its own file beside the source, joined on (job, member), every measure equal to the
library routine on the trained objective (weight decay included), dense references, the centre of a
coupled job analysed as a member, one-line errors."""

import numpy as np
import pytest
import torch

from surfacekit import store
from surfacekit.curvature import dense_hessian
from surfacekit.flatness import keskar_sharpness, pac_bayes_sigma
from surfacekit.population import flatten
from surfacekit.seeds import derive_seed
from surfacekit.tasks.sharpness import error_function
from support import TINY

FAST = ["sharpness.trace_probes=40", "sharpness.pac_bayes_draws=4", "sharpness.pac_bayes_iterations=6",
        "sharpness.keskar_iterations=5", "progress=false"]


def test_sharpness_file_joins_and_matches_references(run_cli, job_copy):
    sweep = job_copy.parent.parent
    before = store.file_sha256(job_copy)
    out = run_cli("task=sharpness", f"source={sweep}", *FAST)
    assert out.returncode == 0, out.stderr
    (path,) = sweep.glob("analyses/sharpness-*/sharpness.h5")
    assert store.check_results(path) == "analysis" and store.file_sha256(job_copy) == before
    arrays = store.load_group(sweep, "sharpness", job="0")
    members = store.load_members(sweep)
    job = store.load_job(job_copy)
    for k in range(2):
        loss_fn, theta, _ = store.job_objective(job, k)
        hessian = dense_hessian(loss_fn, theta)
        eig = torch.linalg.eigvalsh(hessian).numpy()
        assert arrays["lambda_max"][k] == pytest.approx(eig[-1], rel=1e-8)
        assert abs(arrays["trace"][k] - float(hessian.trace())) < 5 * arrays["trace_stderr"][k]
        t = torch.diag(theta.abs())
        assert arrays["adaptive"][k] == pytest.approx(torch.linalg.eigvalsh(t @ hessian @ t)[-1].item(), rel=1e-8)
        seed = derive_seed(0, k)
        keskar = keskar_sharpness(loss_fn, theta, epsilon=1e-3, iterations=5, seed=seed)
        assert arrays["keskar"][k] == keskar.sharpness and arrays["keskar_iterations"][k] == keskar.iterations
        pac = pac_bayes_sigma(error_function(job, k, "batch"), theta, draws=4, iterations=6, seed=seed)
        assert arrays["pac_bayes_sigma"][k] == pac.sigma and arrays["pac_bayes_flatness"][k] == pac.flatness
    for name, column in (("lambda_max", "sharpness_lambda_max"), ("keskar", "keskar_sharpness"),
                         ("adaptive", "adaptive_sharpness"), ("pac_bayes_sigma", "pac_bayes_sigma")):
        np.testing.assert_array_equal(members[column].to_numpy(), arrays[name])
    assert (members["sharpness_objective"] == "trained").all()
    again = run_cli("task=sharpness", f"source={sweep}", *FAST)
    assert again.returncode == 0 and "1 already analysed with these settings, 0 to do" in again.stdout


def test_weight_decay_is_in_the_measured_objective(run_cli, tmp_path):
    wd = 0.05
    train = run_cli(*TINY, "population.size=1", "model.activation=tanh", "dtype=float64", "trainer.batch_size=null",
                    "trainer.epochs=10", f"optimizer.weight_decay={wd}", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    path = tmp_path / "run" / "results.h5"
    job = store.load_job(path)
    for objective in ("trained", "data"):
        assert run_cli("task=sharpness", f"source={path}", f"objective={objective}", *FAST).returncode == 0
    trained, data = (store.load_group(p, "sharpness") for p in sorted((tmp_path / "run" / "analyses").glob(
        "sharpness-*/sharpness.h5"), key=lambda p: _objective_of(p) != "trained"))
    assert trained["lambda_max"][0] == pytest.approx(data["lambda_max"][0] + wd, rel=1e-8)  # H + wd I
    theta = flatten(job.params)[0]
    assert trained["loss"][0] == pytest.approx(data["loss"][0] + 0.5 * wd * float(theta.pow(2).sum()), rel=1e-12)


def _objective_of(path):
    import h5py

    with h5py.File(path, "r") as f:
        return str(f.attrs["objective"])


def test_centre_of_a_coupled_job_is_analysed(run_cli, tmp_path):
    train = run_cli(*TINY, "trainer.coupling=easgd", "trainer.batch_size=20", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    path = tmp_path / "run" / "results.h5"
    out = run_cli("task=sharpness", f"source={path}", *FAST)
    assert out.returncode == 0, out.stderr
    members = store.load_members(path)
    assert members["is_centre"].tolist() == [False, False, True]
    assert np.isfinite(members["sharpness_lambda_max"]).all() and np.isfinite(members["keskar_sharpness"]).all()
    centre = members[members["is_centre"]].iloc[0]
    assert centre["sharpness_loss"] == pytest.approx(centre["final_train_loss"], rel=1e-5)


def test_regression_job_has_no_pac_bayes_sigma_but_every_other_measure(run_cli, tmp_path):
    train = run_cli(*TINY, "data=teacher", "model.loss=mse", "trainer.batch_size=50", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    path = tmp_path / "run" / "results.h5"
    out = run_cli("task=sharpness", f"source={path}", *FAST)
    assert out.returncode == 0, out.stderr
    assert "PAC-Bayes sigma none (regression targets)" in out.stdout
    arrays = store.load_group(path, "sharpness")
    assert np.isnan(arrays["pac_bayes_sigma"]).all() and (arrays["pac_bayes_evaluations"] == 0).all()
    for name in ("lambda_max", "trace", "keskar", "adaptive"):
        assert np.isfinite(arrays[name]).all() and (arrays[name] > 0).all(), name


def test_bad_settings_are_one_line(run_cli, job_copy):
    out = run_cli("task=sharpness", f"source={job_copy}", "sharpness.keskar_epsilon=0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("surfacekit: error: sharpness.keskar_epsilon=0 is invalid: expected "
                                                   "a finite number > 0")
    out = run_cli("task=sharpness", f"source={job_copy}", "sharpness.members=[9]", *FAST)
    assert out.returncode == 2 and "sharpness.members=[9] is invalid: no member(s) [9]" in out.stderr


def test_summary_says_when_the_pac_bayes_sigma_is_only_a_lower_bound():
    """A network at chance never loses 0.1 accuracy: its sigma is the top of the bracket, not a value."""
    from surfacekit.tasks.sharpness import FIELDS, summary

    arrays = {name: np.ones(3) for name in FIELDS}
    arrays.update(analysed=np.array([True, True, False]), pac_bayes_sigma=np.array([0.3, 1024.0, np.nan]),
                  pac_bayes_sigma_above=np.array([0.31, np.inf, np.nan]), pac_bayes_train_error=np.array([0.01, 0.9, np.nan]))
    text = summary({"sharpness": arrays})
    assert "PAC-Bayes sigma of members [1] is only a lower bound" in text and "1024" in text and "0.9" in text
    arrays["pac_bayes_sigma_above"][1] = 2048.0
    assert "lower bound" not in summary({"sharpness": arrays})


def test_summary_names_members_whose_eigenvalues_did_not_converge():
    from surfacekit.tasks.sharpness import COLUMNS, FIELDS, summary

    arrays = {name: np.ones(2) for name in FIELDS}
    arrays.update(analysed=np.array([True, True]), lambda_max_converged=np.array([True, False]),
                  lambda_max_residual=np.array([1e-9, 0.26]), pac_bayes_sigma_above=np.array([2.0, 2.0]))
    text = summary({"sharpness": arrays})
    assert "lambda_max of members [1] did not converge within sharpness.max_steps (Ritz residual up to 0.26)" in text
    assert "adaptive sharpness" not in text
    assert COLUMNS["lambda_max_converged"] == "sharpness_lambda_max_converged"


def test_a_later_run_on_some_members_keeps_the_others_joined(run_cli, job_copy):
    """load_members fills each member from the newest sharpness analysis that analysed it: a run on
    member 1 alone must not blank member 0's columns from an earlier run on both."""
    sweep = job_copy.parent.parent
    assert run_cli("task=sharpness", f"source={sweep}", *FAST).returncode == 0
    first = store.load_members(sweep)
    one = run_cli("task=sharpness", f"source={sweep}", "sharpness.members=[1]", "sharpness.keskar_iterations=4",
                  *FAST[:-2], "progress=false")
    assert one.returncode == 0, one.stderr
    joined = store.load_members(sweep)
    assert joined["sharpness_lambda_max"][0] == first["sharpness_lambda_max"][0]
    assert np.isfinite(joined["sharpness_lambda_max"]).all()
