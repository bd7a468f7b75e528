"""``task=train``: train a population on a data set and write ``results.h5`` with members, curves, params."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from surfacekit import warm_start
from surfacekit.config import DTYPES, ConfigError, check_memory, resolve_device, validate_training, validate_with_data
from surfacekit.data import Dataset, load_data
from surfacekit.jobs import JobError, finished_results, job_attributes
from surfacekit.models import MLPSpec, Spec, activation_size, build_spec, num_params
from surfacekit.population import init_population, member_seed
from surfacekit.store import RESULTS_NAME, now_iso, write_results
from surfacekit.train.common import TrainResult

SUMMARY_COLUMNS = ["member", "final_train_loss", "final_test_loss", "train_error", "test_error", "grad_norm", "diverged"]


def build(cfg: DictConfig) -> tuple[Spec, Dataset, list[int]]:
    """Validated spec, data on the job's device and dtype, and member seeds.

    Raises:
        ConfigError: a model class that cannot be built or run on the data (``model._target_``), or a
            population that does not fit in memory.
    """
    validate_training(cfg)  # errors only: the command's validation already printed and stored the warnings
    device = resolve_device(cfg.device)
    data = load_data(OmegaConf.to_container(cfg.data, resolve=True)).to(device, DTYPES[cfg.dtype])
    try:
        spec = build_spec(cfg.model, data)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    validate_with_data(cfg, len(data.x_train), spec.batch_norm)
    check_memory(cfg, num_params(spec), len(data.x_train), None if isinstance(spec, MLPSpec) else activation_size(spec))
    first = int(cfg.population.first_member)
    seeds = [member_seed(cfg.seed, first + k) for k in range(int(cfg.population.size))]
    return spec, data, seeds


def trainer_module(method: str):
    """The training-method module ``surfacekit.train.<method>`` (each has ``train(...) -> TrainResult``)."""
    try:
        return importlib.import_module(f"surfacekit.train.{method}")
    except ModuleNotFoundError:
        raise ConfigError(f"trainer.method={method!r} is unknown") from None


def width_and_depth(spec: Spec) -> tuple[int, int]:
    """The members table's ``width`` and ``depth``: the MLP's first hidden width and number of hidden
    layers; a module's ``width`` and ``depth`` constructor arguments (-1 where it has none)."""
    if isinstance(spec, MLPSpec):
        return (spec.widths[0] if spec.widths else 0), len(spec.widths)  # width 0: no hidden layer
    kwargs = dict(spec.kwargs)
    value = lambda key: kwargs[key] if isinstance(kwargs.get(key), int) else -1  # noqa: E731
    return value("width"), value("depth")


def result_groups(cfg: DictConfig, spec: Spec, seeds: list[int], result: TrainResult) -> tuple[dict, dict]:
    """HDF5 groups and axis names for a training result."""
    curves = result.curves
    first = int(cfg.population.first_member)
    width, depth = width_and_depth(spec)
    members = {
        "member": np.arange(first, first + len(seeds)),
        "seed": np.asarray(seeds, dtype=np.int64),
        "lr_scale": np.asarray(cfg.population.get("lr_scale") or [1.0] * len(seeds), dtype=np.float64),
        "width": np.full(len(seeds), width),
        "depth": np.full(len(seeds), depth),
        "num_params": np.full(len(seeds), num_params(spec)),
        "final_train_loss": curves["train_loss"][:, -1],
        "final_test_loss": curves["test_loss"][:, -1],
        "train_error": curves["train_error"][:, -1],
        "test_error": curves["test_error"][:, -1],
        "grad_norm": curves["grad_norm"][:, -1],
        "diverged": result.diverged,
        "converged": result.converged,
        "steps": result.steps,
    }
    as_np = lambda params: {k: v.cpu().numpy() for k, v in params.items()}  # noqa: E731
    groups: dict[str, dict[str, Any]] = {
        "members": members,
        "curves": {**curves, **result.extra_curves, "step": result.curve_steps, "epoch": result.curve_epochs},
        "params": as_np(result.params),
        "init_params": as_np(result.init_params),
    }
    dims = {"members": "member", "curves": "member,eval", "curves/step": "eval", "curves/epoch": "eval",
            "params": "member,...", "init_params": "member,..."}
    if result.buffers:
        groups["buffers"] = as_np(result.buffers)
        dims["buffers"] = "member,..."
    if result.aux_params:
        groups["aux_params"] = as_np(result.aux_params)
        groups["init_aux_params"] = as_np(result.init_aux_params)
        dims.update({"aux_params": "member,...", "init_aux_params": "member,..."})
    if result.trajectory is not None:
        groups["trajectory"] = {"theta": result.trajectory, "step": result.curve_steps}
        dims.update({"trajectory/theta": "eval,member,param", "trajectory/step": "eval"})
    centre = result.groups.get("centre/members")
    if centre is not None:  # trainer.coupling: the centre's own row, with the next member id
        members["is_centre"] = np.zeros(len(seeds), dtype=bool)
        centre.arrays = {**{c: v[:1] for c, v in members.items()}, "member": np.array([first + len(seeds)]),
                         "seed": np.array([-1]), "lr_scale": np.array([np.nan]), **centre.arrays}
    for name, group in result.groups.items():
        groups[name] = group.arrays
        dims.update(group.dims)
    return groups, dims


