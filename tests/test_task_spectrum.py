"""task=spectrum: its own file beside the source, joined on (job, member), exact against dense,
on the objective that was trained; resumable, skips what is done, one-line errors."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from support import interrupt_after
from surfacekit import store
from surfacekit.curvature import dense_hessian
from surfacekit.population import flatten, member_loss_fn

FAST = ["spectrum.top_k=3", "spectrum.bottom_k=3", "spectrum.trace_probes=4", "spectrum.density_probes=2",
        "spectrum.density_steps=10", "progress=false"]


def dense_eigenvalues(job, k, weight_decay=0.0):
    d = job.data
    data_loss = member_loss_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss)
    hessian = dense_hessian(data_loss, flatten(job.params)[k])
    return torch.linalg.eigvalsh(hessian + weight_decay * torch.eye(len(hessian), dtype=hessian.dtype)).numpy()


def test_spectrum_file_joins_and_matches_dense(run_cli, job_copy):
    sweep = job_copy.parent.parent
    before = store.file_sha256(job_copy)
    out = run_cli("task=spectrum", f"source={sweep}", *FAST)
    assert out.returncode == 0, out.stderr
    files = list(sweep.glob("analyses/spectrum-*/spectrum.h5"))
    assert len(files) == 1 and store.check_results(files[0]) == "analysis"
    assert store.file_sha256(job_copy) == before  # the training file is never modified
    arrays = store.load_group(sweep, "spectrum", job="0")
    job = store.load_job(job_copy)
    for k in range(2):
        eig = dense_eigenvalues(job, k)
        np.testing.assert_allclose(arrays["top"][k], eig[::-1][:3], rtol=1e-8)
        np.testing.assert_allclose(arrays["bottom"][k], eig[:3], rtol=1e-8, atol=1e-10 * eig.max())
        tau = -1e-5 * np.abs(eig).max()
        assert arrays["index_count"][k] == int((eig < tau).sum())
        assert arrays["index_threshold"][k] == pytest.approx(tau)
    members = store.load_members(sweep)
    assert (members["lambda_max"] == arrays["top"][:, 0]).all()
    assert (members["spectrum_objective"] == "trained").all() and (members["spectrum_bn_mode"] == "batch").all()
    # rerun with the same settings: nothing recomputed, the file is kept
    stamp = store.file_sha256(files[0])
    again = run_cli("task=spectrum", f"source={sweep}", *FAST)
    assert again.returncode == 0 and "1 already analysed with these settings, 0 to do" in again.stdout
    assert store.file_sha256(files[0]) == stamp


def test_member_selection_and_bad_ids(run_cli, job_copy):
    out = run_cli("task=spectrum", f"source={job_copy}", "spectrum.members=[1]", *FAST)
    assert out.returncode == 0, out.stderr
    spectrum = store.load_group(job_copy, "spectrum")
    assert spectrum["analysed"].tolist() == [False, True]
    assert np.isnan(spectrum["top"][0]).all() and np.isfinite(spectrum["top"][1]).all()
    assert np.isnan(store.load_members(job_copy)["lambda_max"][0])
    bad = run_cli("task=spectrum", f"source={job_copy}", "spectrum.members=[7]", *FAST)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("surfacekit: error: spectrum: 1 source job(s) not analysed")
    assert "spectrum.members=[7] is invalid: no member(s) [7]" in bad.stderr


def test_interrupted_spectrum_resumes_to_the_same_numbers(run_cli, job_copy, monkeypatch):
    from surfacekit.tasks import spectrum

    one = ["spectrum.relative_threshold=2e-5", "spectrum.batch_size=1"]  # one member per unit
    reference = run_cli("task=spectrum", f"source={job_copy}", *FAST, *one)
    assert reference.returncode == 0
    expected = store.load_group(job_copy, "spectrum")
    for path in job_copy.parent.glob("analyses/*"):
        import shutil

        shutil.rmtree(path)
    interrupt_after(monkeypatch, spectrum.TASK, "compute", 1)
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, *one)
    assert out.returncode == 130
    assert len(list(job_copy.parent.glob("analyses/spectrum-*/parts/*/*.npz"))) == 1
    monkeypatch.undo()
    resumed = run_cli("task=spectrum", f"source={job_copy}", *FAST, *one)
    assert resumed.returncode == 0 and "1 finished earlier" in resumed.stdout
    got = store.load_group(job_copy, "spectrum")
    for key in ("top", "bottom", "index_count", "trace", "density_nodes"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert not list(job_copy.parent.glob("analyses/spectrum-*/parts/*/*.npz"))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_trained_objective_includes_weight_decay(run_cli, tmp_path, optimizer):
    wd = 0.01
    train = run_cli("population.size=1", "model.width=4", "model.activation=tanh", "data.train_size=100", "dtype=float64",
                    "trainer.batch_size=null", "trainer.epochs=20", f"optimizer={optimizer}", f"optimizer.weight_decay={wd}",
                    "optimizer.schedule=constant", "progress=false", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    path = tmp_path / "run" / "results.h5"
    job = store.load_job(path)
    for objective, shift in (("trained", wd), ("data", 0.0)):
        out = run_cli("task=spectrum", f"source={path}", f"objective={objective}", *FAST)
        assert out.returncode == 0, out.stderr
        eig = dense_eigenvalues(job, 0, shift)
        (analysis,) = [p for p in (tmp_path / "run" / "analyses").glob("spectrum-*/spectrum.h5") if _objective_of(p) == objective]
        arrays = store.load_group(analysis, "spectrum")
        np.testing.assert_allclose(arrays["top"][0], eig[::-1][:3], rtol=1e-8)
        tau = -1e-5 * np.abs(eig).max()
        assert arrays["index_count"][0] == int((eig < tau).sum())
        theta = flatten(job.params)[0].clone().requires_grad_(True)
        d = job.data
        value = member_loss_fn(job.spec, d.x_train, d.y_train, "cross_entropy")(theta) + 0.5 * shift * theta.pow(2).sum()
        (grad,) = torch.autograd.grad(value, theta)
        assert arrays["grad_norm"][0] == pytest.approx(float(grad.norm()), rel=1e-10)


def test_batch_norm_spectra_in_both_modes(run_cli, tmp_path):
    from surfacekit.objective import objective_fn

    train = run_cli("population.size=1", "model.width=4", "model.batch_norm=true", "data.train_size=100",
                    "trainer.epochs=3", "progress=false", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    path = tmp_path / "run" / "results.h5"
    job = store.load_job(path)
    d = job.data
    stats = {n: v[0] for n, v in job.buffers.items()}
    for mode in ("batch", "eval"):
        assert run_cli("task=spectrum", f"source={path}", f"bn_mode={mode}", "objective=data", *FAST).returncode == 0
        loss_fn = objective_fn(job.spec, d.x_train, d.y_train, "cross_entropy", objective="data", bn_mode=mode,
                               statistics=stats)
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, flatten(job.params)[0])).numpy()
        (analysis,) = [p for p in (tmp_path / "run" / "analyses").glob("spectrum-*/spectrum.h5") if _bn_mode_of(p) == mode]
        np.testing.assert_allclose(store.load_group(analysis, "spectrum")["top"][0], eig[::-1][:3], rtol=1e-8)


def _bn_mode_of(path):
    import h5py

    with h5py.File(path, "r") as f:
        return str(f.attrs["bn_mode"])


def _objective_of(path):
    import h5py

    with h5py.File(path, "r") as f:
        return str(f.attrs["objective"])


def test_missing_source_is_one_line(run_cli, tmp_path):
    out = run_cli("task=spectrum", f"source={tmp_path}/none.h5", *FAST)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"surfacekit: error: {tmp_path}/none.h5: no such results file"]


@pytest.mark.slow
def test_sigkill_keeps_finished_members_and_resumes_to_the_same_numbers(run_cli, job_copy, tmp_path):
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from support import ROOT

    args = ["task=spectrum", f"source={job_copy}", *FAST, "spectrum.trace_probes=200", "spectrum.density_probes=40",
            "spectrum.index_method=lanczos"]
    assert run_cli(*args).returncode == 0
    expected = store.load_group(job_copy, "spectrum")
    shutil.rmtree(job_copy.parent / "analyses")
    proc = subprocess.Popen([sys.executable, "-m", "surfacekit", *args], cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(job_copy.parent.glob("analyses/spectrum-*/parts/*/*.npz")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(job_copy.parent.glob("analyses/spectrum-*/parts/*/*.npz"))) == 1
    assert not list(job_copy.parent.glob("analyses/spectrum-*/spectrum.h5"))
    resumed = run_cli(*args)
    assert resumed.returncode == 0 and "1 finished earlier" in resumed.stdout
    got = store.load_group(job_copy, "spectrum")
    for key in ("top", "bottom", "index_count", "trace", "density_nodes"):
        np.testing.assert_array_equal(got[key], expected[key])


def test_batched_dense_spectra_equal_the_per_member_path(run_cli, job_copy):
    """The dense path (both members' Hessians in one pass) against the per-member Lanczos path at a
    tight tolerance and against each member's own dense Hessian: equal to 1e-10."""
    assert run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.batch_size=2").returncode == 0
    batched = store.load_group(job_copy, "spectrum")
    for path in job_copy.parent.glob("analyses/*"):
        import shutil

        shutil.rmtree(path)
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.index_method=lanczos", "spectrum.tol=1e-13",
                  "spectrum.max_steps=5000")
    assert out.returncode == 0, out.stderr
    member = store.load_group(job_copy, "spectrum")
    job = store.load_job(job_copy)
    for k in range(2):
        loss_fn, theta, _ = store.job_objective(job, k)
        hessian = dense_hessian(loss_fn, theta)
        eig = torch.linalg.eigvalsh(hessian).numpy()
        scale = np.abs(eig).max()
        for got in (batched, member):
            np.testing.assert_allclose(got["top"][k], eig[::-1][:3], rtol=0, atol=1e-10 * scale)
            np.testing.assert_allclose(got["bottom"][k], eig[:3], rtol=0, atol=1e-10 * scale)
            assert got["index_count"][k] == int((eig < -1e-5 * scale).sum())
        np.testing.assert_allclose(batched["density_nodes"][k, 0], eig, rtol=0, atol=1e-10 * scale)
        assert batched["trace"][k] == pytest.approx(float(hessian.trace()), rel=1e-10)
        assert batched["top_certificate"][k] == pytest.approx(eig[::-1][3], abs=1e-10 * scale)
        assert batched["index_certificate"][k] == pytest.approx(eig[int((eig < -1e-5 * scale).sum())], abs=1e-10 * scale)
    assert batched["density_nodes"].shape == (2, 1, theta.numel()) and (batched["trace_stderr"] == 0).all()
    assert set(batched["top_method"]) == set(batched["index_method"]) == set(batched["trace_method"]) == {"dense"}
    assert set(batched["dense_assembly"]) == {"affine_input"}
    assert set(member["top_method"]) == {"lanczos"} and set(member["trace_method"]) == {"hutchinson"}
    assert set(member["density_method"]) == {"slq"} and set(member["index_method"]) == {"lanczos"}


