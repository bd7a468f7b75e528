"""The ``surfacekit`` command: one Hydra job (seeds, threads, device), dispatched by ``task``.

``task=NAME`` runs ``surfacekit.tasks.NAME.run(cfg, out_dir)``, which writes one results file into
the job's Hydra output directory and returns its path.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import surfacekit.tasks
from surfacekit.config import ConfigError
from surfacekit.data import DataError
from surfacekit.store import FAILURE_NAME, ResultsError

USER_ERRORS = (ConfigError, DataError, ResultsError)


def available_tasks() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(surfacekit.tasks.__path__) if not m.name.startswith("_"))


def setup(cfg: DictConfig) -> None:
    """Process-wide settings every job starts from (joblib reuses worker processes)."""
    if cfg.threads is not None:
        if not (isinstance(cfg.threads, int) and cfg.threads >= 1):
            raise ConfigError(f"threads={cfg.threads!r} is invalid: expected an integer >= 1 or null")
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)


def run(cfg: DictConfig) -> Path:
    """Run the configured task in this Hydra job; return the results path."""
    if cfg.task not in available_tasks():
        raise ConfigError(f"task={cfg.task!r} is unknown; choose one of {available_tasks()}")
    setup(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / FAILURE_NAME).unlink(missing_ok=True)
    return importlib.import_module(f"surfacekit.tasks.{cfg.task}").run(cfg, out_dir)


def record_failure(exc: BaseException) -> None:
    """In a sweep, a failed job writes ``error.txt`` into its directory (the merge reports it) and the sweep goes on."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = str(exc) if isinstance(exc, USER_ERRORS) else "".join(traceback.format_exception(exc))
    (out_dir / FAILURE_NAME).write_text(text)
    print(f"surfacekit: job {HydraConfig.get().job.num} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
          file=sys.stderr)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run(cfg)
    except USER_ERRORS as exc:
        if sweeping:
            record_failure(exc)
            return
        print(f"surfacekit: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if not sweeping:
            raise
        record_failure(exc)
