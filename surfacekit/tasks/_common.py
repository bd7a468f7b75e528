"""What every task shares: the job's provenance attributes and the resume check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from surfacekit.store import RESULTS_NAME, ResultsError, check_results, now_iso, provenance


def job_attributes(cfg: DictConfig, started: str) -> dict[str, Any]:
    """Root attributes of a job's results file: provenance, config, overrides, threads, device, times."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        overrides = []
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
    """With ``resume=true``, the job's complete results file if one exists (the job is then skipped)."""
    path = out_dir / RESULTS_NAME
    if not cfg.get("resume", False) or not path.exists():
        return None
    try:
        check_results(path)
    except ResultsError:
        return None
    print(f"[surfacekit] resume: {path} is complete, skipping this job")
    return path

