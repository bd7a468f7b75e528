"""The command line: every config composes, every bad value is one line before any work, a job runs."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from support import ROOT, TINY, compose_config
from surfacekit.config import ConfigError, validate
from surfacekit.store import load_curves, load_members

CONF = ROOT / "conf"
OPTIONS = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))
NEEDS = {("data", "mnist"): ["data.path=/tmp"], ("experiment", "choromanska_mnist"): ["data.path=/tmp"],
         ("data", "cifar10"): ["data.path=/tmp"], ("data", "cifar100"): ["data.path=/tmp"],
         ("model", "module"): ["model._target_=surfacekit.models.CNN"],
         ("data", "teacher"): ["model.loss=mse"], ("task", "spectrum"): ["source=x"], ("task", "critical"): ["source=x"],
         ("task", "landscape"): ["source=x"], ("task", "sharpness"): ["source=x"], ("task", "certify"): ["source=x"]}


def test_every_yaml_option_is_listed():
    groups = {g for g, _ in OPTIONS}
    assert groups == {"data", "model", "optimizer", "trainer", "task", "launcher", "experiment", "zoo"}
    from surfacekit.config import TASKS
    from surfacekit.optim import OPTIMIZERS

    assert {o for g, o in OPTIONS if g == "optimizer"} == set(OPTIMIZERS)
    assert {o for g, o in OPTIONS if g == "task"} == set(TASKS)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}", *NEEDS.get((group, option), [])]
    cfg = compose_config(overrides)
    validate(cfg, overrides)
    if group == "task":
        assert cfg.task == option
    if group == "optimizer":
        assert cfg.optimizer.name == option


def test_default_config_tree():
    cfg = compose_config()
    assert cfg.task == "train" and cfg.data.name == "digits" and cfg.optimizer.name == "sgd"
    assert cfg.trainer.method == "backprop" and cfg.population.size >= 1
    assert cfg.objective == "trained" and cfg.bn_mode == "batch"
    assert validate(cfg) == []


BAD = [  # (overrides, text the one-line message must contain)
    (["population.size=0"], "population.size=0 is invalid: expected an integer >= 1"),
    (["model.width=-3"], "model.width=-3 is invalid"),
    (["optimizer.name=lbfgs"], "optimizer.name=lbfgs is invalid"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 is invalid"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 is invalid"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is invalid: expected a finite number > 0"),
    (["model.activation=gelu"], "model.activation=gelu is invalid"),
    (["population.lr_scale=[1,2,3]"], "population.lr_scale=[1, 2, 3] is invalid"),
    (["seed=1.5"], "seed=1.5 is invalid: expected an integer >= 0"),
    (["seed=-1"], "seed=-1 is invalid"),
    (["optimizer=momentum", "optimizer.momentum=2"], "optimizer.momentum=2 is invalid"),
    (["trainer.eval_every=0"], "trainer.eval_every=0 is invalid"),
    (["chunk_size=0"], "chunk_size=0 is invalid"),
    (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9] is invalid"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1 is invalid"),
    (["task=spectrum", "source=x", "spectrum.top_k=0"], "spectrum.top_k=0 is invalid"),
    (["task=spectrum", "source=x", "spectrum.threshold=0.1"], "spectrum.threshold=0.1 is invalid"),
    (["task=spectrum"], "source is required for task=spectrum"),
    (["data=teacher"], "model.loss=cross_entropy is invalid: expected mse with data=teacher"),
    (["trainer=dtp", "model.batch_norm=true"], "model.batch_norm=true is invalid: expected false with trainer=dtp"),
    (["trainer=penalty", "model.residual=true"], "model.residual=true is invalid: expected false with trainer=penalty"),
    (["trainer=penalty", "trainer.batch_size=50"], "trainer.batch_size=50 is invalid: expected null with trainer=penalty"),
    (["population=2"], "population is a group of settings, not a value; did you mean population.size=2?"),
    (["data=mnist"], "data.path is required"),
    (["+model.widht=10"], "+model.widht=10: no such setting; did you mean model.width"),
    (["model.widht=10"], "model.widht: no such setting; did you mean model.width"),
    (["+datta=mnist"], "+datta=mnist: no such setting; did you mean data?"),
    (["optimizer=adamm"], "optimizer=adamm is unknown; choose one of"),
    (["task=nope"], "task=nope is unknown"),
    (["spectrum.top_k=3"], "the spectrum.* settings belong to task=spectrum"),
    (["data=mnist", "data.path=~/data"], "a path starting with ~"),
    (["model.width=3,x"], "model.width=x is invalid"),  # every value of a sweep is checked (with -m)
    (["++model.widht=10"], "++model.widht=10: no such setting; did you mean model.width"),
    (["~model.width"], "~model.width: deleting a setting is not supported"),
    (["task=spectrum", "source=x", "optimizer.lr=0.1"], "optimizer.lr has no effect on task=spectrum"),
    (["task=landscape", "source=x", "landscape.slice.lo=1", "landscape.slice.hi=0"],
     "landscape.slice.hi=0 is invalid: expected > landscape.slice.lo=1"),
    (["model.widths=[5,5]", "model.width=7"], "model.width has no effect when model.widths is set"),
    (["task=critical", "source=x", "critical.options.newton.krylov_dimm=3"],
     "critical.options.newton.krylov_dimm: no such setting; did you mean critical.options.newton.krylov_dim"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_command_line_is_one_line_before_any_work(run_cli, tmp_path, overrides, message):
    multirun = ["-m"] if any("," in o for o in overrides) else []
    posthoc = any(o.startswith("task=") for o in overrides)  # training settings would be refused first
    out = run_cli(*multirun, *([] if posthoc else TINY[1:]), *overrides, f"hydra.run.dir={tmp_path}/run",
                  f"hydra.sweep.dir={tmp_path}/s")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("surfacekit: error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()  # rejected before any work


def test_multirun_flag_after_overrides_says_so(run_cli):
    out = run_cli("experiment=choromanska", "-m", "model.width=5,50")
    assert out.returncode == 2
    assert out.stderr.strip() == ("surfacekit: error: -m/--multirun must come before the overrides: "
                                  "surfacekit -m experiment=choromanska model.width=5,50")


def test_memory_refusal_states_enough_digits():
    from surfacekit.tasks.train import build

    with pytest.raises(ConfigError, match=r"population.size=100000000 .* needs about [0-9.]+ GiB"):
        build(compose_config(["population.size=100000000"]))
    with pytest.raises(ConfigError, match=r"needs about 7\.[0-9]{2} MiB, more than the 1\.00 MiB available"):
        build(compose_config(["population.size=64", "memory_limit_gb=0.0009765625"]))


def test_batch_larger_than_training_set_is_refused():
    from surfacekit.tasks.train import build

    with pytest.raises(ConfigError, match=r"trainer.batch_size=5000 is invalid: expected <= 1000"):
        build(compose_config(["trainer.batch_size=5000"]))


def test_cli_run_writes_results(run_cli, tmp_path):
    out = run_cli(*TINY, f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    assert "final_train_loss" in out.stdout and "mean" in out.stdout and "0 of 2" in out.stdout
    members = load_members(tmp_path / "run" / "results.h5")
    assert len(members) == 2 and {"final_test_loss", "grad_norm", "diverged", "seed"} <= set(members.columns)
    assert load_curves(tmp_path / "run" / "results.h5")["train_loss"].shape == (2, 3)
    with h5py.File(tmp_path / "run" / "results.h5") as f:
        for key in ("git_commit", "git_dirty", "torch_version", "numpy_version", "hostname", "start_time", "end_time",
                    "config", "overrides", "threads", "device", "schema_version", "run_id", "warnings"):
            assert key in f.attrs, key
        assert f.attrs["threads"] == 1 and "population.size=2" in f.attrs["overrides"]


def test_dubious_value_warns_and_is_stored(run_cli, tmp_path):
    out = run_cli(*TINY, "optimizer=rprop", "trainer.batch_size=50", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr
    assert "surfacekit: warning: optimizer=rprop with trainer.batch_size=50" in out.stderr
    with h5py.File(tmp_path / "run" / "results.h5") as f:
        assert "Rprop adapts its steps" in f.attrs["warnings"]


def test_all_diverged_job_exits_nonzero_with_a_summary(run_cli, tmp_path):
    out = run_cli(*TINY, "optimizer.lr=1e6", "trainer.divergence_loss=1e3", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("surfacekit: error: all 2 members diverged")
    assert (tmp_path / "run" / "results.h5").exists()


def test_run_directories_are_unique_per_job(run_cli, tmp_path):
    for _ in range(2):
        assert run_cli(*TINY, "trainer.epochs=0").returncode == 0
    runs = sorted(Path(tmp_path).glob("outputs/runs/*/*/results.h5"))
    assert len(runs) == 2 and runs[0].parent != runs[1].parent


def test_subprocess_smoke_run(run_cli, tmp_path):
    """The one default-suite run of the real command in its own process."""
    out = run_cli(*TINY, f"hydra.run.dir={tmp_path}/run", subprocess=True)
    assert out.returncode == 0, out.stderr
    assert len(load_members(tmp_path / "run")) == 2


def test_memory_sizes_keep_significant_digits():
    from surfacekit.config import format_gib

    assert format_gib(3.24) == "3.2 GiB"
    assert format_gib(41 / 1024) == "41 MiB"
    assert format_gib(7.2 / 1024) == "7.20 MiB"
    assert format_gib(0.0031 / 1024) == "0.0031 MiB"


def test_training_summary_statistics_leave_out_diverged_members():
    from surfacekit.tasks.train import SUMMARY_COLUMNS, summary

    members = {c: np.array([1.0, 3.0, 1e30]) for c in SUMMARY_COLUMNS}
    members["member"] = np.arange(3)
    members["diverged"] = np.array([False, False, True])
    text = summary(members)
    mean_row = next(line for line in text.splitlines() if line.startswith("mean"))
    assert mean_row.split()[3] == "2" and "1 of 3" in mean_row


def test_finder_options_are_checked_against_the_finder():
    """A preset or YAML that names an option the finder does not take is refused by the boundary."""
    cfg = compose_config(["task=critical", "source=x"])
    OmegaConf.set_struct(cfg, False)
    cfg.critical.options.newton["krylov_dimm"] = 3
    with pytest.raises(ConfigError, match="critical.options.newton.krylov_dimm: newton has no option krylov_dimm; "
                                          "did you mean krylov_dim"):
        validate(cfg)


def test_a_zero_index_threshold_is_legal_with_a_warning():
    """As in curvature.index: 0 is allowed and warned about (rounding zeros would count as negative)."""
    for task, key in (("spectrum", "spectrum.threshold"), ("critical", "critical.index.threshold")):
        warnings = validate(compose_config([f"task={task}", "source=x", f"{key}=0"]))
        assert len(warnings) == 1 and warnings[0].startswith(f"{key}=0 counts eigenvalues")
        assert validate(compose_config([f"task={task}", "source=x", f"{key}=-0.01"])) == []


def test_help_header_names_every_task():
    """`surfacekit --help` starts with the tasks a job can run: every option of the task group."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parent.parent / "conf"
    header = OmegaConf.load(conf / "config.yaml").hydra.help.header
    words = set(header.replace(",", " ").replace("(", " ").replace(")", " ").replace(";", " ").replace("=", " ").split())
    missing = [p.stem for p in (conf / "task").glob("*.yaml") if p.stem not in words]
    assert not missing, f"tasks missing from the --help header: {missing}"


@pytest.mark.parametrize("args, warned, enabling", [
    (["trainer.tau=5", "trainer.beta=0.5"], "trainer.tau, trainer.beta has no effect with trainer.coupling=none",
     "trainer.coupling=easgd"),
    (["trainer.sharpness_tol=1e-3"], "trainer.sharpness_tol has no effect with trainer.track_sharpness=0",
     "trainer.track_sharpness=5"),
    (["model.depth=0", "model.batch_norm=true", "model.width=7"],
     "model.batch_norm, model.width has no effect with model.depth=0 (no hidden layer", "model.depth=1"),
])
def test_settings_that_need_another_setting_warn(args, warned, enabling):
    assert any(warned in w for w in validate(compose_config(args), args))
    args = [*args, enabling]
    assert not any("has no effect" in w for w in validate(compose_config(args), args))
