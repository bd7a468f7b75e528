"""task=critical end to end: finders from stored trajectories, one file beside the source, resumable."""

import numpy as np
import pytest
import torch

from surfacekit import store
from surfacekit.curvature import dense_hessian
from surfacekit.critical import acceptance_ratio

FAST = ["critical.starts=2", "critical.finders=[newton_mr,gradnorm]", "critical.options.newton_mr.max_iter=3",
        "critical.options.gradnorm.max_iter=3", "progress=false"]


def test_task_critical_end_to_end(run_cli, job_copy):
    out = run_cli("task=critical", f"source={job_copy.parent}", "critical.members=[1]", *FAST)
    assert out.returncode == 0, out.stderr
    assert "accepted" in out.stdout and "gradient-flat" in out.stdout and "first unit took" in out.stdout
    assert "asymptotic 0/" in out.stdout
    for finder in ("newton_mr", "gradnorm"):
        g = store.load_group(job_copy, f"critical/{finder}")
        n = len(g["loss"])  # two starts drawn; repeated trajectory points are used once
        assert 1 <= n <= 2 and len(set(g["start_eval"])) == n and set(g["member"]) == {1}
        assert g["theta"].shape[0] == n and np.all(g["hvps"] > 0) and np.all(g["index_count"] >= 0)
        # the default, scale-free acceptance, recomputed from the stored columns; the absolute one beside it
        ratios = [acceptance_ratio(a, b, c) for a, b, c in zip(g["grad_norm2"], g["start_grad_norm2"], g["spectral_norm"])]
        # with the point test and never for asymptotic endpoints
        point_test = g["step_ratio"] <= 1e-3
        assert np.array_equal(g["accepted"], (np.asarray(ratios) <= 1) & point_test & (g["status"] != "asymptotic"))
        assert set(g["status"]) <= {"critical", "asymptotic", "gradient_flat", "rejected"}
        assert np.allclose(g["acceptance_ratio"], ratios)
        assert np.array_equal(g["accepted_absolute"], g["grad_norm2"] < 1e-10)
        assert np.allclose(g["grad_norm2_relative"], g["grad_norm2"] / g["start_grad_norm2"])
        assert np.all(g["index_threshold"] < 0) and set(g["index_method"]) == {"dense"}
        assert np.all(np.isfinite(g["solve_residual"])) == (finder == "newton_mr")  # solve residual, nan otherwise
        assert np.all(np.isfinite(g["kernel_component"])) == (finder == "newton_mr")
    # the endpoints' indices, assembled together through the affine first layer, against an independent
    # dense Hessian from P products at each stored endpoint
    job = store.load_job(job_copy)
    loss_fn, _, _ = store.job_objective(job, 1)
    for finder in ("newton_mr", "gradnorm"):
        g = store.load_group(job_copy, f"critical/{finder}")
        for theta, count, tau in zip(g["theta"], g["index_count"], g["index_threshold"]):
            eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, torch.from_numpy(theta)))
            assert count == int((eig < tau).sum()) and tau == pytest.approx(-1e-5 * float(eig.abs().max()), rel=1e-9)
    (analysis,) = job_copy.parent.glob("analyses/critical-*/critical.h5")
    attrs = store.load_attrs(job_copy)
    import h5py

    with h5py.File(analysis) as f:
        assert f["jobs/0"].attrs["source_run_id"] == attrs["run_id"]
        assert f["jobs/0"].attrs["objective"] == "trained" and f["jobs/0"].attrs["dtype"] == "float64"
        assert f["jobs/0"].attrs["num_examples"] == 150


def test_task_says_to_train_with_snapshots(run_cli, tmp_path):
    train = run_cli("population.size=1", "trainer.epochs=1", "model.width=3", "progress=false",
                    f"hydra.run.dir={tmp_path}/run")
    assert train.returncode == 0
    out = run_cli("task=critical", f"source={tmp_path}/run", *FAST)
    assert out.returncode == 2
    assert "has no /trajectory to start from; train it with trainer.snapshots=true" in out.stderr


def test_task_uses_each_trajectory_point_once_and_warns(run_cli, job_copy):
    # the trajectory has 6 points (5 epochs): 20 starts cannot be distinct
    out = run_cli("task=critical", f"source={job_copy.parent}", "critical.members=[0]", "critical.starts=20",
                  "critical.finders=[newton_mr]", "critical.options.newton_mr.max_iter=2", "critical.compute_index=false",
                  "progress=false")
    assert out.returncode == 0, out.stderr
    assert "critical.starts=20 but the draw met only" in out.stderr and "each is used once" in out.stderr
    g = store.load_group(job_copy, "critical/newton_mr")
    assert len(g["start_eval"]) == len(set(g["start_eval"])) <= 6


def test_task_warns_about_diverged_members(run_cli, job_copy):
    import h5py

    with h5py.File(job_copy, "r+") as f:  # mark member 0 diverged, as the trainer does
        f["members/diverged"][0] = True
    out = run_cli("task=critical", f"source={job_copy.parent}", *FAST)
    assert out.returncode == 0, out.stderr
    assert "skipping diverged member(s) [0]" in out.stderr
    assert set(store.load_group(job_copy, "critical/newton_mr")["member"]) == {1}
