"""HDF5 results: atomic per-job writes, sweep merges, loaders for analysis.

A job file holds root attributes (provenance, resolved config, overrides) and groups of arrays:
``/members/<column>`` [K], ``/curves/<name>`` [K, T] with ``/curves/step`` and ``/curves/epoch``
[T], ``/params/<name>`` [K, ...] and whatever later tasks add (``/spectrum``, ``/critical``, ...).
Every dataset has a ``dims`` attribute naming its axes. A sweep file holds each job's content
under ``/jobs/<job>`` plus the list of skipped jobs with reasons. Files are written to a temporary
name in the same directory and renamed into place, so a killed job never leaves a partial file.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd
import yaml

import surfacekit

SCHEMA_VERSION = 1
RESULTS_NAME = "results.h5"
SWEEP_NAME = "sweep.h5"
FAILURE_NAME = "error.txt"  # written by a failed job of a sweep

Groups = Mapping[str, Mapping[str, Any]]


class ResultsError(ValueError):
    """A file is not a readable surfacekit results file (one-line message naming the path)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, Any]:
    """Versions, host and git state of the code that runs (commit '' outside a git checkout)."""
    import torch

    here = Path(surfacekit.__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "schema_version": SCHEMA_VERSION,
        "surfacekit_version": surfacekit.__version__,
        "git_commit": commit,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "hostname": socket.gethostname(),
    }


def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects subclasses such as torch's version string
    return "" if value is None else value


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        obj.attrs[key] = _attr(value)


def _write_groups(f: h5py.File, groups: Groups, dims: Mapping[str, str] | None) -> None:
    for group, arrays in groups.items():
        g = f.require_group(group)
        order = json.loads(g.attrs.get("order", "[]"))
        g.attrs["order"] = json.dumps(order + [name for name in arrays if name not in order])
        for name, value in arrays.items():
            if name in g:
                del g[name]
            data = np.asarray(value)
            if data.dtype.kind == "U":  # numpy unicode -> HDF5 variable-length UTF-8 strings
                data = data.astype(h5py.string_dtype())
            ds = g.create_dataset(name, data=data, compression="gzip" if data.size > 4096 else None)
            key = f"{group}/{name}"
            if dims and key in dims:
                ds.attrs["dims"] = dims[key]
            elif dims and group in dims:
                ds.attrs["dims"] = dims[group]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_results(path: str | os.PathLike, groups: Groups, attrs: Mapping[str, Any], dims: Mapping[str, str] | None = None) -> Path:
    """Write a new results file atomically (temporary name, then rename). Returns the path.

    dims maps a group ("members") or a dataset ("curves/step") to a comma-separated axis list.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with h5py.File(tmp, "w") as f:
            _set_attrs(f, attrs)
            _write_groups(f, groups, dims)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def _exclusive(path: Path):
    """Serialize writers of one results file across processes (a lock file beside it)."""
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_groups(path: str | os.PathLike, groups: Groups, attrs: Mapping[str, Any] | None = None,
               dims: Mapping[str, str] | None = None) -> Path:
    """Add or replace groups in an existing results file without risking it: copy, write, rename.

    Concurrent callers on one file are serialized, so two tasks adding groups never lose each other's.
    """
    path = Path(path)
    check_results(path)
    tmp = _temporary(path)
    with _exclusive(path):
        _add_groups(path, tmp, groups, attrs, dims)
    return path


def _add_groups(path: Path, tmp: Path, groups: Groups, attrs, dims) -> None:
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            _set_attrs(f, attrs or {})
            _write_groups(f, groups, dims)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_results(path: str | os.PathLike) -> str:
    """Validate that ``path`` is a readable results file of this schema; return its kind ('job' or 'sweep')."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file")
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("schema_version")
            kind = str(f.attrs.get("kind", ""))
    except OSError as exc:
        raise ResultsError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    if version is None or kind not in ("job", "sweep"):
        raise ResultsError(f"{path}: HDF5 file without surfacekit attributes (schema_version, kind): not a results file")
    if int(version) != SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema_version {int(version)}, this surfacekit reads {SCHEMA_VERSION}; rerun the job or use a matching surfacekit")
    return kind


# ----------------------------------------------------------------------------------- merge

