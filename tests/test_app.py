import subprocess
import sys

import h5py
import pytest
from hydra import compose, initialize_config_module

from surfacekit.config import ConfigError, validate_training
from surfacekit.store import load_curves, load_members

TINY = ["population.size=2", "trainer.epochs=2", "model.width=4", "data.train_size=100", "progress=false", "threads=1"]
GROUPS = {
    "data": ["digits", "mnist1d", "teacher", "mnist"],
    "optimizer": ["sgd", "momentum", "nesterov", "rprop", "adagrad", "rmsprop", "adadelta", "adam", "adamax"],
    "trainer": ["backprop"],
    "launcher": ["local", "joblib"],
}


def compose_config(overrides=()):
    with initialize_config_module(config_module="surfacekit.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def test_default_config_tree():
    cfg = compose_config()
    assert cfg.task == "train" and cfg.data.name == "digits" and cfg.optimizer.name == "sgd"
    assert cfg.trainer.method == "backprop" and cfg.population.size >= 1
    validate_training(cfg)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    if group == "optimizer":
        assert cfg.optimizer.name == option
        validate_training(cfg)


@pytest.mark.parametrize("override,key", [
    ("model.width=-3", "model.width"),
    ("optimizer.name=lbfgs", "optimizer.name"),
    ("population.size=0", "population.size"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("model.activation=gelu", "model.activation"),
    ("population.lr_scale=[1,2]", "population.lr_scale"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate_training(compose_config([override]))


def test_population_that_cannot_fit_in_memory_is_refused():
    from surfacekit.tasks.train import build

    with pytest.raises(ConfigError, match="population.size=100000000 .* GiB"):
        build(compose_config(["population.size=100000000"]))


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "surfacekit", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_run_writes_results(tmp_path):
    out = cli(*TINY, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "final_train_loss" in out.stdout and "mean" in out.stdout
    members = load_members(tmp_path / "run" / "results.h5")
    assert len(members) == 2 and {"final_test_loss", "grad_norm", "diverged", "seed"} <= set(members.columns)
    assert load_curves(tmp_path / "run" / "results.h5")["train_loss"].shape == (2, 3)
    with h5py.File(tmp_path / "run" / "results.h5") as f:
        for key in ("git_commit", "git_dirty", "torch_version", "numpy_version", "hostname", "start_time", "end_time",
                    "config", "overrides", "threads", "device", "schema_version"):
            assert key in f.attrs, key
        assert f.attrs["threads"] == 1 and "population.size=2" in f.attrs["overrides"]


def test_cli_bad_value_gives_one_line_error(tmp_path):
    out = cli(*TINY, "population.size=0", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["surfacekit: error: population.size=0 is invalid: expected an integer >= 1"]
    out = cli(*TINY, "data=mnist", f"data.path={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run2", cwd=tmp_path)
    assert out.returncode == 2 and "no such directory" in out.stderr and "Traceback" not in out.stderr


def test_cli_multirun_merges(tmp_path):
    out = cli("-m", *TINY, "model.width=3,5", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    members = load_members(tmp_path / "sweep" / "sweep.h5")
    assert len(members) == 4 and sorted(members["model.width"].unique()) == [3, 5]
    (tmp_path / "sweep" / "sweep.h5").unlink()
    merged = subprocess.run([sys.executable, "-c", "import sys; from surfacekit.store import merge_main; sys.exit(merge_main())",
                             str(tmp_path / "sweep")], capture_output=True, text=True)
    assert merged.returncode == 0 and "merged 2 job(s)" in merged.stdout
