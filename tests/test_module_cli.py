"""model=cnn|resnet|module from the command line: jobs, the results layout, post-hoc tasks, refusals."""

import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from support import TINY, UserNet
from surfacekit import curvature, store

MODULE_TINY = tuple(a for a in TINY if not a.startswith("model.width"))  # model=module has no width


def test_cnn_job_writes_the_usual_layout_and_the_posthoc_tasks_run(run_cli, tmp_path):
    out = run_cli(*TINY, "model=cnn", "trainer.snapshots=true", f"hydra.run.dir={tmp_path / 'cnn'}")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "cnn" / "results.h5"
    with h5py.File(path) as f:
        assert f["params/blocks.0.0.weight"].shape == (2, 3, 1, 3, 3) and f["params/head.weight"].shape == (2, 10, 3)
        assert set(f["buffers"]) == {f"blocks.{i}.1.{kind}" for i in (0, 1)
                                     for kind in ("bn_mean", "bn_var", "bn_running_mean", "bn_running_var")}
        assert f["trajectory/theta"].shape[1:] == (2, sum(f["params"][n].size // 2 for n in f["params"]))
    members = store.load_members(path)
    assert (members["width"] == 3).all() and (members["depth"] == 2).all()
    for mode in ("eval", "batch"):
        spec = run_cli("task=spectrum", f"source={path}", "spectrum.members=[0]", "spectrum.index_method=dense",
                       "spectrum.top_k=1", "spectrum.bottom_k=1", "spectrum.density_probes=1",
                       "spectrum.density_steps=5", "spectrum.trace_probes=2", f"bn_mode={mode}", "progress=false")
        assert spec.returncode == 0, spec.stderr
    table = store.load_members(path)
    assert table.loc[0, "spectrum_bn_mode"] in ("eval", "batch") and table.loc[0, "index_count"] >= 0
    land = run_cli("task=landscape", f"source={path}", "landscape.kind=slice1d", "landscape.slice.num=3",
                   "landscape.members=[1]", "progress=false")
    assert land.returncode == 0, land.stderr


def test_a_users_module_class_trains_and_rebuilds(run_cli, tmp_path):
    out = run_cli(*MODULE_TINY, "model=module", "model._target_=support.UserNet", "+model.args.hidden=3",
                  f"hydra.run.dir={tmp_path / 'user'}")
    assert out.returncode == 0, out.stderr
    job = store.load_job(tmp_path / "user")
    assert job.params["body.1.weight"].shape == (2, 3, 64)
    loss_fn, theta, info = store.job_objective(job, 1, objective="data", bn_mode="eval")
    assert info["batch_norm"] and info["bn_mode"] == "eval"
    net = UserNet((1, 8, 8), 10, hidden=3).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(job.params[name][1])
        net.body[2].running_mean.copy_(job.buffers["body.2.bn_mean"][1])
        net.body[2].running_var.copy_(job.buffers["body.2.bn_var"][1])
        expected = F.cross_entropy(net(job.data.x_train.reshape(-1, 1, 8, 8)), job.data.y_train)
    torch.testing.assert_close(loss_fn(theta), expected, rtol=1e-12, atol=0)


def test_sharpness_tracking_and_elastic_averaging_take_a_cnn(run_cli, tmp_path):
    tracked = run_cli(*TINY, "model=cnn", "trainer.batch_size=50", "trainer.track_sharpness=2",
                      f"hydra.run.dir={tmp_path / 'tracked'}")
    assert tracked.returncode == 0, tracked.stderr
    job = store.load_job(tmp_path / "tracked")
    with h5py.File(tmp_path / "tracked" / "results.h5") as f:
        assert f["tracked_sharpness"].attrs["bn_mode"] == "batch" and f["tracked_sharpness/step"][-1] == 4
        lambda_max = f["tracked_sharpness/lambda_max"][:, -1]  # after the last step: the final parameters
    for member in (0, 1):
        loss_fn, theta, _ = store.job_objective(job, member, objective="trained", bn_mode="batch")
        dense = float(torch.linalg.eigvalsh(curvature.dense_hessian(loss_fn, theta))[-1])
        assert lambda_max[member] == pytest.approx(dense, rel=1e-8)
    coupled = run_cli(*TINY, "model=cnn", "model.batch_norm=false", "trainer.coupling=easgd",
                      f"hydra.run.dir={tmp_path / 'easgd'}")
    assert coupled.returncode == 0, coupled.stderr
    with h5py.File(tmp_path / "easgd" / "results.h5") as f:
        assert set(f["centre/params"]) == set(f["params"]) and f["centre/params/blocks.0.0.weight"].shape == (1, 3, 1, 3, 3)
    refused = run_cli(*TINY, "model=cnn", "trainer.coupling=easgd")
    assert refused.returncode == 2 and "model.batch_norm=true is invalid" in refused.stderr


@pytest.mark.slow  # two jobs and the analysis: about 30 s
def test_the_choromanska_sweep_runs_over_convolutional_widths(run_cli, tmp_path):
    sweep = tmp_path / "s"
    out = run_cli("-m", "experiment=choromanska", "model=cnn", *TINY, "population.size=3", "model.width=2,3",
                  f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    members = store.load_members(sweep)
    assert sorted(members.width.unique()) == [2, 3] and (members.depth == 1).all()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
    import minima_histograms

    assert minima_histograms.main([str(sweep), "--bootstrap", "20"]) == 0
    table = pd.read_csv(sweep / "analysis" / "minima_histograms" / "minima_by_width.csv")
    assert table.width.tolist() == [2, 3] and table.networks.tolist() == [3, 3]
    for width, row in table.set_index("width").iterrows():
        assert row.test_mean == pytest.approx(members[members.width == width].final_test_loss.mean())


@pytest.mark.parametrize("args,message", [
    (["model=cnn", "trainer=dtp"], "trainer.method=dtp is invalid: expected one of ['backprop'] with "
                                   "model._target_=surfacekit.models.CNN"),
    (["model=resnet", "trainer=penalty", "trainer.batch_size=null"], "trainer.method=penalty is invalid"),
    (["model=module"], "model._target_ is required (no default): set model._target_=..."),
    (["model=module", "model._target_=nowhere.Net"], "model._target_=nowhere.Net cannot be imported"),
    (["model=module", "model._target_=support.TINY"], "model._target_=support.TINY is not a torch.nn.Module subclass"),
    (["model=cnn", "trainer=kfac"], "trainer.method=kfac is invalid: expected one of ['backprop']"),
    (["model=cnn", "model.activation=maxout"], "model.activation=maxout is invalid: expected relu, tanh, sigmoid or "
                                               "linear with model._target_=surfacekit.models.CNN"),
    (["model=cnn", "model.kernel_size=2"], "model.kernel_size=2 is invalid: expected an odd integer >= 1"),
    (["model=cnn", "data=teacher", "model.loss=mse"], "a CNN takes images (channels, height, width)"),
    (["model=module", "model._target_=support.UserNet", "+model.args.hiden=3"], "unexpected keyword argument 'hiden'"),
    (["model=module", "model._target_=support.FrozenNet"], "has parameters with requires_grad=False (body.1.weight): "
                                                           "a population trains every parameter"),
    (["model=module", "model._target_=support.RandomFeaturesNet"], "has buffers that depend on the seed (projection)"),
    (["model=module", "model._target_=support.UserNet", "model.args={hidden: 3}"],
     "model.args: model.args is a mapping that exists already: add entries with +model.args.KEY=VALUE"),
    (["model=module", "model._target_=support.UserNet", "+model.args={hidden: 3}"],
     "or replace it whole with ++model.args={KEY: VALUE}"),
    (["model=cnn", "trainer.batch_size=33"], "trainer.batch_size=33 is invalid: expected a size that leaves no batch of "
                                             "one example of the 100 training examples (batch norm needs at least 2"),
    (["model=module", "model._target_=support.UserNet", "trainer.batch_size=1"], "trainer.batch_size=1 is invalid"),
    (["model.batch_norm=true", "trainer.batch_size=99"], "trainer.batch_size=99 is invalid: expected a size that leaves"),
    (["model=resnet", "population.size=100000000"], "population.size=100000000 with 817 parameters per network needs about"),
])
def test_module_configs_are_refused_in_one_line(run_cli, args, message):
    out = run_cli(*(MODULE_TINY if "model=module" in args else TINY), *args)
    assert out.returncode == 2, out.stdout
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("surfacekit: error: ") and message in line, line


def test_the_whole_args_mapping_replaces_with_double_plus(run_cli, tmp_path):
    """docs/modules.md: ``++model.args={hidden: 3}`` sets the constructor arguments as a mapping."""
    out = run_cli(*MODULE_TINY, "model=module", "model._target_=support.UserNet", "++model.args={hidden: 3}",
                  f"hydra.run.dir={tmp_path / 'user'}")
    assert out.returncode == 0, out.stderr
    assert store.load_job(tmp_path / "user").params["body.1.weight"].shape == (2, 3, 64)
