"""The merge of a sweep: job files and analysis files into sweep.h5; what it skips and refuses."""

import h5py
import numpy as np
import pytest

from surfacekit import sweep
from surfacekit.store import ResultsError, list_jobs, load_members
from test_store import job_file


def test_merge_three_jobs_with_one_missing(tmp_path):
    for job, width in ((0, 5), (2, 20)):
        job_file(tmp_path / str(job) / "results.h5", width)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # started, never finished
    report = sweep.merge(tmp_path)
    assert report["merged"] == ["0", "2"]
    assert "no results.h5" in report["skipped"]["1"]
    members = load_members(tmp_path / "sweep.h5")
    assert len(members) == 6 and set(members["job"]) == {"0", "2"}
    assert list_jobs(tmp_path / "sweep.h5") == ["0", "2"]


def test_merge_skips_corrupt_foreign_duplicate_and_failed(tmp_path, capsys):
    job_file(tmp_path / "0" / "results.h5", 5)
    job_file(tmp_path / "1" / "results.h5", 5)  # same config and overrides as job 0
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "3").mkdir()
    with h5py.File(tmp_path / "3" / "results.h5", "w") as f:
        f["x"] = 1
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "error.txt").write_text("Traceback ...\nValueError: boom")
    report = sweep.merge(tmp_path)
    assert report["merged"] == ["0"] and report["failed"] == ["4"]
    assert "duplicate of job 0" in report["skipped"]["1"]
    assert "not a readable HDF5 file" in report["skipped"]["2"]
    assert "not a results file" in report["skipped"]["3"]
    assert report["skipped"]["4"] == "failed: ValueError: boom"
    assert sweep.failure_summary(tmp_path, report) == f"1 of 5 jobs failed: see {tmp_path / '4' / 'error.txt'}"
    assert sweep.merge_main([str(tmp_path)]) == 0
    assert "skipped 2:" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("missing", "no such sweep directory"),
    ("empty", "no job folders"),
    ("single run", "a single run directory"),
    ("output folder", "no such directory"),
])
def test_merge_refuses_with_one_line(tmp_path, capsys, case, message):
    target, extra = tmp_path / "s", []
    if case == "empty":
        target.mkdir()
    elif case == "single run":
        job_file(target / "results.h5", 5)
    elif case == "output folder":
        job_file(target / "0" / "results.h5", 5)
        extra = ["-o", str(tmp_path / "nowhere" / "all.h5")]
    assert sweep.merge_main([str(target), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("surfacekit-merge: error:")
    assert not (target / "sweep.h5").exists()
    with pytest.raises(ResultsError, match=message):
        sweep.merge(target, extra[1] if extra else None)


def test_merge_replaces_an_older_sweep_file(tmp_path):
    job_file(tmp_path / "0" / "results.h5", 5)
    sweep.merge(tmp_path)
    job_file(tmp_path / "1" / "results.h5", 7)
    assert sweep.merge(tmp_path)["merged"] == ["0", "1"]
    assert len(load_members(tmp_path / "sweep.h5")) == 6
    assert np.isfinite(load_members(tmp_path / "sweep.h5")["final_test_loss"]).all()


def test_merge_output_never_replaces_a_job_file(tmp_path, capsys):
    job_file(tmp_path / "s" / "0" / "results.h5", 5)
    job_file(tmp_path / "keep.h5", 5)
    before = (tmp_path / "keep.h5").read_bytes()
    assert sweep.merge_main([str(tmp_path / "s"), "-o", str(tmp_path / "keep.h5")]) == 2
    assert "exists and is a job file" in capsys.readouterr().err
    assert (tmp_path / "keep.h5").read_bytes() == before


def test_a_second_sweep_into_a_directory_in_use_is_refused(run_cli, tmp_path):
    import fcntl

    (tmp_path / "s").mkdir()
    with open(tmp_path / "s" / ".surfacekit-sweep.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running sweep holds
        out = run_cli("-m", "population.size=1", "model.width=2", "trainer.epochs=1", "data.train_size=50",
                      "progress=false", "seed=0,1", f"hydra.sweep.dir={tmp_path}/s")
    assert out.returncode == 2 and "is in use by another sweep" in out.stderr
    assert not (tmp_path / "s" / "0").exists()
    again = run_cli("-m", "population.size=1", "model.width=2", "trainer.epochs=1", "data.train_size=50",
                    "progress=false", "seed=0,1", f"hydra.sweep.dir={tmp_path}/s")
    assert again.returncode == 0, again.stderr  # released: the same process may sweep again
