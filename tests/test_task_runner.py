"""The post-hoc runner (tasks/_analysis.py) on the cases a killed, retrained or moved source produces:
stale parts, retrained jobs, jobs that disappeared, jobs with nothing to analyse, output elsewhere."""

import shutil

import h5py
import numpy as np

from support import interrupt_after
from surfacekit import store

FAST = ["spectrum.top_k=2", "spectrum.bottom_k=2", "spectrum.trace_probes=2", "spectrum.density_probes=1",
        "spectrum.density_steps=5", "spectrum.batch_size=1", "progress=false"]  # one member per unit (part)


def _retrain(path, run_id="retrained-run"):
    """What a new training run leaves: another run_id (and other parameters) in the same place."""
    with h5py.File(path, "r+") as f:
        f.attrs["run_id"] = run_id
        for name in f["params"]:
            f["params"][name][...] = f["params"][name][...] * 1.5


def test_parts_of_a_retrained_source_are_not_reused(run_cli, job_copy, monkeypatch):
    from surfacekit.tasks import spectrum

    interrupt_after(monkeypatch, spectrum.TASK, "compute", 1)
    assert run_cli("task=spectrum", f"source={job_copy}", *FAST).returncode == 130
    assert len(list(job_copy.parent.glob("analyses/spectrum-*/parts/*/*.npz"))) == 1
    monkeypatch.undo()
    _retrain(job_copy)
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST)
    assert out.returncode == 0, out.stderr
    assert "0 finished earlier" in out.stdout  # the part of the old training run was dropped
    got = store.load_group(job_copy, "spectrum")
    fresh = job_copy.parent.parent.parent / "fresh"
    shutil.copytree(job_copy.parent, fresh, ignore=shutil.ignore_patterns("analyses"))
    assert run_cli("task=spectrum", f"source={fresh}", *FAST).returncode == 0
    np.testing.assert_array_equal(got["top"], store.load_group(fresh, "spectrum")["top"])


def test_a_retrained_job_is_analysed_again_and_a_vanished_job_is_kept(run_cli, job_copy):
    sweep = job_copy.parent.parent
    shutil.copytree(job_copy.parent, sweep / "1", ignore=shutil.ignore_patterns("analyses"))
    with h5py.File(sweep / "1" / "results.h5", "r+") as f:
        f.attrs["run_id"] = "second-job"
    assert run_cli("task=spectrum", f"source={sweep}", *FAST).returncode == 0
    before = store.load_group(sweep, "spectrum", job="1")["top"]
    _retrain(sweep / "1" / "results.h5")
    out = run_cli("task=spectrum", f"source={sweep}", *FAST)
    assert out.returncode == 0 and "1 already analysed with these settings, 1 to do" in out.stdout
    after = store.load_group(sweep, "spectrum", job="1")["top"]
    assert not np.allclose(before, after)
    kept = store.load_group(sweep, "spectrum", job="0")["top"]
    shutil.move(sweep / "0", sweep.parent / "moved")  # the source of job 0 disappears
    out = run_cli("task=spectrum", f"source={sweep}", *FAST)
    assert out.returncode == 0, out.stderr
    (analysis,) = sweep.glob("analyses/spectrum-*/spectrum.h5")
    with h5py.File(analysis) as f:
        assert set(f["jobs"]) == {"0", "1"}
        np.testing.assert_array_equal(f["jobs/0/spectrum/top"][...], kept)


def test_a_job_whose_members_all_diverged_is_skipped_and_others_analysed(run_cli, tmp_path):
    common = ["population.size=2", "trainer.epochs=2", "model.width=3", "data.train_size=100", "progress=false",
              "trainer.divergence_loss=1e3"]
    bad = run_cli(*common, "population.lr_scale=[1e6,1e6]", f"hydra.run.dir={tmp_path}/sweep/0")
    assert bad.returncode != 0  # every member diverged: the job fails after writing its file
    assert run_cli(*common, f"hydra.run.dir={tmp_path}/sweep/1").returncode == 0
    out = run_cli("task=spectrum", f"source={tmp_path}/sweep", *FAST)
    assert out.returncode == 0, out.stderr
    assert "job 0" in out.stderr and "diverged" in out.stderr
    members = store.load_members(tmp_path / "sweep")
    assert np.isfinite(members.loc[members["job"] == "1", "lambda_max"]).all()
    assert members.loc[members["job"] == "0", "lambda_max"].isna().all()


def test_an_output_directory_outside_the_source_warns(run_cli, job_copy, tmp_path):
    out = run_cli("task=spectrum", f"source={job_copy}", *FAST, f"hydra.run.dir={tmp_path}/elsewhere")
    assert out.returncode == 0, out.stderr
    assert "surfacekit: warning: the output directory" in out.stderr and "will not join" in out.stderr
    assert "lambda_max" not in store.load_members(job_copy).columns
    assert np.isfinite(store.load_group(tmp_path / "elsewhere" / "spectrum.h5", "members")["lambda_max"]).all()


def test_members_filled_from_analyses_of_two_objectives_are_flagged(run_cli, job_copy, capsys):
    assert run_cli("task=spectrum", f"source={job_copy}", *FAST).returncode == 0
    assert run_cli("task=spectrum", f"source={job_copy}", *FAST, "objective=data", "spectrum.members=[0]").returncode == 0
    capsys.readouterr()
    members = store.load_members(job_copy)
    assert members["spectrum_objective"].tolist() == ["data", "trained"]  # the newest analysis that analysed each
    assert "mix analyses of objective data (1 members), trained (1 members)" in capsys.readouterr().err


def test_an_analysis_file_records_only_the_settings_it_used(run_cli, job_copy):
    """Its root config leaves out the training groups (their defaults describe no analysed network)."""
    import yaml

    assert run_cli("task=spectrum", f"source={job_copy}", *FAST).returncode == 0
    (analysis,) = job_copy.parent.glob("analyses/spectrum-*/spectrum.h5")
    with h5py.File(analysis) as f:
        config = yaml.safe_load(f.attrs["config"])
        assert f["jobs/0"].attrs["dtype"] == "float64"  # the dtype the analysis used is the job's
    assert config["spectrum"]["top_k"] == 2 and config["objective"] == "trained"
    assert not {"data", "model", "optimizer", "trainer", "population", "dtype"} & set(config)


def test_certify_and_warm_starts_refuse_module_populations_in_one_line(run_cli, tmp_path):
    """Both read the MLP's layers; on a CNN job certify raised AttributeError from deep inside."""
    cnn = run_cli("model=cnn", "model.width=2", "population.size=2", "trainer.epochs=1", "data.train_size=100",
                  "progress=false", f"hydra.run.dir={tmp_path}/cnn")
    assert cnn.returncode == 0, cnn.stderr
    out = run_cli("task=certify", f"source={tmp_path}/cnn", "progress=false")
    assert out.returncode == 2 and "task=certify supports MLP jobs (model=mlp); job cnn is a module population" in out.stderr
    assert "Traceback" not in out.stderr
    warm = run_cli(f"population.init_from={tmp_path}/cnn", "population.size=2", "progress=false", "trainer.epochs=1",
                   "data.train_size=100", f"hydra.run.dir={tmp_path}/warm")
    assert warm.returncode == 2 and "population.init_from=" in warm.stderr and "module population" in warm.stderr
