"""Sweeps that survive: launchers, resume, killed jobs, failed jobs."""

import json
import signal
import subprocess
import sys
import time

import h5py

from surfacekit.store import load_members, merge

TINY = ["population.size=2", "trainer.epochs=1", "data.train_size=100", "progress=false"]


def cli(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "surfacekit", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_submitit_local_sweep_merges(tmp_path):
    out = cli("-m", "launcher=submitit_local", *TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    members = load_members(tmp_path / "s" / "sweep.h5")
    assert sorted(members["model.width"].unique()) == [3, 4]


def test_joblib_sweep_records_threads(tmp_path):
    out = cli("-m", "launcher=joblib", *TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with h5py.File(tmp_path / "s" / "sweep.h5") as f:
        assert [f["jobs"][j].attrs["threads"] for j in json.loads(f.attrs["jobs"])] == [1, 1]


def test_failed_job_does_not_stop_the_sweep(tmp_path):
    out = cli("-m", *TINY, "population.size=0,2", "model.width=3", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = merge(tmp_path / "s")
    assert report["merged"] == ["1"]
    assert report["skipped"]["0"] == "failed: population.size=0 is invalid: expected an integer >= 1"


def test_resume_skips_complete_jobs_and_redoes_missing_ones(tmp_path):
    sweep = [*TINY, "model.width=3,4", f"hydra.sweep.dir={tmp_path}/s"]
    assert cli("-m", *sweep, cwd=tmp_path).returncode == 0
    (tmp_path / "s" / "1" / "results.h5").unlink()
    before = (tmp_path / "s" / "0" / "results.h5").stat().st_mtime_ns
    out = cli("-m", *sweep, "resume=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("is complete, skipping this job") == 1
    assert (tmp_path / "s" / "0" / "results.h5").stat().st_mtime_ns == before
    assert (tmp_path / "s" / "1" / "results.h5").exists()
    assert len(load_members(tmp_path / "s" / "sweep.h5")) == 4


def test_killed_job_leaves_no_results_and_reruns(tmp_path):
    run_dir = tmp_path / "run"
    args = ["population.size=2", "model.width=3", "progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "surfacekit", "trainer.epochs=100000", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / ".hydra").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.h5").exists()
    out = cli("trainer.epochs=1", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(load_members(run_dir / "results.h5")) == 2
