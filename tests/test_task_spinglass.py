"""task=spinglass through the CLI (single job, merged multirun, resume) and analyses/spinglass.py."""

import importlib.util
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from support import compose_config, interrupt_after
from surfacekit import spinglass as sg
from surfacekit import store
from surfacekit.config import ConfigError, validate
from surfacekit.tasks.spinglass import settings

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["task=spinglass", "spinglass.N=8,10", "seed=3", "spinglass.starts=6", "spinglass.max_steps=5000", "threads=1",
         "progress=false"]


def analysis_main():
    """analyses/spinglass.py's main, imported in this process (the CLI costs seconds of imports)."""
    spec = importlib.util.spec_from_file_location("analysis_spinglass", ROOT / "analyses" / "spinglass.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from support import _in_process

    tmp = tmp_path_factory.mktemp("spinglass")
    out = _in_process(["-m", *SWEEP, f"hydra.sweep.dir={tmp}/s"], tmp)
    assert out.returncode == 0, out.stderr
    assert "H/N mean" in out.stdout and "-E_inf = -1.632993" in out.stdout
    return tmp / "s"


def test_config_composes_with_defaults():
    cfg = compose_config(["task=spinglass", "spinglass.N=12", "spinglass.method=sgd"])
    opts = settings(cfg)
    assert (opts["n"], opts["p"], opts["method"], opts["seed"]) == (12, 3, "sgd", cfg.seed)
    assert opts["num_starts"] >= 100
    assert settings(compose_config(["task=spinglass", "spinglass.disorder_seed=7", "seed=1"]))["seed"] == 7
    for overrides, message in ((["spinglass.p=2"], "spinglass.p=2 is invalid"),
                               (["spinglass.method=adam"], "spinglass.method=adam is invalid: expected one of ['gd', 'sgd']")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate(compose_config(["task=spinglass", *overrides]))


def test_chunks_resume_to_the_rows_of_one_run(run_cli, tmp_path, monkeypatch):
    args = ["task=spinglass", "spinglass.N=8", "seed=3", "spinglass.starts=6", "spinglass.chunk_starts=2",
            "spinglass.max_steps=5000", "progress=false", f"hydra.run.dir={tmp_path}/run"]
    interrupt_after(monkeypatch, sg, "simulate", 2)
    assert run_cli(*args).returncode == 130
    assert len(list((tmp_path / "run" / "parts").glob("*.npz"))) == 2
    monkeypatch.undo()
    out = run_cli(*args, "resume=true")
    assert out.returncode == 0, out.stderr
    assert "2 finished earlier" in out.stdout and not (tmp_path / "run" / "parts").exists()
    members = store.load_members(tmp_path / "run")
    ref = sg.simulate(8, 3, 6, seed=3, max_steps=5000)
    np.testing.assert_allclose(members["energy_per_n"], ref["energy_per_n"], rtol=1e-10)
    np.testing.assert_array_equal(members["index"], ref["index"])


def test_resume_with_another_chunk_size_is_refused(run_cli, tmp_path, monkeypatch):
    """Parts of 2-start chunks are never mixed into a run of 3-start chunks (their rows differ)."""
    args = ["task=spinglass", "spinglass.N=8", "seed=3", "spinglass.starts=6", "spinglass.max_steps=5000",
            "progress=false", f"hydra.run.dir={tmp_path}/run"]
    interrupt_after(monkeypatch, sg, "simulate", 1)
    assert run_cli(*args, "spinglass.chunk_starts=2").returncode == 130
    monkeypatch.undo()
    out = run_cli(*args, "spinglass.chunk_starts=3", "resume=true")
    assert out.returncode != 0
    assert len(list((tmp_path / "run" / "parts").glob("*.npz"))) == 1  # the finished chunk is kept


def test_job_writes_members_per_start(sweep):
    path = sweep / "1" / "results.h5"  # job 1 of the sweep: spinglass.N=10, seed=3
    members = store.load_members(path)
    assert len(members) == 6
    assert np.isfinite(members["energy_per_n"]).all() and (members["N"] == 10).all()
    assert {"grad_norm", "steps", "converged", "index", "index_fraction", "method"} <= set(members.columns)
    assert members["converged"].all() and (members["grad_norm"] < 1e-7).all()
    with h5py.File(path) as f:
        e_0, e_inf = sg.thresholds(3)
        assert f.attrs["E_0"] == pytest.approx(e_0) and f.attrs["E_inf"] == pytest.approx(e_inf)
        assert f.attrs["task"] == "spinglass" and f.attrs["threads"] == 1 and f["members/energy_per_n"].attrs["dims"] == "member"
    # the job is simulate() with the job seed: same endpoints
    ref = sg.simulate(10, 3, 6, seed=3, max_steps=5000)
    np.testing.assert_allclose(members["energy_per_n"], ref["energy_per_n"], rtol=1e-12)


def test_resume_skips_complete_jobs(sweep, run_cli):
    before = (sweep / "0" / "results.h5").stat().st_mtime_ns
    again = run_cli("-m", *SWEEP, f"hydra.sweep.dir={sweep}", "resume=true", cwd=sweep.parent)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("is complete, skipping this job") == 2
    assert (sweep / "0" / "results.h5").stat().st_mtime_ns == before


def test_multirun_is_merged(sweep):
    members = store.load_members(sweep / "sweep.h5")
    assert len(members) == 12
    assert sorted(members["spinglass.N"].unique()) == [8, 10]
    assert (members["N"] == members["spinglass.N"]).all() and (members["disorder_seed"] == 3).all()


def test_analysis_writes_files_and_fits_c(sweep, tmp_path):
    assert analysis_main()([str(sweep), "--out", str(tmp_path / "a")]) == 0
    for name in ("energy_histograms.png", "energy_histograms.pdf", "mean_vs_N.png", "mean_vs_N.pdf",
                 "spinglass_by_N.csv", "spinglass_by_N.md", "fit.csv", "fit.md"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    members = store.load_members(sweep / "sweep.h5")
    means = members.groupby("N")["energy_per_n"].mean()
    x = means.index.to_numpy(float) ** (-2 / 3)
    c_direct = np.linalg.lstsq(x[:, None], means.to_numpy() + sg.thresholds(3)[1], rcond=None)[0][0]
    fit = pd.read_csv(tmp_path / "a" / "fit.csv")
    assert fit["c"].iloc[0] == pytest.approx(c_direct, rel=1e-10)
    table = pd.read_csv(tmp_path / "a" / "spinglass_by_N.csv")
    np.testing.assert_allclose(table["mean"], means.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(table["residual"], means.to_numpy() - (-sg.thresholds(3)[1] + c_direct * x), atol=1e-12)


def test_analysis_side_by_side_and_errors(sweep, tmp_path, capsys):
    main = analysis_main()
    nets = tmp_path / "nets.h5"
    rng = np.random.default_rng(0)
    width = np.repeat([5, 25], 20)
    store.write_results(nets, {"members": {"width": width, "final_test_loss": rng.normal(0.3, 0.1 / width),
                                           "diverged": np.zeros(40, bool)}}, {**store.provenance(), "kind": "job"})
    assert main([str(sweep / "sweep.h5"), "--networks", str(nets), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "side_by_side.pdf").exists()
    table = pd.read_csv(tmp_path / "a" / "networks_normalized.csv")
    assert table["min"].min() == 0 and table["max"].max() == pytest.approx(1)
    capsys.readouterr()
    assert main([str(tmp_path / "none.h5")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no such results file" in err
    assert main([str(sweep / "sweep.h5"), "--networks", str(sweep / "sweep.h5")]) == 2
    assert "needs members with width and final_test_loss" in capsys.readouterr().err
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0 and "--networks" in capsys.readouterr().out
