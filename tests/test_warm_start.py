"""Warm starts (population.init_from) through Net2Net transforms: the started network computes the
source's function (train and test data, both batch-norm modes, float64, below 1e-12), the stored
mapping and provenance, the first recorded losses equal the source's last, certified starting
points, other training methods starting from the transformed point, and the refusals at the config
boundary."""

import numpy as np
import pytest
import torch

from support import compose_config
from surfacekit import store, transforms, warm_start
from surfacekit.config import ConfigError, validate
from surfacekit.models import MLPSpec, forward, spec_from_config
from surfacekit.population import dataset_statistics, init_population, unflatten

BASE = ("progress=false", "threads=1", "dtype=float64", "population.size=2", "data.train_size=60", "data.test_size=40")


def _train(root, name, *args):
    from support import _in_process

    run_dir = root / name
    result = _in_process([*BASE, *args, f"hydra.run.dir={run_dir}"], root)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Tiny finished jobs: relu with batch norm (widths [4, 3], minibatches), plain relu, and tanh."""
    root = tmp_path_factory.mktemp("sources")
    return {
        "bn": _train(root, "bn", "model.widths=[4,3]", "model.batch_norm=true", "trainer.epochs=2", "trainer.batch_size=20"),
        "relu": _train(root, "relu", "model.widths=[4,3]", "trainer.epochs=2"),
        "tanh": _train(root, "tanh", "model.width=3", "model.activation=tanh", "model.loss=mse", "trainer.epochs=2"),
    }


def started(source, *overrides):
    """(source job, derived spec, Start) for a warm start from ``source`` with these population overrides."""
    cfg = compose_config([*BASE, f"population.init_from={source}", *overrides])
    validate(cfg, list(overrides))
    cfg = warm_start.configure(cfg)
    job = store.load_job(source)
    spec = spec_from_config(cfg.model, job.data.in_dim, job.data.num_outputs)
    return job, spec, warm_start.start(cfg, spec, torch.float64, "cpu")


def max_change(job, spec, begin, x, eval_mode):
    stats = {n: v for n, v in job.buffers.items() if ".bn_running_" not in n} if eval_mode else None
    before = forward(job.spec, job.params, x, stats)
    after = forward(spec, begin.params, x, begin.statistics if eval_mode else None)
    return float((before - after).abs().max()), float(before.abs().max())


@pytest.mark.parametrize("noise", [0.0, 0.3])
@pytest.mark.parametrize("layer", [0, 1])
def test_widen_preserves_the_function_in_both_batch_norm_modes(sources, layer, noise):
    job, spec, begin = started(sources["bn"], "population.transform=widen", f"population.transform_layer={layer}",
                               "population.new_width=7", f"population.transform_noise={noise}")
    assert spec.widths == ((7, 3) if layer == 0 else (4, 7)) and spec.batch_norm
    for x in (job.data.x_train, job.data.x_test):
        for eval_mode in (False, True):
            change, scale = max_change(job, spec, begin, x, eval_mode)
            assert scale > 0.1 and change < 1e-12, (eval_mode, change)
    # the mapped statistics are the widened network's own full-training-set statistics (evaluation mode's)
    exact = dataset_statistics(spec, begin.params, job.data.x_train)
    assert set(exact) == set(begin.statistics)
    for name, value in exact.items():
        assert torch.allclose(value, begin.statistics[name], rtol=0, atol=1e-12), name
    if noise:  # the copies differ, yet the function is kept
        w = begin.params[f"layers.{layer + 1}.weight"]
        mapping = torch.as_tensor(begin.groups["transform"]["mapping"])
        copy = int(torch.nonzero(mapping == mapping[-1])[0])
        assert not torch.allclose(w[:, :, copy], w[:, :, -1])


def test_deepen_preserves_the_function(sources):
    job, spec, begin = started(sources["relu"], "population.transform=deepen", "population.transform_layer=1")
    assert spec.widths == (4, 3, 3)
    for x in (job.data.x_train, job.data.x_test):
        change, scale = max_change(job, spec, begin, x, eval_mode=False)
        assert scale > 0.1 and change < 1e-12
    assert torch.equal(begin.params["layers.2.weight"], torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    assert begin.groups["transform"]["kind"] == "deepen"


def test_the_job_stores_mapping_and_provenance_and_continues_the_curves(sources, run_cli, tmp_path):
    source = sources["bn"]
    out = tmp_path / "wide"
    result = run_cli(*BASE, f"population.init_from={source}", "population.transform=widen", "population.new_width=6",
                     "population.transform_seed=3", "trainer.epochs=1", "trainer.batch_size=20", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    wide = store.load_job(out)
    assert wide.spec.widths == (6, 3) and wide.cfg.model.widths == [6, 3] and wide.cfg.model.batch_norm
    record = store.load_group(out, "transform")
    narrow = store.load_job(source)
    expected = transforms.widen(narrow.spec, narrow.params, 0, 6, seed=3)
    assert np.array_equal(record["mapping"], expected.mapping.numpy()) and record["kind"] == "widen"
    assert np.allclose(record["outgoing_scale"], expected.outgoing_scale.numpy(), rtol=0, atol=0)
    assert list(record["widths"]) == [6, 3] and int(record["layer"]) == 0
    provenance = store.load_group(out, "init_from")
    assert provenance["source_run_id"] == narrow.run_id and provenance["source_path"] == str(source.joinpath("results.h5"))
    assert provenance["source_sha256"] == store.file_sha256(source / "results.h5")
    assert list(wide.members["source_member"]) == list(narrow.members["member"])
    start = store.load_group(out, "init_params")
    assert np.allclose(start["layers.1.weight"], expected.params["layers.1.weight"].numpy(), rtol=0, atol=0)
    before, after = store.load_curves(source), store.load_curves(out)
    for name in ("train_loss", "test_loss", "train_error", "test_error"):
        assert np.allclose(after[name][:, 0], before[name][:, -1], rtol=0, atol=1e-12), name
    assert not np.allclose(after["train_loss"][:, -1], after["train_loss"][:, 0])  # it trained on
    again = run_cli(*BASE, f"population.init_from={source}", "population.transform=widen", "population.new_width=6",
                    "population.transform_seed=3", "trainer.epochs=1", "trainer.batch_size=20", f"hydra.run.dir={out}",
                    "resume=true")
    assert again.returncode == 0 and "is complete, skipping this job" in again.stdout, again.stderr


def test_certified_starting_points(sources, run_cli):
    source = sources["tanh"]
    result = run_cli("task=certify", f"source={source}", "progress=false", "threads=1", "certify.newton_max_iter=20",
                     "certify.max_iter=300")
    assert result.returncode == 0, result.stderr
    job, spec, begin = started(source, "population.init_point=certify", "population.transform=widen",
                               "population.new_width=5")
    theta = torch.as_tensor(store.load_group(source, "certify")["theta"])
    certified = unflatten(theta, job.spec)
    widened = transforms.widen(job.spec, certified, 0, 5)
    for name, value in widened.params.items():
        assert torch.equal(begin.params[name], value), name
    cert = store.load_group(source, "certify")
    assert list(begin.members["source_certified"]) == list(cert["certified"])
    assert list(begin.members["source_class"]) == list(cert["classification"])


@pytest.mark.parametrize("source, overrides, message", [
    (None, ["population.init_from=/no/such/job"], "population.init_from=/no/such/job is invalid"),
    ("relu", ["population.size=3"], "population.size=3 is invalid: expected 2"),
    ("relu", ["model.width=25"], "model.width=25 is invalid: expected unset or 4: population.init_from"),
    ("relu", ["model.widths=[4,3]", "population.transform=widen", "population.new_width=5"], "model.widths=[4, 3] is invalid"),
    ("relu", ["model.activation=tanh"], "model.activation=tanh is invalid: expected unset or relu"),
    ("relu", ["data.standardize=false"], "data.standardize=false is invalid: expected true"),
    ("relu", ["data.train_size=80"], "data.train_size=80 is invalid: expected 60"),
    ("relu", ["population.transform=widen"], "population.new_width=null is invalid"),
    ("relu", ["population.transform=widen", "population.new_width=3"], "population.new_width=3 is invalid: expected an integer >= 4"),
    ("relu", ["population.transform=widen", "population.transform_layer=2", "population.new_width=9"],
     "population.transform_layer=2 is invalid: expected a hidden layer of the source, 0..1"),
    ("relu", ["population.transform=deepen", "population.new_width=9"], "population.new_width=9 is invalid: expected null"),
    ("relu", ["population.transform_noise=0.1"], "population.transform_noise=0.1 is invalid: expected 0"),
    ("tanh", ["population.transform=deepen", "model.loss=mse"], "population.transform=deepen is invalid: expected none or widen"),
    ("bn", ["population.transform=deepen"], "deepen does not support batch norm"),
    ("relu", ["population.init_point=certify"], "population.init_point=certify is invalid: expected final, or run task=certify"),
    (None, ["population.transform=widen"], "population.transform=widen is invalid: expected none without population.init_from"),
    ("relu", ["population.transform=spread"], "population.transform=spread is invalid: expected one of"),
    ("relu", ["population.shared_init=true"], "population.shared_init=true is invalid: expected false with population.init_from"),
])
def test_refusals(sources, source, overrides, message):
    args = [*BASE, *([f"population.init_from={sources[source]}"] if source else []), *overrides]
    with pytest.raises(ConfigError) as info:
        validate(compose_config(args), args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_model_settings_equal_to_the_derived_ones_pass(sources):
    args = [*BASE, f"population.init_from={sources['tanh']}", "model.activation=tanh", "model.loss=mse",
            "population.transform=widen", "population.new_width=5", "model.width=5"]
    assert validate(compose_config(args), args) == []


def test_transforms_refuse_maxout():
    spec = MLPSpec(4, (3,), 2, activation="maxout", maxout_pieces=2)
    params = init_population(spec, [0])
    with pytest.raises(ValueError, match="maxout networks are not supported"):
        transforms.widen(spec, params, 0, 5)


@pytest.mark.parametrize("trainer", ["dtp", "scg"])
def test_other_training_methods_start_from_the_transformed_point(sources, run_cli, tmp_path, trainer):
    source = sources["relu"]
    out = tmp_path / trainer
    result = run_cli(*BASE, f"trainer={trainer}", "trainer.epochs=1", "trainer.batch_size=null",
                     f"population.init_from={source}", "population.transform=widen", "population.new_width=6",
                     "population.transform_noise=0.2", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    first, last = store.load_curves(out)["train_loss"][:, 0], store.load_curves(source)["train_loss"][:, -1]
    assert np.allclose(first, last, rtol=0, atol=1e-12)
    assert store.load_job(out).spec.widths == (6, 3)


def test_certified_start_takes_the_trained_objectives_analysis_and_records_it(run_cli, tmp_path):
    """A newer certify analysis of another objective (objective=data) does not replace the trained
    objective's points, and the file says which analysis the points came from."""
    source = _train(tmp_path, "decay", "model.width=3", "model.activation=tanh", "model.loss=mse", "trainer.epochs=2",
                    "optimizer.weight_decay=0.01")
    common = ("task=certify", f"source={source}", "progress=false", "threads=1", "certify.newton_max_iter=20",
              "certify.max_iter=300")
    assert run_cli(*common).returncode == 0
    trained = store.load_group(source, "certify")["theta"]
    assert run_cli(*common, "objective=data").returncode == 0
    assert not np.array_equal(store.load_group(source, "certify")["theta"], trained)  # the newest is the data objective's
    job, spec, begin = started(source, "population.init_point=certify")
    assert np.array_equal(torch.cat([begin.params[n].reshape(2, -1) for n in begin.params], 1).numpy(), trained)
    record = begin.groups["init_from"]
    assert str(record["certify_objective"]) == "trained"
    analysis = [a for a in store.collect(source).analyses if a.task == "certify"]
    chosen = next(a for a in analysis if np.array_equal(store.load_group(a.file, "certify")["theta"], trained))
    assert str(record["certify_analysis"]) == str(chosen.file.resolve())


def test_a_coupled_source_starts_its_workers_and_diverged_members_are_warned(run_cli, tmp_path, capsys):
    coupled = _train(tmp_path, "coupled", "model.width=3", "trainer.epochs=1", "trainer.coupling=easgd")
    job, spec, begin = started(coupled)
    workers = store.load_group(coupled, "params")  # the training file's /params: the K workers, no centre
    assert all(begin.params[n].shape[0] == 2 and np.array_equal(begin.params[n].numpy(), workers[n]) for n in workers)
    assert list(begin.members["source_member"]) == [0, 1]
    diverged = _train(tmp_path, "diverged", "model.width=3", "trainer.epochs=1", "population.lr_scale=[1,1e8]")
    assert list(store.load_members(diverged).diverged) == [False, True]
    capsys.readouterr()
    started(diverged)
    assert "population.init_from: members [1] of" in capsys.readouterr().err