def test_estimate_is_stored_as_an_estimate(run_cli, job_copy):
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.index_method=estimate",
                  "spectrum.density_probes=8", "spectrum.density_steps=30")
    assert out.returncode == 0, out.stderr
    got = store.load_group(job_copy, "spectrum")
    assert (got["index_count"] == -1).all() and np.isnan(got["index_fraction"]).all()  # never an index
    assert set(got["index_method"]) == {"estimate"} and (got["index_estimate_confidence"] == 0.95).all()
    job = store.load_job(job_copy)
    for k in range(2):
        eig = torch.linalg.eigvalsh(dense_hessian(*store.job_objective(job, k)[:2])).numpy()
        exact = int((eig < got["index_threshold"][k]).sum())
        assert got["index_estimate_low"][k] <= exact <= got["index_estimate_high"][k]
        assert got["index_estimate_resolution"][k] > 0
    bad = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.index_method=estimate",
                  "spectrum.density_probes=1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == ("surfacekit: error: spectrum.density_probes=1 is invalid: expected at "
                                                   "least 2 with spectrum.index_method=estimate (its interval needs a "
                                                   "sampling error)")


def test_dense_spectra_that_do_not_fit_are_refused(run_cli, job_copy):
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.index_method=dense", "memory_limit_gb=1e-6")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "spectrum.index_method=dense is invalid here: P = " in line and "needs about" in line
    auto = run_cli("task=spectrum", f"source={job_copy}", *FAST, "memory_limit_gb=1e-6", "spectrum.index_cap=50")
    assert auto.returncode == 2 and "needs about" in auto.stderr  # lanczos too big for 1 KiB: refused, one line
    for method in ("dense", "inertia"):  # a dense_limit below P is not ignored by an explicit dense method
        above = run_cli("task=spectrum", f"source={job_copy}", *FAST, f"spectrum.index_method={method}",
                        "spectrum.dense_limit=100")
        assert above.returncode == 2
        assert f"spectrum.index_method={method} is invalid here: P = " in above.stderr
        assert "is above spectrum.dense_limit=100" in above.stderr


