"""Sweeps that survive: launchers, failed jobs, resume."""

import json

import h5py
import pytest

from support import TINY
from surfacekit.store import load_members
from surfacekit.sweep import merge


@pytest.mark.slow
def test_submitit_local_sweep_merges(run_cli, tmp_path):
    out = run_cli("-m", "launcher=submitit_local", *TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s", subprocess=True)
    assert out.returncode == 0, out.stderr
    members = load_members(tmp_path / "s" / "sweep.h5")
    assert sorted(members["model.width"].unique()) == [3, 4]


@pytest.mark.slow
def test_joblib_sweep_records_threads(run_cli, tmp_path):
    out = run_cli("-m", "launcher=joblib", *TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s", subprocess=True)
    assert out.returncode == 0, out.stderr
    with h5py.File(tmp_path / "s" / "sweep.h5") as f:
        assert [f["jobs"][j].attrs["threads"] for j in json.loads(f.attrs["jobs"])] == [1, 1]


def test_failed_job_does_not_stop_the_sweep(run_cli, tmp_path):
    out = run_cli("-m", *TINY, "data.train_size=100,5000", f"hydra.sweep.dir={tmp_path}/s")
    assert out.returncode == 1
    report = merge(tmp_path / "s")
    assert report["merged"] == ["0"]
    assert report["skipped"]["1"].startswith("failed: data.train_size=5000 must lie in (0, 1797)")


def test_resume_skips_complete_jobs_and_redoes_missing_ones(run_cli, tmp_path):
    sweep = [*TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s"]
    assert run_cli("-m", *sweep).returncode == 0
    (tmp_path / "s" / "1" / "results.h5").unlink()
    before = (tmp_path / "s" / "0" / "results.h5").stat().st_mtime_ns
    out = run_cli("-m", *sweep, "resume=true")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("is complete, skipping this job") == 1
    assert (tmp_path / "s" / "0" / "results.h5").stat().st_mtime_ns == before
    assert (tmp_path / "s" / "1" / "results.h5").exists()
    assert len(load_members(tmp_path / "s" / "sweep.h5")) == 4
