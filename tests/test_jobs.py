"""Jobs that lose nothing: finished results are never replaced, directories are not shared, sweeps
report failures, interrupts are one line, killed jobs resume."""

import signal
import subprocess
import sys
import time

import pytest

from support import ROOT, TINY
from surfacekit import jobs
from surfacekit.store import file_sha256, load_members


def test_resume_with_other_settings_refuses_and_keeps_the_file(run_cli, tmp_path):
    run = f"hydra.run.dir={tmp_path}/run"
    assert run_cli(*TINY, run).returncode == 0
    path = tmp_path / "run" / "results.h5"
    before = file_sha256(path)
    again = run_cli(*TINY, "trainer.epochs=1", "resume=true", run)
    assert again.returncode == 2
    assert "was produced with other settings (trainer.epochs: 2 -> 1)" in again.stderr
    plain = run_cli(*TINY, run)  # no resume: a directory with finished results is refused too
    assert plain.returncode == 2 and "already holds finished results" in plain.stderr
    same = run_cli(*TINY, "resume=true", run)
    assert same.returncode == 0 and "is complete, skipping this job" in same.stdout
    assert file_sha256(path) == before


def test_a_directory_in_use_is_refused(run_cli, tmp_path):
    with jobs.directory_lock(tmp_path / "run"):
        out = run_cli(*TINY, f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    assert "is in use by another surfacekit process" in out.stderr
    assert not (tmp_path / "run" / "results.h5").exists()


def test_sweep_with_a_failed_job_exits_nonzero_after_merging(run_cli, tmp_path):
    out = run_cli("-m", *TINY, "optimizer.lr=0.05,1e6", "trainer.divergence_loss=1e3", f"hydra.sweep.dir={tmp_path}/s")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"surfacekit: 1 of 2 jobs failed: see {tmp_path}/s/1/error.txt"
    assert (tmp_path / "s" / "sweep.h5").exists() and len(load_members(tmp_path / "s" / "sweep.h5")) == 4
    assert "all 2 members diverged" in (tmp_path / "s" / "1" / "error.txt").read_text()
    log = (tmp_path / "s" / "1" / "app.log").read_text()
    assert "Traceback" in log and "all 2 members diverged" in log


def test_ctrl_c_is_one_line(run_cli, tmp_path, monkeypatch):
    import surfacekit.tasks.train as train

    def interrupted(cfg, out_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    out = run_cli(*TINY, f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 130
    assert out.stderr.strip().splitlines() == [f"surfacekit: interrupted; finished parts (if any) are kept in {tmp_path}/run"]


def test_config_differences_name_the_keys():
    stored = {"trainer": {"epochs": 400, "batch_size": 50}, "progress": True, "seed": 0}
    current = {"trainer": {"epochs": 5, "batch_size": 50}, "progress": False, "seed": 0, "objective": "trained"}
    assert jobs.config_differences(stored, current) == ["objective: '(absent)' -> 'trained'", "trainer.epochs: 400 -> 5"]


@pytest.mark.slow
def test_killed_job_leaves_no_results_and_reruns(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    args = ["population.size=2", "model.width=3", "progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "surfacekit", "trainer.epochs=100000", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (run_dir / ".hydra").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.h5").exists()
    out = run_cli("trainer.epochs=1", *args)
    assert out.returncode == 0, out.stderr
    assert len(load_members(run_dir / "results.h5")) == 2


@pytest.mark.slow
def test_sigint_is_one_line_from_a_real_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "surfacekit", "trainer.epochs=100000", "model.width=3",
                             "progress=false", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (tmp_path / "run" / ".hydra").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert [line for line in err.strip().splitlines() if line.strip()][-1].startswith("surfacekit: interrupted")
    assert "Traceback" not in err


@pytest.mark.slow
def test_joblib_workers_stop_when_the_parent_dies(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "surfacekit", "-m", "launcher=joblib", "model.width=3,4",
                             "trainer.epochs=100000", "progress=false", f"hydra.sweep.dir={tmp_path}/s"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PYTHONPATH": str(ROOT)})
    deadline = time.time() + 180
    while len(list((tmp_path / "s").glob("*/.surfacekit.lock"))) < 2 and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3.0)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5.0)
    alive = [pid for pid in workers if subprocess.run(["kill", "-0", pid], capture_output=True).returncode == 0]
    assert workers and not alive
    assert not list((tmp_path / "s").glob("*/results.h5"))
