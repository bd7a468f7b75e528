import subprocess
import sys

import numpy as np
import pytest
import torch

from surfacekit import store
from surfacekit.config import ConfigError
from surfacekit.curvature import dense_hessian
from surfacekit.population import flatten, member_loss_fn
from surfacekit.tasks._common import load_job
from surfacekit.tasks.spectrum import spectrum_for_file

SETTINGS = {"members": None, "top_k": 3, "bottom_k": 3, "tol": 1e-8, "max_steps": 2000, "threshold": None,
            "relative_threshold": 1e-5, "index_method": "auto", "dense_limit": 6000, "index_cap": 1000,
            "trace_probes": 10, "density_probes": 2, "density_steps": 20}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sweep") / "0"
    run_dir.mkdir()
    cmd = [sys.executable, "-m", "surfacekit", "population.size=2", "trainer.epochs=5", "model.width=3",
           "data.train_size=150", "progress=false", "threads=1", f"hydra.run.dir={run_dir}"]
    assert subprocess.run(cmd, cwd=run_dir, capture_output=True).returncode == 0
    return run_dir / "results.h5"


def test_spectrum_matches_dense_reference(trained):
    arrays = spectrum_for_file(trained, SETTINGS, progress=False)
    job = load_job(trained)
    d = job.data
    loss_fn = member_loss_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss)
    for k in range(2):
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, flatten(job.params)[k])).numpy()
        np.testing.assert_allclose(arrays["top"][k], eig[::-1][:3], rtol=1e-8)
        np.testing.assert_allclose(arrays["bottom"][k], eig[:3], rtol=1e-8, atol=1e-10 * eig.max())
        tau = -1e-5 * np.abs(eig).max()
        assert arrays["index_count"][k] == int((eig < tau).sum())
        assert arrays["index_threshold"][k] == pytest.approx(tau)
        assert abs(arrays["trace"][k] - eig.sum()) < 5 * arrays["trace_stderr"][k] + 1e-8
    members = store.load_members(trained)
    assert {"index_count", "index_fraction", "lambda_max", "lambda_min", "trace"} <= set(members.columns)
    assert (members.lambda_max == arrays["top"][:, 0]).all()


def test_reloaded_job_reproduces_stored_losses(trained):
    job = load_job(trained)
    d = job.data
    loss_fn = member_loss_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss)
    stored = store.load_members(trained).final_train_loss.to_numpy()
    for k in range(2):
        assert float(loss_fn(flatten(job.params)[k])) == pytest.approx(stored[k], rel=1e-5)  # trained in float32


def test_bad_member_selection(trained):
    with pytest.raises(ConfigError, match="spectrum.members"):
        spectrum_for_file(trained, {**SETTINGS, "members": [7]}, progress=False)


def test_cli_spectrum_task_on_sweep_directory(trained, tmp_path):
    out = subprocess.run([sys.executable, "-m", "surfacekit", "task=spectrum", f"source={trained.parent.parent}",
                          "spectrum.members=[1]", "spectrum.trace_probes=4", "spectrum.density_steps=10", "progress=false",
                          f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    spectrum = store.load_group(trained, "spectrum")
    assert spectrum["analysed"].tolist() == [False, True]
    assert np.isnan(spectrum["top"][0]).all() and np.isfinite(spectrum["top"][1]).all()
    missing = subprocess.run([sys.executable, "-m", "surfacekit", "task=spectrum", f"source={tmp_path}/none.h5",
                              f"hydra.run.dir={tmp_path}/x"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "no such results file" in missing.stderr
