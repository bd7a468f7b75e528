"""task=certify: certified points joined on (job, member), checked against the dense Hessian and the
gradient of the trained objective at the stored points; ReLU endpoints never certified; resumable,
one-line errors."""

import numpy as np
import pytest
import torch

from support import TINY
from surfacekit import store
from surfacekit.curvature import dense_hessian
from surfacekit.population import evaluate, unflatten

FAST = ["progress=false"]


@pytest.fixture(scope="module")
def tanh_job(tmp_path_factory):
    """Two 64-3-10 tanh members trained with weight decay 0.01 (a job whose minima exist)."""
    from support import _in_process

    root = tmp_path_factory.mktemp("certify")
    run_dir = root / "sweep" / "0"
    out = _in_process([*TINY, "model.activation=tanh", "optimizer.weight_decay=0.01", "trainer.epochs=3",
                       "dtype=float64", f"hydra.run.dir={run_dir}"], root)
    assert out.returncode == 0, out.stderr
    return run_dir / "results.h5"


def test_certified_minima_match_dense_and_join_members(run_cli, tanh_job):
    sweep = tanh_job.parent.parent
    before = store.file_sha256(tanh_job)
    out = run_cli("task=certify", f"source={sweep}", *FAST)
    assert out.returncode == 0, out.stderr
    assert "2 members: 2 certified (2 minima" in out.stdout
    assert store.file_sha256(tanh_job) == before
    group = store.load_group(sweep, "certify", job="0")
    members = store.load_members(sweep)
    assert members["certified"].all() and (members["cert_class"] == "minimum").all()
    assert (members["certify_objective"] == "trained").all() and (members["certify_weight_decay"] == 0.01).all()
    job = store.load_job(tanh_job)
    for k in range(2):
        loss_fn, _, _ = store.job_objective(job, k)
        theta = torch.from_numpy(group["theta"][k])
        t = theta.clone().requires_grad_(True)
        value = loss_fn(t)
        (g,) = torch.autograd.grad(value, t)
        assert float(g @ g) < 1e-10 and float(g @ g) == pytest.approx(members["cert_grad_norm2"][k], rel=1e-6, abs=1e-24)
        assert float(value.detach()) == pytest.approx(members["cert_objective"][k], rel=1e-12)
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta))
        assert members["cert_index"][k] == int((eig < -1e-5 * eig.abs().max()).sum()) == 0
        assert members["cert_lambda_min"][k] == pytest.approx(float(eig[0]), rel=1e-6)
        assert members["cert_lambda_max"][k] == pytest.approx(float(eig[-1]), rel=1e-6)
        test_loss, _ = evaluate(job.spec, unflatten(theta, job.spec), job.data.x_test, job.data.y_test, "cross_entropy")
        assert members["cert_test_loss"][k] == pytest.approx(float(test_loss[0]), rel=1e-12)
        assert members["cert_distance"][k] == pytest.approx(float((theta - torch.from_numpy(
            np.concatenate([v[k].reshape(-1) for v in store.load_params(tanh_job).values()]))).norm()), rel=1e-6)
    assert (group["index_method"] == "dense").all() and (group["stop"] != "").all()
    again = run_cli("task=certify", f"source={sweep}", *FAST)
    assert again.returncode == 0 and "1 already analysed with these settings, 0 to do" in again.stdout


def test_relu_endpoints_are_never_certified(run_cli, job_copy):
    out = run_cli("task=certify", f"source={job_copy}", "certify.max_iter=300", "certify.newton_max_iter=20", *FAST)
    assert out.returncode == 0, out.stderr
    assert "without weight decay" in out.stderr  # the relu test job: cross-entropy, no weight decay
    members = store.load_members(job_copy)
    assert not members["certified"].any()
    assert set(members["cert_reason"]) <= {"non-smooth", "diverged"}
    assert (members["cert_index"] == -1).all()


def test_bad_settings_are_one_line_errors(run_cli, job_copy):
    bad = run_cli("task=certify", f"source={job_copy}", "certify.newton=bfgs", *FAST)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("surfacekit: error: certify.newton=bfgs is invalid")
    limit = run_cli("task=certify", f"source={job_copy}", "certify.index.dense_limit=5000", *FAST)
    assert limit.returncode == 2  # was silently taken as 4,000, the batched path's limit
    assert "certify.index.dense_limit=5000 is invalid: expected an integer >= 1 <= 4000 or null" in limit.stderr
    missing = run_cli("task=certify", *FAST)
    assert missing.returncode == 2 and "source is required for task=certify" in missing.stderr