def summary(members: dict[str, np.ndarray]) -> str:
    """Per-member table (first 20 rows) with mean and std rows over the members that did not diverge
    (``diverged``: the count, not a mean; a diverged member's frozen values would dominate both)."""
    frame = pd.DataFrame({c: members[c] for c in SUMMARY_COLUMNS}).set_index("member")
    shown = frame.head(20)
    healthy = frame[~frame["diverged"].astype(bool)]
    stats = healthy.drop(columns="diverged").astype(float).agg(["mean", "std"])
    stats.index = ["mean (not diverged)", "std (not diverged)"]
    stats["diverged"] = [f"{int(frame['diverged'].sum())} of {len(frame)}", ""]
    more = f"\n... {len(frame) - 20} more members in the results file" if len(frame) > 20 else ""
    return shown.to_string(float_format="%.4g") + more + "\n" + stats.to_string(float_format="%.4g")


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Train ``population.size`` networks and write ``out_dir/results.h5``.

    Raises JobError after writing the file when every member diverged (the job failed)."""
    path = out_dir / RESULTS_NAME
    cfg = warm_start.configure(cfg)  # the derived model, as stored: resume compares it
    if finished_results(cfg, path):
        return path
    started = now_iso()
    spec, data, seeds = build(cfg)
    begin = None
    if cfg.population.init_from is not None:
        begin = warm_start.start(cfg, spec, DTYPES[cfg.dtype], data.x_train.device)
        params = begin.params
    else:
        params = init_population(spec, seeds, DTYPES[cfg.dtype], data.x_train.device)
    if cfg.population.get("shared_init"):  # one start for every member; seeds still order the minibatches
        params = {name: value[:1].expand_as(value).clone() for name, value in params.items()}
    trainer = trainer_module(cfg.trainer.method)
    lr_scale = cfg.population.get("lr_scale")
    if lr_scale is not None:
        lr_scale = torch.tensor(list(lr_scale), dtype=DTYPES[cfg.dtype], device=data.x_train.device)
    extra = {"statistics": begin.statistics} if begin is not None and begin.statistics else {}
    result = trainer.train(spec, data, params, seeds, cfg.optimizer, cfg.trainer, cfg.model.loss,
                           chunk_size=cfg.chunk_size, progress=cfg.progress, lr_scale=lr_scale,
                           objective=str(cfg.objective), bn_mode=str(cfg.bn_mode), **extra)
    groups, dims = result_groups(cfg, spec, seeds, result)
    if begin is not None:
        groups["members"].update(begin.members)
        groups.update(begin.groups)
    path = write_results(path, groups, job_attributes(cfg, started), dims,
                         group_attrs={name: g.attrs for name, g in result.groups.items() if g.attrs})
    print(summary(groups["members"]))
    if "centre/members" in groups:
        c = groups["centre/members"]
        print(f"centre (member {int(c['member'][0])}, trainer.coupling={cfg.trainer.coupling}): final train loss "
              f"{c['final_train_loss'][0]:.4g}, test loss {c['final_test_loss'][0]:.4g}, test error {c['test_error'][0]:.4g}")
    print(f"[surfacekit] {len(seeds)} networks, P={num_params(spec)} each -> {path}")
    diverged = groups["members"]["diverged"]
    if diverged.all():
        raise JobError(f"all {len(diverged)} members diverged (loss non-finite or above trainer.divergence_loss); "
                       f"their curves are in {path}")
    return path
