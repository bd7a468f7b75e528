"""task=landscape end to end: paths and slices in their own file, diverged members skipped."""

import h5py
import numpy as np
import pytest

from support import compose_config
from surfacekit import store
from surfacekit.config import ConfigError, validate


def test_landscape_task_writes_its_file(run_cli, job_copy, tmp_path):
    out = run_cli("task=landscape", f"source={job_copy}", "landscape.kind=[interpolation,slice1d,slice2d]",
                  "landscape.interpolation.num=21", "landscape.slice.num=5", "progress=false")
    assert out.returncode == 0, out.stderr
    assert "barrier" in out.stdout
    (analysis,) = job_copy.parent.glob("analyses/landscape-*/landscape.h5")
    with h5py.File(analysis, "r") as f:
        g = f["jobs/0/landscape"]
        init = g["interpolation_init"]
        assert init["train_loss"].shape == (2, 21) and init["train_loss"].attrs["dims"] == "member,alpha"
        assert init["alpha"].attrs["dims"] == "alpha" and list(init["member"][()]) == [0, 1]
        pairs = g["interpolation_pairs"]
        assert pairs["test_loss"].shape == (1, 21) and pairs["test_loss"].attrs["dims"] == "pair,alpha"
        assert (pairs["train_barrier"][()] >= 0).all()
        alpha = init["alpha"][()]
        final = store.load_members(job_copy)["final_train_loss"].to_numpy()
        np.testing.assert_allclose(init["train_loss"][:, np.argmin(abs(alpha - 1))], final, rtol=1e-5)
        assert g["slice1d"]["train_loss"].shape == (2, 5) and g["slice1d"]["train_loss"].attrs["dims"] == "member,x"
        s2 = g["slice2d"]
        assert s2["train_loss"].shape == (2, 5, 5) and s2["train_loss"].attrs["dims"] == "member,x,y"
        np.testing.assert_allclose(s2["train_loss"][:, 2, 2], init["train_loss"][:, np.argmin(abs(alpha - 1))], rtol=1e-12)
    assert store.load_group(job_copy, "landscape/slice2d")["train_loss"].shape == (2, 5, 5)


def test_diverged_members_are_skipped_with_a_warning(run_cli, tmp_path):
    train = run_cli("population.size=2", "trainer.epochs=2", "model.width=3", "data.train_size=100", "progress=false",
                    "population.lr_scale=[1,1e6]", "trainer.divergence_loss=1e3", f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0, train.stderr
    out = run_cli("task=landscape", f"source={tmp_path}/run", "landscape.kind=slice1d", "landscape.slice.num=3",
                  "progress=false")
    assert out.returncode == 0, out.stderr
    assert "surfacekit: warning: landscape: job run: skipping diverged member(s) [1]" in out.stderr
    slices = store.load_group(tmp_path / "run", "landscape/slice1d")
    assert slices["member"].tolist() == [0] and np.isfinite(slices["train_loss"]).all()


@pytest.mark.parametrize("overrides,message", [
    (["landscape.kind=slice3d"], "landscape.kind"),
    (["landscape.slice.normalization=unit"], "landscape.slice.normalization"),
    (["landscape.interpolation.pairs=some"], "landscape.interpolation.pairs"),
    # no grid point in [0, 1] (before: a RuntimeError deep inside is_monotone); lo=0, hi=1 gives both ends
    (["landscape.interpolation.num=2"], r"landscape.interpolation.num=2 is invalid: .* at least 2 points in \[0, 1\].*"
                                        r"it has 0; num >= 4"),
    (["landscape.interpolation.num=3"], r"it has 1; num >= 4"),
])
def test_bad_settings_name_the_key(overrides, message):
    overrides = ["task=landscape", "source=x", *overrides]
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides), overrides)


def test_slice_seeds_are_fresh_by_default_and_reproducible_when_given(run_cli, job_copy):
    import json
    import shutil

    from surfacekit.seeds import derive_seed

    args = ["task=landscape", f"source={job_copy}", "landscape.kind=slice1d", "landscape.slice.num=3", "progress=false"]

    def analysis(seed):
        for path in job_copy.parent.glob("analyses/landscape-*/landscape.h5"):
            with h5py.File(path) as f:
                if json.loads(f.attrs["settings"])["slice"]["seed"] == seed:
                    return path
        raise AssertionError(f"no analysis with slice.seed={seed}")

    assert run_cli(*args).returncode == 0
    fresh = store.load_group(analysis(None), "landscape/slice1d")
    assert len(set(fresh["seed"].tolist())) == 2  # one fresh seed per member, stored
    assert run_cli(*args, "landscape.slice.seed=5").returncode == 0
    given = store.load_group(analysis(5), "landscape/slice1d")
    assert given["seed"].tolist() == [derive_seed(5, 0), derive_seed(5, 1)]
    shutil.rmtree(analysis(5).parent)
    assert run_cli(*args, "landscape.slice.seed=5").returncode == 0
    np.testing.assert_array_equal(store.load_group(analysis(5), "landscape/slice1d")["directions"], given["directions"])


def test_tiny_interpolation_grids_that_reach_both_ends_are_accepted():
    for overrides in (["landscape.interpolation.num=4"], ["landscape.interpolation.num=2", "landscape.interpolation.lo=0",
                                                           "landscape.interpolation.hi=1"]):
        overrides = ["task=landscape", "source=x", *overrides]
        validate(compose_config(overrides), overrides)


@pytest.mark.parametrize("num", [2, 4])
def test_slice_summary_centre_is_the_point_nearest_the_solution(run_cli, job_copy, num):
    # before: v[:, num // 2] (x = +1 for num=2, x = 1/3 for num=4), reported as the centre
    out = run_cli("task=landscape", f"source={job_copy}", "landscape.kind=slice1d", f"landscape.slice.num={num}",
                  "landscape.splits=[train]", "progress=false")
    assert out.returncode == 0, out.stderr
    g = store.load_group(job_copy, "landscape/slice1d")
    near = int(np.abs(g["x"]).argmin())
    assert g["x"][near] == -1.0 if num == 2 else g["x"][near] == pytest.approx(-1 / 3)
    assert f"center at x={g['x'][near]:.4g} (the grid holds no 0" in out.stdout
    row = out.stdout.split("center at", 1)[1].splitlines()[3].split()  # header, "member", then member 0
    assert float(row[2]) == pytest.approx(g["train_loss"][0, near], rel=1e-3)