def test_batched_units_equal_the_member_path(run_cli, tanh_job):
    """Both members in one unit (lockstep L-BFGS-B, curvature from their dense Hessians assembled and
    diagonalised together) against one member per unit with the inertia index and Lanczos extremes."""
    sweep = tanh_job.parent.parent
    results = {}
    for name, args in (("batched", ["certify.batch_size=2"]),
                       ("member", ["certify.batch_size=1", "certify.index.method=inertia"]),
                       ("lanczos", ["certify.index.dense_limit=10"])):  # auto beyond the limit: Lanczos
        out = run_cli("task=certify", f"source={sweep}", *args, *FAST)
        assert out.returncode == 0, out.stderr
        results[name] = (store.load_members(sweep), store.load_group(sweep, "certify", job="0"))
    (a, ga), (b, gb) = results["batched"], results["member"]
    assert list(ga["index_method"]) == ["dense"] * 2 and list(gb["index_method"]) == ["inertia"] * 2
    assert list(results["lanczos"][1]["index_method"]) == ["lanczos"] * 2
    assert (results["lanczos"][0]["cert_index"] == a["cert_index"]).all()
    assert (a["cert_class"] == b["cert_class"]).all() and (a["cert_index"] == b["cert_index"]).all()
    for column in ("cert_lambda_min", "cert_lambda_max"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-6)
    np.testing.assert_allclose(a["cert_objective"], b["cert_objective"], rtol=1e-12)
    np.testing.assert_allclose(ga["theta"], gb["theta"], atol=1e-7 * np.abs(gb["theta"]).max())


def test_a_later_run_on_some_members_keeps_the_others_joined(run_cli, tanh_job, tmp_path):
    """load_members fills each member from the newest certify analysis that analysed it: a run on
    member 1 alone must not blank member 0's columns from an earlier run on both."""
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(tanh_job.parent.parent, sweep, ignore=shutil.ignore_patterns("analyses"))
    both = run_cli("task=certify", f"source={sweep}", *FAST)
    assert both.returncode == 0, both.stderr
    first = store.load_members(sweep)
    one = run_cli("task=certify", f"source={sweep}", "certify.members=[1]", "certify.margin=0.005", *FAST)
    assert one.returncode == 0, one.stderr
    joined = store.load_members(sweep)
    assert joined["cert_class"].tolist() == ["minimum", "minimum"]
    assert joined["cert_objective"][0] == first["cert_objective"][0]
    assert joined["certify_analysis"][0] == first["certify_analysis"][0] != joined["certify_analysis"][1]


@pytest.mark.parametrize("method", ["auto", "inertia", "dense"])
def test_an_index_that_cannot_fit_is_refused_before_any_work(run_cli, job_copy, monkeypatch, method):
    """memory_limit_gb too small for the index: one line naming the estimate and the limit, and no
    member is converged first (the refusal used to come after the unit's L-BFGS-B runs)."""
    from surfacekit.tasks import certify

    monkeypatch.setattr(certify, "converge_population", lambda *a, **k: pytest.fail("converged before refusing"))
    out = run_cli("task=certify", f"source={job_copy}", f"certify.index.method={method}", "memory_limit_gb=1e-7",
                  *FAST)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("surfacekit: error: certify: 1 source job(s) not analysed")
    assert "needs about" in line and "GiB" in line.split("more than")[1]


def test_a_non_finite_hessian_fails_the_job_in_one_line(run_cli, tanh_job, tmp_path, monkeypatch):
    """A NaN Hessian product at a finite point (the dense curvature of a unit) ends that job with one
    line naming it, not a traceback."""
    import shutil

    from surfacekit.curvature import NonFiniteError
    from surfacekit.tasks import _analysis

    def nan_products(*args, **kwargs):
        raise NonFiniteError("Hessian-vector product 3 of member 0 (row of thetas) is not finite")

    sweep = tmp_path / "sweep"
    shutil.copytree(tanh_job.parent.parent, sweep, ignore=shutil.ignore_patterns("analyses"))
    monkeypatch.setattr(_analysis, "population_spectrum", nan_products)  # the batch's dense pass
    out = run_cli("task=certify", f"source={sweep}", *FAST)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("surfacekit: error: certify: 1 source job(s) not analysed (0: Hessian-vector product 3")


def test_diverged_members_are_named_when_skipped(run_cli, job_copy):
    import h5py

    with h5py.File(job_copy, "r+") as f:  # mark member 1 diverged, as the trainer does
        f["members/diverged"][1] = True
    out = run_cli("task=certify", f"source={job_copy}", "certify.members=[1]", *FAST)
    assert "certify: job" in out.stderr and "skipping diverged member(s) [1] (diverged in training)" in out.stderr