def test_unconverged_eigenvalues_and_capped_counts_are_flagged_and_warned(run_cli, job_copy):
    """Found by a new-user trial: with max_steps=4 lambda_min was 20x off with no word anywhere, and a
    capped Lanczos count showed as a plain index."""
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.index_method=lanczos", "spectrum.max_steps=4",
                  "spectrum.index_cap=1")
    assert out.returncode == 0, out.stderr
    assert "did not converge" in out.stderr and "reached spectrum.index_cap: a lower bound" in out.stderr
    members = store.load_members(job_copy)
    assert not members["spectrum_converged"].any() and members["index_at_least"].all()
    assert (members["index_method"] == "lanczos").all() and (members["index_threshold"] < 0).all()
    assert "index lower bounds left out of the mean" in out.stdout and "unconverged extreme eigenvalues" in out.stdout
    (analysis,) = job_copy.parent.glob("analyses/spectrum-*/spectrum.h5")
    with h5py.File(analysis) as f:
        assert "did not converge" in str(f.attrs["warnings"])


def test_more_eigenvalues_than_parameters_fail_that_job_in_one_line(run_cli, job_copy):
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, "spectrum.top_k=300")
    assert out.returncode == 2
    assert "spectrum.top_k=300 is invalid: job 0 has P=235 parameters" in out.stderr
    assert "Traceback" not in out.stderr


