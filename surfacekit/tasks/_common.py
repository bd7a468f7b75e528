"""What every task shares: provenance attributes, the resume check, reloading finished jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from surfacekit.config import ConfigError
from surfacekit.data import Dataset, load_data
from surfacekit.models import MLPSpec, param_shapes, spec_from_config
from surfacekit.population import Params
from surfacekit.store import RESULTS_NAME, ResultsError, check_results, load_config, load_group, now_iso, provenance


def job_overrides() -> list[str]:
    """The command-line overrides of this job ([] outside Hydra)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _comparable(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if o.split("=")[0].lstrip("+~") not in ("resume", "progress"))


def job_attributes(cfg: DictConfig, started: str) -> dict[str, Any]:
    """Root attributes of a job's results file: provenance, config, overrides, threads, device, times."""
    overrides = job_overrides()
    return {
        **provenance(),
        "kind": "job",
        "task": cfg.task,
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "device": str(cfg.device),
        "start_time": started,
        "end_time": now_iso(),
    }


def completed_results(cfg: DictConfig, out_dir: Path) -> Path | None:
    """With ``resume=true``, the job's complete results file, if one exists for the same overrides (then skip the job)."""
    path = out_dir / RESULTS_NAME
    if not cfg.get("resume", False) or not path.exists():
        return None
    try:
        check_results(path)
        with h5py.File(path, "r") as f:
            stored = json.loads(f.attrs.get("overrides", "[]"))
    except (ResultsError, OSError, ValueError):
        return None
    if _comparable(stored) != _comparable(job_overrides()):
        return None
    print(f"[surfacekit] resume: {path} is complete, skipping this job")
    return path



@dataclass
class Job:
    """A finished training job rebuilt from its results file: spec, data and parameters in float64."""

    path: Path
    cfg: DictConfig
    spec: MLPSpec
    data: Dataset
    params: Params
    init_params: Params


def source_files(source: str | None) -> list[Path]:
    """Results files named by ``source=``: one file, or every job's results.h5 in a sweep directory."""
    if not source:
        raise ConfigError("source is not set: name a results.h5 file or a sweep directory (source=PATH)")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob(f"*/{RESULTS_NAME}"), key=lambda p: (len(p.parent.name), p.parent.name))
        if not files:
            raise ConfigError(f"source={path}: no */{RESULTS_NAME} in this directory")
        return files
    check_results(path)
    return [path]


def load_job(path: Path, device: str | torch.device = "cpu") -> Job:
    """Rebuild a training job's spec and data from its stored config, with its parameters, in float64.

    Parameters come in the canonical order of ``models.param_shapes``, so ``flatten`` gives valid thetas.
    """
    if check_results(path) != "job":
        raise ResultsError(f"{path}: a sweep file; name a job's results.h5 or the sweep directory")
    cfg = OmegaConf.create(load_config(path))
    data = load_data(OmegaConf.to_container(cfg.data, resolve=True)).to(device, torch.float64)
    spec = spec_from_config(cfg.model, data.in_dim, data.num_outputs)
    def as_torch(group: str) -> Params:
        arrays = load_group(path, group)
        return {name: torch.from_numpy(arrays[name]).to(device, torch.float64) for name in param_shapes(spec)}

    return Job(path, cfg, spec, data, as_torch("params"), as_torch("init_params"))
