"""``task=critical`` end to end, and the analysis helpers of analyses/index_vs_loss.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from surfacekit.critical import acceptance_ratio
from surfacekit.store import load_group

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd):
    # Run this checkout's package (an installed surfacekit may point at another tree).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "surfacekit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_task_critical_end_to_end(tmp_path):
    run_dir = tmp_path / "train"
    out = cli("population.size=2", "trainer.epochs=3", "trainer.snapshots=true", "model.width=4",
              "data.train_size=100", "progress=false", "threads=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    source = run_dir / "results.h5"
    out = cli("task=critical", f"source={source}", "critical.starts=2", "critical.members=[1]",
              "critical.finders=[newton_mr,gradnorm]", "critical.options.newton_mr.max_iter=3",
              "critical.options.gradnorm.max_iter=3", "progress=false", "threads=1",
              f"hydra.run.dir={tmp_path / 'crit'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "accepted" in out.stdout and "gradient-flat" in out.stdout
    for finder in ("newton_mr", "gradnorm"):
        g = load_group(source, f"critical/{finder}")
        assert g["loss"].shape == (2,) and set(g["member"]) == {1}
        assert g["theta"].shape[0] == 2 and np.all(g["hvps"] > 0) and np.all(g["index_count"] >= 0)
        # the default, scale-free acceptance, recomputed from the stored columns
        columns = zip(g["grad_norm2"], g["start_grad_norm2"], g["spectral_norm"])
        ratios = [acceptance_ratio(a, b, c) for a, b, c in columns]
        assert np.array_equal(g["accepted"], np.asarray(ratios) <= 1)
        assert np.allclose(g["grad_norm2_relative"], g["grad_norm2"] / g["start_grad_norm2"])
        assert np.all(g["index_threshold"] < 0) and set(g["index_method"]) == {"dense"}
        assert np.all(np.isfinite(g["solve_residual"])) == (finder == "newton_mr")  # solve residual, nan otherwise
    assert load_group(source, "members")["member"].shape == (2,)  # the training results are still there
def test_task_says_to_train_with_snapshots(tmp_path):
    from surfacekit.store import ResultsError, provenance, write_results
    from surfacekit.tasks.critical import check_trajectory

    path = write_results(tmp_path / "results.h5", {"members": {"member": np.arange(2)}}, {**provenance(), "kind": "job"})
    with pytest.raises(ResultsError, match="trainer.snapshots=true"):
        check_trajectory(path)


# ----------------------------------------------------------------------------- analysis helpers

def test_bray_dean_curve_and_fit():
    sys.path.insert(0, str(ROOT / "analyses"))
    from index_vs_loss import bray_dean, fit_bray_dean

    t = np.array([0.0, 1.0, 2.0, 3.0])
    assert np.allclose(bray_dean(t, 0.0, 1.0), [0.0, 0.5, 1.0, 1.0])
    small = 1e-3  # near threshold alpha ~ (4 sqrt(2) / (3 pi)) t^{3/2} ~ 0.6 t^{3/2}
    assert abs(bray_dean(np.array([small]), 0.0, 1.0)[0] / small**1.5 - 4 * np.sqrt(2) / (3 * np.pi)) < 1e-3
    eps = np.linspace(0.2, 1.0, 40)
    eps_c, w = fit_bray_dean(eps, bray_dean(eps, 0.1, 2.5))
    assert abs(eps_c - 0.1) < 1e-4 and abs(w - 2.5) < 1e-3


def test_spearman_permutation():
    from surfacekit.stats import spearman_permutation

    x = np.arange(30.0)
    rho, p = spearman_permutation(x, x**3, n_perm=500)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 501)
    rho, p = spearman_permutation(x, np.random.default_rng(0).permutation(x), n_perm=500)
    assert abs(rho) < 0.5 and p > 0.05