def _poison(job_file, member):
    """A NaN in one member's first weight, the member not flagged diverged (as after an overflow)."""
    with h5py.File(job_file, "r+") as f:
        w = f["params/layers.0.weight"]
        values = w[()]
        values[member, 0, 0] = np.nan
        w[...] = values


def _warnings(sweep, task):
    (path,) = sweep.glob(f"analyses/{task}-*/{task}.h5")
    with h5py.File(path) as f:
        return " ".join(json.loads(f.attrs["warnings"]))


@pytest.mark.parametrize("method", ["auto", "lanczos"])
def test_a_member_that_is_not_finite_is_left_out_with_a_warning(run_cli, job_copy, method):
    _poison(job_copy, 0)
    sweep = job_copy.parent.parent
    out = run_cli("task=spectrum", f"source={sweep}", f"spectrum.index_method={method}", *FAST)
    assert out.returncode == 0, out.stderr
    arrays = store.load_group(sweep, "spectrum", job="0")
    assert arrays["analysed"].tolist() == [False, True]
    eig = dense_eigenvalues(store.load_job(job_copy), 1)
    np.testing.assert_allclose(arrays["top"][1], eig[::-1][:3], rtol=1e-8)
    assert "member(s) [0] not analysed (analysed=False): the loss or gradient" in _warnings(sweep, "spectrum")
    _poison(job_copy, 1)
    for path in sweep.glob("analyses/*"):
        shutil.rmtree(path)
    none = run_cli("task=spectrum", f"source={sweep}", f"spectrum.index_method={method}", *FAST)
    assert none.returncode == 2
    assert none.stderr.strip().splitlines()[-1].startswith("surfacekit: error: spectrum: 1 source job(s) not analysed")
    assert "no member could be analysed" in none.stderr and "Traceback" not in none.stderr


