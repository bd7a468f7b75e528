import json

import h5py
import numpy as np
import pytest

from surfacekit import store
from surfacekit.store import ResultsError, add_groups, check_results, load_members, merge, write_results


def job_file(path, width, k=3, overrides=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".hydra").mkdir(exist_ok=True)
    attrs = {**store.provenance(), "kind": "job", "config": f"model:\n  width: {width}\n",
             "overrides": overrides if overrides is not None else [f"model.width={width}", "seed=0"]}
    groups = {
        "members": {"member": np.arange(k), "final_test_loss": np.linspace(0, 1, k)},
        "curves": {"train_loss": np.ones((k, 4)), "step": np.arange(4)},
        "params": {"layers.0.weight": np.zeros((k, width, 2))},
    }
    return write_results(path, groups, attrs, dims={"members": "member", "curves": "member,eval", "curves/step": "eval"})


def test_write_read_roundtrip(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    assert check_results(path) == "job"
    with h5py.File(path) as f:
        assert f["curves/train_loss"].attrs["dims"] == "member,eval"
        assert f["curves/step"].attrs["dims"] == "eval"
        assert json.loads(f.attrs["overrides"]) == ["model.width=5", "seed=0"]
    members = load_members(path)
    assert list(members.columns) == ["job", "member", "final_test_loss", "model.width", "seed"]
    assert store.load_params(path)["layers.0.weight"].shape == (3, 5, 2)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_merge_three_jobs_with_one_missing(tmp_path):
    for job, width in ((0, 5), (2, 20)):
        job_file(tmp_path / str(job) / "results.h5", width)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # started, never finished
    report = merge(tmp_path)
    assert report["merged"] == ["0", "2"]
    assert "no results.h5" in report["skipped"]["1"]
    members = load_members(tmp_path / "sweep.h5")
    assert len(members) == 6
    assert sorted(members["model.width"].unique()) == [5, 20]
    assert set(members["job"]) == {"0", "2"}
    assert store.list_jobs(tmp_path / "sweep.h5") == ["0", "2"]
    assert store.load_curves(tmp_path / "sweep.h5", job="2")["train_loss"].shape == (3, 4)
    with pytest.raises(ResultsError, match="name one of its jobs"):
        store.load_curves(tmp_path / "sweep.h5")


def test_merge_skips_corrupt_foreign_and_duplicate_files(tmp_path):
    job_file(tmp_path / "0" / "results.h5", 5)
    job_file(tmp_path / "1" / "results.h5", 5)  # same config and overrides as job 0
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "3").mkdir()
    with h5py.File(tmp_path / "3" / "results.h5", "w") as f:
        f["x"] = 1
    report = merge(tmp_path)
    assert report["merged"] == ["0"]
    assert "duplicate of job 0" in report["skipped"]["1"]
    assert "not a readable HDF5 file" in report["skipped"]["2"]
    assert "not a results file" in report["skipped"]["3"]
    assert store.merge_main([str(tmp_path)]) == 0
    assert store.merge_main([str(tmp_path / "missing")]) == 2


def test_schema_mismatch_is_a_clear_error(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema_version 99"):
        load_members(path)


def test_interrupted_write_leaves_no_results_file(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_write_groups", explode)
    with pytest.raises(KeyboardInterrupt):
        job_file(tmp_path / "0" / "results.h5", 5)
    assert list((tmp_path / "0").iterdir()) == [tmp_path / "0" / ".hydra"]


def test_add_groups_keeps_original_when_interrupted(tmp_path, monkeypatch):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    add_groups(path, {"spectrum": {"top": np.ones((3, 2))}}, dims={"spectrum": "member,k"})
    assert store.load_group(path, "spectrum")["top"].shape == (3, 2)
    monkeypatch.setattr(store, "_write_groups", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        add_groups(path, {"other": {"x": np.ones(2)}})
    assert check_results(path) == "job" and "other" not in h5py.File(path, "r")
    assert not list(path.parent.glob(".*.tmp"))


def test_string_columns_read_back_as_str(tmp_path):
    path = write_results(tmp_path / "r.h5", {"members": {"method": np.array(["gd", "sgd"]), "x": np.ones(2)}},
                         {**store.provenance(), "kind": "job", "config": "", "overrides": []})
    assert load_members(path)["method"].tolist() == ["gd", "sgd"]


def test_not_a_results_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load_members(tmp_path / "nothing.h5")
