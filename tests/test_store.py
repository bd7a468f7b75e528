"""Results files: atomic writes, loaders, joins of training and analysis files, old files, parts."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from surfacekit import store
from surfacekit.store import Parts, ResultsError, check_results, load_members, write_results

LEGACY = Path(__file__).parent / "data" / "legacy_v1_job.h5"  # written by surfacekit before schema 2


def job_file(path, width, k=3, overrides=None, config=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".hydra").mkdir(exist_ok=True)
    attrs = {**store.provenance(), "kind": "job", "config": config or f"model:\n  width: {width}\nseed: 0\n",
             "overrides": overrides if overrides is not None else [f"model.width={width}", "seed=0"]}
    groups = {
        "members": {"member": np.arange(k), "seed": np.arange(k) + 100, "final_test_loss": np.linspace(0, 1, k)},
        "curves": {"train_loss": np.ones((k, 4)), "step": np.arange(4)},
        "params": {"layers.0.weight": np.zeros((k, width, 2))},
    }
    return write_results(path, groups, attrs, dims={"members": "member", "curves": "member,eval", "curves/step": "eval"})


def analysis_file(root, job, run_id, task="spectrum", name="spectrum-0000abcd", end="2026-01-01T00:00:00+00:00", value=1.0,
                  analysed=(True, True, True), weight_decay=0.0):
    path = root / "analyses" / name / f"{task}.h5"
    path.parent.mkdir(parents=True)

    def fill(f):
        store.set_attrs(f, {**store.provenance(), "kind": "analysis", "task": task, "end_time": end,
                            "objective": "trained", "bn_mode": "batch"})
        g = f.create_group(f"jobs/{job}")
        store.set_attrs(g, {"source_run_id": run_id, "source_path": "x", "objective": "trained",
                            "weight_decay": weight_decay, "bn_mode": "batch"})
        store._write_groups(g, {"members": {"member": np.arange(3), "analysed": np.array(analysed),
                                            "lambda_max": np.where(analysed, value, np.nan)},
                                task: {"top": np.full((3, 2), value)}}, {})

    return store.write_atomic(path, fill)


def test_write_read_roundtrip(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    assert check_results(path) == "job"
    with h5py.File(path) as f:
        assert f["curves/train_loss"].attrs["dims"] == "member,eval"
        assert f["curves/step"].attrs["dims"] == "eval"
        assert json.loads(f.attrs["overrides"]) == ["model.width=5", "seed=0"]
        assert len(f.attrs["run_id"]) == 32
    members = load_members(path)
    # the job's seed override does not replace the members' own seed column
    assert list(members.columns) == ["job", "member", "seed", "final_test_loss", "model.width", "job_seed"]
    assert members["seed"].tolist() == [100, 101, 102] and (members["job_seed"] == 0).all()
    assert store.load_params(path)["layers.0.weight"].shape == (3, 5, 2)
    assert store.list_jobs(path) == ["0"]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_results_are_never_overwritten(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    before = store.file_sha256(path)
    with pytest.raises(ResultsError, match="never overwritten"):
        job_file(path, 7)
    assert store.file_sha256(path) == before


def test_loaders_take_a_sweep_directory_and_skip_broken_jobs(tmp_path, capsys):
    for job, width in ((0, 5), (2, 20)):
        job_file(tmp_path / str(job) / "results.h5", width)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # started, never finished
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "results.h5").write_bytes(b"not hdf5")
    members = load_members(tmp_path)
    assert len(members) == 6 and sorted(members["model.width"].unique()) == [5, 20]
    err = capsys.readouterr().err
    assert "skipped 1: no results.h5" in err and "skipped 3:" in err and "not a readable HDF5 file" in err
    assert store.list_jobs(tmp_path) == ["0", "2"]
    assert store.load_curves(tmp_path, job="2")["train_loss"].shape == (3, 4)
    with pytest.raises(ResultsError, match="holds 2 jobs"):
        store.load_curves(tmp_path)
    with pytest.raises(ResultsError, match="no results here"):
        load_members(tmp_path / "0" / ".hydra")


@pytest.mark.parametrize("text,value", [
    ("trainer.inverse_lr=5e-3", 0.005), ("optimizer.lr=1e-3", 0.001), ("optimizer.lr=1.0e-3", 0.001),
    ("model.width=25", 25), ("model.bias=false", False), ("data.train_size=null", None),
    ("model.widths=[10,20]", (10, 20)), ("optimizer=adam", "adam"), ("+extra.note=hello", "hello"),
])
def test_swept_values_come_back_with_their_type(tmp_path, text, value):
    key = text.partition("=")[0].lstrip("+")
    config = ("trainer:\n  inverse_lr: 0.005\noptimizer:\n  name: adam\n  lr: 0.001\nmodel:\n  width: 25\n"
              "  bias: false\n  widths: [10, 20]\ndata:\n  train_size: null\nseed: 0\n")
    path = job_file(tmp_path / "0" / "results.h5", 5, overrides=[text], config=config)
    column = load_members(path)[key]
    assert column.tolist() == [value] * 3
    if isinstance(value, float):
        assert column.dtype.kind == "f"


def test_sweep_columns_sort_numerically(tmp_path):
    for job, lr in enumerate(["5e-3", "1e-2", "2e-4"]):
        job_file(tmp_path / str(job) / "results.h5", 5, overrides=[f"optimizer.lr={lr}"],
                 config=f"optimizer:\n  lr: {float(lr)}\n")
    assert sorted(load_members(tmp_path)["optimizer.lr"].unique()) == [2e-4, 5e-3, 1e-2]


def test_analysis_files_join_on_job_and_member(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    with h5py.File(path) as f:
        run_id = str(f.attrs["run_id"])
    analysis_file(tmp_path / "0", "0", run_id, value=1.0, end="2026-01-01T00:00:00+00:00")
    analysis_file(tmp_path / "0", "0", run_id, name="spectrum-0000beef", value=2.0, end="2026-02-01T00:00:00+00:00")
    analysis_file(tmp_path / "0", "0", "another-run", name="spectrum-stale000", value=3.0, end="2026-03-01T00:00:00+00:00")
    members = load_members(path)
    assert members["lambda_max"].tolist() == [2.0] * 3  # the newest analysis of this run, not the stale one
    assert (members["spectrum_objective"] == "trained").all()
    assert store.load_group(path, "spectrum")["top"].tolist() == [[2.0, 2.0]] * 3
    assert "lambda_max" not in load_members(path, analyses="none")
    # the sweep directory sees the same, and so does the merged file
    from surfacekit.sweep import merge

    report = merge(tmp_path)
    assert report["analyses"] == ["0__analyses__spectrum-0000abcd", "0__analyses__spectrum-0000beef",
                                  "0__analyses__spectrum-stale000"]
    assert load_members(tmp_path / "sweep.h5")["lambda_max"].tolist() == [2.0] * 3
    assert load_members(tmp_path)["lambda_max"].tolist() == [2.0] * 3
    assert len(store.collect(tmp_path / "sweep.h5").analyses) == 3  # the merged copies, not the files again
    # an analysis written after the merge, beside the sweep file, is seen through the sweep file too
    analysis_file(tmp_path, "0", run_id, name="spectrum-after000", value=4.0, end="2026-04-01T00:00:00+00:00")
    assert load_members(tmp_path / "sweep.h5")["lambda_max"].tolist() == [4.0] * 3


def test_a_partial_newer_analysis_does_not_hide_a_complete_older_one(tmp_path):
    path = job_file(tmp_path / "0" / "results.h5", 5)
    run_id = store.load_attrs(path)["run_id"]
    analysis_file(tmp_path / "0", "0", run_id, name="spectrum-complete", value=1.0, weight_decay=0.01,
                  end="2026-01-01T00:00:00+00:00")
    analysis_file(tmp_path / "0", "0", run_id, name="spectrum-partial", value=2.0, analysed=(True, False, False),
                  end="2026-02-01T00:00:00+00:00")
    members = load_members(path)
    assert members["lambda_max"].tolist() == [2.0, 1.0, 1.0]
    assert members["spectrum_analysis"].tolist() == ["spectrum-partial", "spectrum-complete", "spectrum-complete"]
    assert members["spectrum_weight_decay"].tolist() == [0.0, 0.01, 0.01]  # each row's own analysis, per job
    chosen = load_members(path, analyses=["spectrum-complete"])
    assert chosen["lambda_max"].tolist() == [1.0] * 3
    only_partial = load_members(path, analyses=["spectrum-partial"])
    assert only_partial["lambda_max"].iloc[0] == 2.0 and np.isnan(only_partial["lambda_max"].iloc[1:]).all()
    with pytest.raises(ResultsError, match="no analyses named"):
        load_members(path, analyses=["spectrum-nope"])


def test_schema_1_files_still_load():
    members = load_members(LEGACY)
    assert len(members) == 2 and {"final_test_loss", "index_count", "lambda_max"} <= set(members.columns)
    assert store.load_group(LEGACY, "spectrum")["top"].shape[0] == 2
    assert store.load_group(LEGACY, "critical/newton_mr")["accepted"].shape == (1,)
    assert "train_barrier" in store.load_group(LEGACY, "landscape/interpolation_init")
    job = store.load_job(LEGACY)
    assert job.spec.widths == (3,) and job.params["layers.0.weight"].shape == (2, 3, 64)


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


def test_string_columns_read_back_as_str(tmp_path):
    path = write_results(tmp_path / "results.h5",
                         {"members": {"member": np.arange(2), "method": np.array(["gd", "sgd"])}},
                         {**store.provenance(), "kind": "job", "config": "", "overrides": []})
    assert load_members(path)["method"].tolist() == ["gd", "sgd"]


def test_not_a_results_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load_members(tmp_path / "nothing.h5")


def test_parts_resume_and_refuse_other_settings(tmp_path):
    parts = Parts(tmp_path / "parts", signature="a")
    parts.save("0/member-1", {"x": np.arange(3), "name": np.array("dense")})
    assert parts.done("0/member-1") and not parts.done("0/member-2")
    again = Parts(tmp_path / "parts", signature="a")
    assert again.load("0/member-1")["x"].tolist() == [0, 1, 2] and str(again.load("0/member-1")["name"]) == "dense"
    assert again.keys() == ["0/member-1"]
    with pytest.raises(ResultsError, match="other settings"):
        Parts(tmp_path / "parts", signature="b")
    again.remove()
    assert not (tmp_path / "parts").exists()


def test_tidy_loaders_give_one_row_per_point(trained_job):
    curves = store.load_curves(trained_job.parent.parent, tidy=True)
    raw = store.load_curves(trained_job)
    k, t = raw["train_loss"].shape
    assert len(curves) == k * t and {"job", "member", "eval", "step", "epoch", "train_loss", "model.width"} <= set(curves)
    row = curves[(curves["member"] == 1) & (curves["eval"] == 2)].iloc[0]
    assert row["train_loss"] == raw["train_loss"][1, 2] and row["epoch"] == raw["epoch"][2]
    assert row["model.width"] == 3 and row["job"] == "0"
    legacy = store.load_tidy(LEGACY, "landscape/interpolation_init")
    assert len(legacy) == 2 * 5 and {"member", "alpha", "train_loss", "train_barrier"} <= set(legacy)
    spectrum = store.load_tidy(LEGACY, "spectrum", axes=("member", "k"))
    top = store.load_group(LEGACY, "spectrum")["top"]
    assert spectrum.sort_values(["member", "k"])["top"].tolist() == top.ravel().tolist()
    with pytest.raises(ResultsError, match="no job has a group /nothing"):
        store.load_tidy(LEGACY, "nothing")