def test_diverged_members_named_explicitly_are_skipped_with_a_warning(run_cli, job_copy):
    with h5py.File(job_copy, "r+") as f:
        f["members/diverged"][1] = True
    sweep = job_copy.parent.parent
    out = run_cli("task=spectrum", f"source={sweep}", "spectrum.members=[0,1]", *FAST)
    assert out.returncode == 0, out.stderr
    assert store.load_group(sweep, "spectrum", job="0")["analysed"].tolist() == [True, False]
    assert "spectrum: job 0: skipping diverged member(s) [1]" in _warnings(sweep, "spectrum")


def test_a_batch_that_does_not_fit_shrinks_to_the_members_that_do(run_cli, job_copy, monkeypatch):
    """memory_limit_gb that holds one dense Hessian and its working copy (16 P^2 bytes) but not two
    members' (24 P^2): the unit of two runs as two passes of one member, exact as before."""
    from surfacekit.tasks import _analysis

    full = run_cli("task=spectrum", f"source={job_copy}", *FAST)
    assert full.returncode == 0, full.stderr
    expected = store.load_group(job_copy, "spectrum")
    p = expected["density_nodes"].shape[-1]
    sizes = []
    original = _analysis.population_spectrum  # the batched dense pass of every task
    monkeypatch.setattr(_analysis, "population_spectrum",
                        lambda fn, thetas, *a, **k: sizes.append(len(thetas)) or original(fn, thetas, *a, **k))
    limit = 20 * p * p / 2**30
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, f"memory_limit_gb={limit}", "spectrum.top_k=2")
    assert out.returncode == 0, out.stderr
    assert sizes == [1, 1]
    got = store.load_group(job_copy, "spectrum")
    assert list(got["index_method"]) == ["dense", "dense"]
    np.testing.assert_allclose(got["top"], expected["top"][:, :2], rtol=1e-10)
    np.testing.assert_array_equal(got["index_count"], expected["index_count"])


def test_a_repeated_member_id_is_analysed_once(run_cli, job_copy, monkeypatch):
    from surfacekit.tasks import _analysis

    sizes = []
    original = _analysis.population_spectrum  # the batched dense pass of every task
    monkeypatch.setattr(_analysis, "population_spectrum",
                        lambda fn, thetas, *a, **k: sizes.append(len(thetas)) or original(fn, thetas, *a, **k))
    out = run_cli("task=spectrum", f"source={job_copy}", "spectrum.members=[1,1]", *FAST)
    assert out.returncode == 0, out.stderr
    assert sizes == [1]  # was one batch of two copies of member 1


def test_members_joined_from_analyses_of_different_settings_are_warned(run_cli, job_copy, capsys):
    """load_members fills each member from the newest analysis that analysed it: a later run on member 1
    with another threshold mixes two definitions of the index in one column, so the loader says so; a
    later run that differs only in members or batch_size does not."""
    assert run_cli("task=spectrum", f"source={job_copy}", *FAST).returncode == 0
    assert run_cli("task=spectrum", f"source={job_copy}", "spectrum.members=[1]", "spectrum.batch_size=1",
                   *FAST).returncode == 0
    capsys.readouterr()
    store.load_members(job_copy)
    assert "mix analyses of different settings" not in capsys.readouterr().err
    assert run_cli("task=spectrum", f"source={job_copy}", "spectrum.members=[1]", "spectrum.relative_threshold=2e-5",
                   *FAST).returncode == 0
    capsys.readouterr()
    members = store.load_members(job_copy)
    err = capsys.readouterr().err
    assert "the spectrum columns mix analyses of different settings (relative_threshold: 2e-05 vs 1e-05)" in err
    assert members["spectrum_analysis"][0] != members["spectrum_analysis"][1]
