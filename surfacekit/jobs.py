"""A job's directory and lifetime: unique run directories, one process per directory, never
replacing finished results, stopping when a sweep's parent process dies, and the provenance
attributes every results file carries.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import h5py
import torch
from omegaconf import DictConfig, OmegaConf

from surfacekit.config import POSTHOC_TASKS
from surfacekit.store import ANALYSES_DIR, ResultsError, check_results, now_iso, provenance

LOCK_NAME = ".surfacekit.lock"
# Keys that do not change what a job computes: ignored when a finished job is compared with a rerun.
VOLATILE_KEYS = ("resume", "progress", "threads", "memory_limit_gb")


class JobError(RuntimeError):
    """A job cannot run as asked (its directory is in use, or holds other results); one line."""


class DirectoryInUse(JobError):
    """Another process holds the job's directory: nothing may be written into it."""


# ----------------------------------------------------------------------------------- run directories

def settings_hash(cfg: DictConfig) -> str:
    """8 hex digits identifying what a post-hoc task computes: its settings, objective and BN mode."""
    task = str(cfg.task)
    payload = {"task": task, "settings": OmegaConf.to_container(cfg[task], resolve=True) if task in cfg else None,
               "objective": cfg.get("objective"), "bn_mode": cfg.get("bn_mode")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]


def analysis_root(source: str | os.PathLike) -> Path:
    """The run or sweep directory a post-hoc task's source lives in."""
    path = Path(str(source)).expanduser()
    return path if path.is_dir() else path.parent


def _run_dir(default: str, *, _root_: DictConfig) -> str:
    task = str(_root_.get("task", "train"))
    source = _root_.get("source")
    if task in POSTHOC_TASKS and source:
        return str(analysis_root(source) / ANALYSES_DIR / f"{task}-{settings_hash(_root_)}")
    return default


def register_resolvers() -> None:
    """``${sk.run_dir:DEFAULT}`` (DEFAULT for training jobs, SOURCE/analyses/TASK-HASH for post-hoc
    tasks) and ``${sk.uid:}`` (a random suffix, cached: every job of a sweep sees the same value)."""
    if not OmegaConf.has_resolver("sk.run_dir"):
        OmegaConf.register_new_resolver("sk.run_dir", _run_dir)
    if not OmegaConf.has_resolver("sk.uid"):
        OmegaConf.register_new_resolver("sk.uid", lambda: secrets.token_hex(3), use_cache=True)


# ----------------------------------------------------------------------------------- one process per directory

@contextmanager
def directory_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.surfacekit.lock`` for the job's lifetime (released on exit, also when the
    process is killed); a second job in the same directory is refused with the holder's pid."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DirectoryInUse(f"{out_dir} is in use by another surfacekit process (pid {holder}); wait for it or stop it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def stop_with_parent() -> None:
    """In a worker process of a parallel sweep (joblib), exit when the parent dies, instead of
    training on as an orphan. Started once per process; a no-op in the main process."""
    import multiprocessing

    if multiprocessing.parent_process() is None or getattr(stop_with_parent, "started", False):
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="surfacekit-parent-watchdog", daemon=True).start()
    stop_with_parent.started = True


# ----------------------------------------------------------------------------------- finished results

def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): config}


def config_differences(stored: dict, current: dict) -> list[str]:
    """'key: stored -> current' for every setting that differs (volatile keys ignored)."""
    a, b = _flat(stored), _flat(current)
    keys = sorted((set(a) | set(b)) - set(VOLATILE_KEYS))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys if a.get(k, "(absent)") != b.get(k, "(absent)")]


def finished_results(cfg: DictConfig, path: Path) -> Path | None:
    """Decide what to do with a complete results file already at ``path``.

    Returns ``path`` when ``resume=true`` and it was produced with the same settings (skip the job);
    None when there is no complete file (run the job); raises JobError otherwise, naming the
    differing keys: a job never replaces finished results it did not produce in this run.
    """
    if not path.exists():
        return None
    try:
        check_results(path)
        with h5py.File(path, "r") as f:
            import yaml

            stored = yaml.safe_load(str(f.attrs.get("config", ""))) or {}
    except (ResultsError, OSError, ValueError):
        raise JobError(f"{path} exists but is not a readable results file; move it away to rerun this job") from None
    current = OmegaConf.to_container(stored_config(cfg), resolve=True)
    stored = {k: v for k, v in stored.items() if k not in _unused_keys(str(cfg.task))}  # files of older versions
    differences = config_differences(stored, current)
    if not cfg.get("resume", False):
        raise JobError(f"{path.parent} already holds finished results; use resume=true to skip finished jobs, "
                       "or another directory (the default run directory is new for every job)")
    if differences:
        shown = "; ".join(differences[:4]) + (f"; ... ({len(differences)} in all)" if len(differences) > 4 else "")
        raise JobError(f"{path} was produced with other settings ({shown}); refusing to replace it. "
                       "Rerun into a new directory, or delete the file to redo the job")
    print(f"[surfacekit] resume: {path} is complete, skipping this job")
    return path


# ----------------------------------------------------------------------------------- provenance

WARNINGS: list[str] = []  # warnings of the running job (validation and tasks): printed and stored


def warn(message: str) -> None:
    """A one-line warning of this job: printed now, stored in its results file (attribute ``warnings``)."""
    WARNINGS.append(message)
    print(f"surfacekit: warning: {message}", file=sys.stderr)


def job_overrides() -> list[str]:
    """The command-line overrides of this job ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _unused_keys(task: str) -> tuple[str, ...]:
    from surfacekit.config import TRAINING_GROUPS

    return () if task == "train" else (*TRAINING_GROUPS, "dtype")


def stored_config(cfg: DictConfig) -> DictConfig:
    """The config a results file records: all of it for training, without the training groups and
    ``dtype`` for jobs that train nothing (see :func:`job_attributes`)."""
    unused = _unused_keys(str(cfg.task))
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in unused]) if unused else cfg


def job_attributes(cfg: DictConfig, started: str, kind: str = "job") -> dict[str, Any]:
    """Root attributes of a results file: provenance, config, overrides, threads, device, times, warnings.

    The stored ``config`` of a job that trains nothing (post-hoc tasks, the spin glass) leaves out the
    training groups and ``dtype``: their defaults describe no network of this job (a post-hoc task
    analyses each source job with that job's own config, stored in its training file)."""
    return {
        **provenance(),
        "kind": kind,
        "task": str(cfg.task),
        "config": OmegaConf.to_yaml(stored_config(cfg), resolve=True),
        "overrides": job_overrides(),
        "threads": torch.get_num_threads(),
        "device": str(cfg.device),
        "start_time": started,
        "end_time": now_iso(),
        "warnings": list(WARNINGS),
    }