def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a Hydra multirun: those with a .hydra folder, a results file or a failure note."""
    markers = (".hydra", RESULTS_NAME, FAILURE_NAME)
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and any((p / m).exists() for m in markers)),
        key=lambda p: (len(p.name), p.name),
    )


def merge(sweep_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge every job's ``results.h5`` under ``sweep_dir`` into one sweep file (default ``SWEEP_DIR/sweep.h5``).

    Jobs without a results file, or with an unreadable or foreign one, are skipped and listed with a reason.
    Returns {"output": path, "merged": [job names], "skipped": {job: reason}}.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ResultsError(f"{sweep_dir}: no such sweep directory")
    output = Path(output) if output else sweep_dir / SWEEP_NAME
    merged: list[str] = []
    skipped: dict[str, str] = {}
    seen: dict[str, str] = {}
    tmp = _temporary(output)
    try:
        with h5py.File(tmp, "w") as out:
            jobs = out.create_group("jobs")
            for job_dir in _job_dirs(sweep_dir):
                name = job_dir.name
                path = job_dir / RESULTS_NAME
                if not path.exists():
                    failure = job_dir / FAILURE_NAME
                    skipped[name] = (f"failed: {failure.read_text().strip().splitlines()[-1]}" if failure.exists()
                                     else "no results.h5 (job failed, still running or was killed)")
                    continue
                try:
                    if check_results(path) != "job":
                        raise ResultsError(f"{path}: a sweep file, not a job file")
                    with h5py.File(path, "r") as src:
                        key = json.dumps([str(src.attrs.get("config", "")), str(src.attrs.get("overrides", ""))])
                        if key in seen:
                            skipped[name] = f"duplicate of job {seen[key]} (same config and overrides)"
                            continue
                        g = jobs.create_group(name)
                        for k, v in src.attrs.items():
                            g.attrs[k] = v
                        for child in src:
                            src.copy(src[child], g, name=child)
                        seen[key] = name
                except (ResultsError, OSError, KeyError) as exc:
                    skipped[name] = str(exc).splitlines()[0]
                    continue
                merged.append(name)
            _set_attrs(out, {**provenance(), "kind": "sweep", "created": now_iso(), "sweep_dir": str(sweep_dir.resolve()),
                             "jobs": merged, "skipped": skipped})
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": output, "merged": merged, "skipped": skipped}


def merge_main(argv: list[str] | None = None) -> int:
    """``surfacekit-merge SWEEP_DIR [-o OUT]``: merge a sweep's job files, list skipped jobs."""
    import argparse

    parser = argparse.ArgumentParser(prog="surfacekit-merge", description=merge_main.__doc__)
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (holds one folder per job)")
    parser.add_argument("-o", "--output", help="merged file (default: SWEEP_DIR/sweep.h5)")
    args = parser.parse_args(argv)
    try:
        report = merge(args.sweep_dir, args.output)
    except ResultsError as exc:
        print(f"surfacekit-merge: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(report['merged'])} job(s) into {report['output']}")
    for job, reason in report["skipped"].items():
        print(f"  skipped {job}: {reason}")
    return 0


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class MergeCallback(Callback):
    """Hydra callback: merge the sweep directory when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        report = merge(config.hydra.sweep.dir)
        print(f"[surfacekit] merged {len(report['merged'])} job(s) into {report['output']}"
              + (f"; skipped {report['skipped']}" if report["skipped"] else ""))


# ----------------------------------------------------------------------------------- load

def results_file(source: str | os.PathLike) -> Path:
    """The file to load for ``source``: a results or sweep file as is; a sweep directory's sweep.h5,
    merged first when absent (skipped jobs are reported on stderr)."""
    source = Path(source)
    if not source.is_dir():
        return source
    merged = source / SWEEP_NAME
    if not merged.exists():
        for job, reason in merge(source)["skipped"].items():
            print(f"skipped job {job}: {reason}", file=sys.stderr)
    return merged


def _read(ds: h5py.Dataset) -> np.ndarray:
    """A dataset as numpy; string datasets come back as str, not bytes."""
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]


def _parse_overrides(text: str) -> dict[str, Any]:
    out = {}
    for item in json.loads(text) if text else []:
        key, _, value = item.partition("=")
        try:
            out[key.lstrip("+~")] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.lstrip("+~")] = value
    return out


def _job_groups(f: h5py.File) -> dict[str, h5py.Group]:
    if f.attrs.get("kind") == "sweep":
        return {name: f["jobs"][name] for name in json.loads(f.attrs["jobs"])}
    return {"": f}


def _select(path, job: str | None):
    kind = check_results(path)
    f = h5py.File(path, "r")
    groups = _job_groups(f)
    if job is None:
        if kind == "sweep" and len(groups) != 1:
            f.close()
            raise ResultsError(f"{path}: a sweep file; name one of its jobs {list(groups)}")
        job = next(iter(groups))
    if job not in groups:
        f.close()
        raise ResultsError(f"{path}: no job {job!r}; jobs are {list(groups)}")
    return f, groups[job]


def list_jobs(path: str | os.PathLike) -> list[str]:
    """Job names in a sweep file ([''] for a single job file)."""
    check_results(path)
    with h5py.File(path, "r") as f:
        return list(_job_groups(f))


def load_config(path: str | os.PathLike, job: str | None = None) -> dict[str, Any]:
    """The resolved config of a job, as a dict."""
    f, g = _select(path, job)
    with f:
        return yaml.safe_load(str(g.attrs["config"]))


def load_members(path: str | os.PathLike) -> pd.DataFrame:
    """One row per network, with ``job`` and the swept (overridden) config values as columns."""
    check_results(path)
    frames = []
    with h5py.File(path, "r") as f:
        for job, g in _job_groups(f).items():
            columns = g["members"]
            frame = pd.DataFrame({name: _read(columns[name]) for name in json.loads(columns.attrs["order"])})
            for key, value in _parse_overrides(str(g.attrs.get("overrides", ""))).items():
                frame[key] = [value] * len(frame)
            frame.insert(0, "job", job)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_group(path: str | os.PathLike, group: str, job: str | None = None) -> dict[str, np.ndarray]:
    """All datasets of one group (e.g. 'curves', 'params', 'spectrum') of one job, as numpy arrays,
    in the order they were written (parameters in the model's canonical flattening order)."""
    f, g = _select(path, job)
    with f:
        if group not in g:
            raise ResultsError(f"{path}: job {job or ''!r} has no group /{group}")
        out = {}
        g[group].visititems(lambda name, obj: out.__setitem__(name, _read(obj)) if isinstance(obj, h5py.Dataset) else None)
        order = json.loads(g[group].attrs.get("order", "[]"))
        return {name: out[name] for name in order + sorted(set(out) - set(order))}


def load_curves(path: str | os.PathLike, job: str | None = None) -> dict[str, np.ndarray]:
    """Learning curves of one job: name -> [K, T], plus 'step' and 'epoch' [T]."""
    return load_group(path, "curves", job)


def load_params(path: str | os.PathLike, job: str | None = None) -> dict[str, np.ndarray]:
    """Final parameters of one job: name -> [K, ...] (initial ones: ``load_group(path, "init_params")``)."""
    return load_group(path, "params", job)
