"""HDF5 results: atomic per-job writes, and loaders that join a job's training and analysis files.

Every job writes exactly one file into its own run directory, under a temporary name renamed into
place at the end, so a killed job never leaves a partial file and a file is never modified after
the rename:

* a training job (``task=train``, ``task=spinglass``) writes ``results.h5`` (kind ``job``): root
  attributes (provenance, resolved config, overrides, ``run_id``), ``/members/<column>`` [K],
  ``/curves/<name>`` [K, T], ``/params/<name>`` [K, ...], ...;
* a post-hoc task (``spectrum``, ``critical``, ``landscape``) writes ``<task>.h5`` (kind
  ``analysis``) into ``SOURCE/analyses/<task>-<settings hash>/``: per analysed training job a group
  ``/jobs/<job>`` (attributes ``source_path``, ``source_run_id``, ``source_sha256``) holding the
  task's groups and ``members`` columns to join on (job, member);
* the merge (:mod:`surfacekit.sweep`) gathers a sweep's files into ``sweep.h5`` (kind ``sweep``):
  ``/jobs/<job>`` and ``/analyses/<name>``.

The loaders take any of these files, a job's run directory or a sweep directory, and join training
and analysis results, so ``load_members`` gives one table. Every dataset has a ``dims`` attribute
naming its axes. Files of schema version 1 (analysis groups written into the training file) load too.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import h5py
import numpy as np
import pandas as pd
import yaml

import surfacekit

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
RESULTS_NAME = "results.h5"
SWEEP_NAME = "sweep.h5"
FAILURE_NAME = "error.txt"  # written by a failed job of a sweep
ANALYSES_DIR = "analyses"   # post-hoc task outputs live in SOURCE/analyses/<task>-<hash>/<task>.h5
PARTS_DIR = "parts"         # finished units of an unfinished job (one file each, atomic)

Groups = Mapping[str, Mapping[str, Any]]


class ResultsError(ValueError):
    """A file is not a readable surfacekit results file (one-line message naming the path)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
        "torch_version": str(torch.__version__),
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "hostname": socket.gethostname(),
    }


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex): what an analysis records of its source."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- write

def _attr(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, str):
        return str(value)  # plain str: h5py rejects subclasses such as torch's version string
    return "" if value is None else value


def set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    """Write attributes (dicts and lists as JSON, None as '')."""
    for key, value in attrs.items():
        obj.attrs[key] = _attr(value)


def _write_groups(f: h5py.Group, groups: Groups, dims: Mapping[str, str] | None) -> None:
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


def write_atomic(path: str | os.PathLike, fill, *, replace: bool = False) -> Path:
    """Create ``path`` by ``fill(h5py.File)`` on a temporary file renamed into place at the end.

    Refuses (ResultsError) to replace an existing file unless ``replace`` (a job rewriting its own
    output file). A failure or kill before the rename leaves any existing file untouched.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise ResultsError(f"{path} exists; results files are never overwritten")
    tmp = _temporary(path)
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_results(path: str | os.PathLike, groups: Groups, attrs: Mapping[str, Any],
                  dims: Mapping[str, str] | None = None, *, replace: bool = False,
                  group_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write a results file atomically (temporary name, then rename); returns the path.

    ``dims`` maps a group ("members") or a dataset ("curves/step") to a comma-separated axis list;
    ``group_attrs`` maps a group ("centre") to its attributes.
    A ``run_id`` attribute (random, unique) is added when ``attrs`` has none: analyses use it to
    join their results to this file. Raises ResultsError if ``path`` exists and not ``replace``.
    """
    attrs = {"run_id": uuid.uuid4().hex, **attrs}

    def fill(f: h5py.File) -> None:
        set_attrs(f, attrs)
        _write_groups(f, groups, dims)
        for group, values in (group_attrs or {}).items():
            set_attrs(f.require_group(group), values)

    return write_atomic(path, fill, replace=replace)


def check_results(path: str | os.PathLike) -> str:
    """Validate that ``path`` is a readable results file of a known schema; return its kind
    ('job', 'sweep' or 'analysis'). Raises ResultsError with a one-line reason otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file")
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("schema_version")
            kind = str(f.attrs.get("kind", ""))
    except OSError as exc:
        raise ResultsError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    if version is None or kind not in ("job", "sweep", "analysis"):
        raise ResultsError(f"{path}: HDF5 file without surfacekit attributes (schema_version, kind): not a results file")
    if int(version) not in READABLE_SCHEMAS:
        raise ResultsError(f"{path}: schema_version {int(version)}, this surfacekit reads {list(READABLE_SCHEMAS)}; "
                           "rerun the job or use a matching surfacekit")
    return kind


# ----------------------------------------------------------------------------------- parts

class Parts:
    """Finished units of work of an unfinished job, one ``.npz`` file per unit, written atomically.

    A long task saves each unit (a member, a start point, a chunk) as it finishes, so a killed job
    keeps them and a rerun into the same directory resumes: ``done(key)`` says what to skip. Keys are
    strings such as ``"3/member-00017"`` ('/' makes folders). Arrays only; no pickles.
    """

    def __init__(self, directory: str | os.PathLike, signature: str = ""):
        """``signature`` (e.g. the job's resolved settings) is stored beside the parts; parts left by
        a run with another signature are refused (ResultsError), never mixed into this one."""
        self.directory = Path(directory)
        stamp = self.directory / "signature.txt"
        if stamp.exists() and stamp.read_text() != signature:
            raise ResultsError(f"{self.directory} holds partial results of a run with other settings; "
                               "delete that folder to start over")
        if not stamp.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp.write_text(signature)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def done(self, key: str) -> bool:
        return self._path(key).is_file()

    def save(self, key: str, arrays: Mapping[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)

    def load(self, key: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self._path(key), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{self._path(key)}: unreadable partial result ({exc}); delete it to recompute") from None

    def keys(self, prefix: str = "") -> list[str]:
        root = self.directory / prefix
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(self.directory).with_suffix("")) for p in root.rglob("*.npz"))

    def remove(self) -> None:
        """Delete every part (after the job's results file is written)."""
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


# ----------------------------------------------------------------------------------- locate

@dataclass
class JobRef:
    """A training job inside a file: ``group`` is '' for a job file, 'jobs/<name>' in a sweep file."""

    name: str
    file: Path
    group: str = ""
    run_id: str = ""


@dataclass
class AnalysisRef:
    """An analysis (post-hoc task output) inside a file: ``group`` '' or 'analyses/<name>' in a sweep file."""

    name: str
    file: Path
    group: str
    task: str
    end_time: str
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # job -> (source_run_id, source_path)
    settings: Any = None  # the task's settings (JSON attribute ``settings``)


@dataclass
class Collection:
    """Training jobs and the analyses of them reachable from one path; unreadable files with reasons."""

    jobs: dict[str, JobRef]
    analyses: list[AnalysisRef]
    skipped: dict[str, str]


def job_name(results_path: str | os.PathLike) -> str:
    """A training job's name: the name of its run directory (the job number in a sweep)."""
    return Path(results_path).resolve().parent.name


def _job_sort_key(name: str) -> tuple:
    return (len(name), name)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a Hydra multirun: those with a .hydra folder, a results file or a failure note."""
    markers = (".hydra", RESULTS_NAME, FAILURE_NAME)
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name != ANALYSES_DIR
                   and any((p / m).exists() for m in markers)), key=lambda p: _job_sort_key(p.name))


def analysis_files(directory: Path) -> list[Path]:
    """Finished analysis files under a run or sweep directory (``[*/]analyses/*/*.h5``)."""
    found = list(directory.glob(f"{ANALYSES_DIR}/*/*.h5")) + list(directory.glob(f"*/{ANALYSES_DIR}/*/*.h5"))
    return sorted(p for p in found if not p.name.startswith("."))


def _analysis_ref(name: str, file: Path, g: h5py.Group, prefix: str) -> AnalysisRef:
    jobs = {}
    for job, sub in g.get("jobs", {}).items():
        jobs[job] = (str(sub.attrs.get("source_run_id", "")), str(sub.attrs.get("source_path", "")))
    try:
        settings = json.loads(str(g.attrs.get("settings", "null")))
    except ValueError:
        settings = None
    return AnalysisRef(name, file, prefix, str(g.attrs.get("task", "")), str(g.attrs.get("end_time", "")), jobs, settings)


def collect(source: str | os.PathLike) -> Collection:
    """Find the training jobs and analyses that ``source`` names.

    ``source``: a job's ``results.h5``, its run directory, a sweep directory (each ``*/results.h5``),
    a merged ``sweep.h5``, or an analysis file. Raises ResultsError when it names nothing readable.
    """
    source = Path(source).expanduser()
    jobs: dict[str, JobRef] = {}
    analyses: list[AnalysisRef] = []
    skipped: dict[str, str] = {}
    if source.is_dir():
        if (source / RESULTS_NAME).exists():
            return collect(source / RESULTS_NAME)
        dirs = job_dirs(source)
        for d in dirs:
            path = d / RESULTS_NAME
            if not path.exists():
                failure = d / FAILURE_NAME
                skipped[d.name] = (f"failed: {_last_line(failure)}" if failure.exists()
                                   else "no results.h5 (job failed, still running or was killed)")
                continue
            try:
                if check_results(path) != "job":
                    raise ResultsError(f"{path}: not a job's results file")
                with h5py.File(path, "r") as f:
                    jobs[d.name] = JobRef(d.name, path, "", str(f.attrs.get("run_id", "")))
            except (ResultsError, OSError) as exc:
                skipped[d.name] = str(exc).splitlines()[0]
        search = [source]
        if not jobs and not skipped:
            raise ResultsError(f"{source}: no results here (neither a run directory with {RESULTS_NAME} "
                               "nor a sweep directory with job folders)")
    else:
        kind = check_results(source)
        with h5py.File(source, "r") as f:
            if kind == "job":
                name = job_name(source)
                jobs[name] = JobRef(name, source, "", str(f.attrs.get("run_id", "")))
                search = [source.parent, source.parent.parent]
            elif kind == "sweep":
                for name in json.loads(f.attrs.get("jobs", "[]")):
                    jobs[name] = JobRef(name, source, f"jobs/{name}", str(f["jobs"][name].attrs.get("run_id", "")))
                for name in f.get("analyses", {}):
                    analyses.append(_analysis_ref(name, source, f["analyses"][name], f"analyses/{name}"))
                skipped.update(json.loads(f.attrs.get("skipped", "{}") or "{}"))
                search = [source.parent]  # analyses written after the merge, beside the sweep file
            else:
                analyses.append(_analysis_ref(source.parent.name, source, f, ""))
                search = []
    seen = {a.file.resolve() for a in analyses}
    merged = {a.name for a in analyses}  # a sweep file's copies win over the files they were merged from
    for directory in search:
        for path in analysis_files(directory):
            if path.resolve() in seen or "__".join(path.parent.relative_to(directory).parts) in merged:
                continue
            seen.add(path.resolve())
            try:
                if check_results(path) != "analysis":
                    continue
                with h5py.File(path, "r") as f:
                    analyses.append(_analysis_ref(path.parent.name, path, f, ""))
            except (ResultsError, OSError) as exc:
                skipped[str(path)] = str(exc).splitlines()[0]
    return Collection(dict(sorted(jobs.items(), key=lambda kv: _job_sort_key(kv[0]))), analyses, skipped)


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(empty error.txt)"


def _matches(job: JobRef, analysis: AnalysisRef) -> bool:
    if job.name not in analysis.jobs:
        return False
    run_id, path = analysis.jobs[job.name]
    if job.run_id and run_id:
        return job.run_id == run_id
    return bool(path) and job.group == "" and Path(path).resolve() == job.file.resolve()  # sources without run_id


def analyses_of(collection: Collection, job: JobRef, task: str | None = None) -> list[AnalysisRef]:
    """Analyses of ``job`` (optionally of one task), newest first."""
    found = [a for a in collection.analyses if _matches(job, a) and (task is None or a.task == task)]
    return sorted(found, key=lambda a: (a.end_time, str(a.file)), reverse=True)


# ----------------------------------------------------------------------------------- read

def _read(ds: h5py.Dataset) -> np.ndarray:
    """A dataset as numpy; string datasets come back as str, not bytes."""
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]


def _open(ref: JobRef | AnalysisRef, sub: str = "") -> tuple[h5py.File, h5py.Group]:
    f = h5py.File(ref.file, "r")
    path = "/".join(p for p in (ref.group, sub) if p)
    return f, (f[path] if path else f)


def _typed_overrides(overrides: list[str], config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Override key -> value with the type the job used: the resolved config's value where the key is
    a config value, else Hydra's override grammar (group choices such as ``optimizer=adam``).
    Lists become tuples (hashable, so swept list values group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    cfg = OmegaConf.create(config or {})
    out: dict[str, Any] = {}
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if key.startswith(("hydra.", "hydra/")) or key in ("progress", "resume"):
            continue  # where and how the job ran, not what it computed
        value = OmegaConf.select(cfg, key, default="__missing__", throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = "__missing__"  # a group choice: the override's own value
        if isinstance(value, str) and value == "__missing__":
            try:
                value = parser.parse_override(text).value()
            except Exception:  # noqa: BLE001 - a legacy override Hydra no longer parses: keep its text
                value = text.partition("=")[2]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def _job_config(g: h5py.Group) -> dict[str, Any]:
    return yaml.safe_load(str(g.attrs.get("config", ""))) or {}


def _members_frame(g: h5py.Group, centre: bool = True) -> pd.DataFrame:
    """The ``members`` table of a job (or an analysis' job group); with ``centre``, a coupled
    population's centre (``/centre/members``, ``trainer.coupling``) is its last row."""
    if "members" not in g:
        return pd.DataFrame()
    columns = g["members"]
    order = json.loads(columns.attrs.get("order", "[]")) or list(columns)
    frame = pd.DataFrame({name: _read(columns[name]) for name in order if name in columns})
    if centre and "centre/members" in g:
        frame = pd.concat([frame, _members_frame(g["centre"])], ignore_index=True)
    return frame


def _analysis_columns(analysis: AnalysisRef, job: str) -> pd.DataFrame:
    """The members rows an analysis holds for ``job`` (only members it analysed, when it says which),
    with its provenance: ``<task>_objective``, ``<task>_weight_decay``, ``<task>_bn_mode`` (from the
    job's own attributes) and ``<task>_analysis`` (the analysis's name)."""
    f, g = _open(analysis, f"jobs/{job}")
    with f:
        frame = _members_frame(g)
        for key in ("objective", "weight_decay", "bn_mode"):
            if key in g.attrs:
                frame[f"{analysis.task}_{key}"] = _attr_value(g.attrs[key])
    if "analysed" in frame:
        frame = frame[frame.pop("analysed").astype(bool)]
    frame[f"{analysis.task}_analysis"] = analysis.name
    return frame


def _attr_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def load_members(source: str | os.PathLike, analyses: str | list[str] = "latest") -> pd.DataFrame:
    """One row per network: the training members table, joined on (job, member) with the members
    columns of the analyses of each job, plus ``job`` and one column per command-line override.

    ``analyses``: ``"latest"`` (default) fills each member's columns of each task from the newest
    analysis of that task that analysed the member (so a later partial analysis does not hide an
    earlier complete one; ``<task>_analysis`` names the analysis each row came from); a list of
    analysis names (the folder names, e.g. ``["spectrum-1a2b3c4d"]``) joins exactly those, in
    that order of preference; ``"none"`` gives the training columns only. Members no analysis
    covered hold NaN there. ``source``: a job's results.h5 or run directory, a sweep directory or
    sweep.h5. An override whose name is also a members column (``seed``) becomes ``job_<name>``; its
    value has the type the job used (read from the resolved config). A coupled population
    (``trainer.coupling``) has one more row, its centre, flagged ``is_centre`` (False for every
    other row). Jobs that cannot be read are skipped with a line on stderr. Raises ResultsError
    when nothing is readable or a named analysis does not exist.
    """
    col = collect(source)
    if isinstance(analyses, str) and analyses not in ("latest", "none"):
        raise ValueError(f"analyses={analyses!r}; use 'latest', 'none' or a list of analysis names")
    if not isinstance(analyses, str):
        unknown = sorted(set(analyses) - {a.name for a in col.analyses})
        if unknown:
            raise ResultsError(f"{source}: no analyses named {unknown}; there are {sorted({a.name for a in col.analyses})}")
    _report_skipped(col)
    frames = []
    for job in col.jobs.values():
        f, g = _open(job)
        with f:
            if "members" not in g:
                raise ResultsError(f"{job.file}: job {job.name!r} has no /members group: not the results of a training "
                                   "or spin-glass job")
            frame = _members_frame(g)
            overrides = json.loads(str(g.attrs.get("overrides", "[]")) or "[]")
            typed = _typed_overrides(overrides, _job_config(g))
        if analyses != "none" and "member" in frame:
            frame = _join_analyses(frame, col, job, analyses)
        for key, value in typed.items():
            name = f"job_{key}" if key in frame.columns else key
            frame[name] = [value] * len(frame)
        frame.insert(0, "job", job.name)
        frames.append(frame)
    if not frames:
        raise ResultsError(f"{source}: no readable training jobs" + (f" (skipped: {col.skipped})" if col.skipped else ""))
    frame = pd.concat(frames, ignore_index=True)
    if "is_centre" in frame:
        frame["is_centre"] = frame["is_centre"].astype("boolean").fillna(False).astype(bool)
    return frame


def _join_analyses(frame: pd.DataFrame, col: Collection, job: JobRef, analyses: str | list[str]) -> pd.DataFrame:
    found = analyses_of(col, job)
    if not isinstance(analyses, str):
        order = {name: i for i, name in enumerate(analyses)}
        found = sorted((a for a in found if a.name in order), key=lambda a: order[a.name])
    by_task: dict[str, list[AnalysisRef]] = {}
    for analysis in found:
        by_task.setdefault(analysis.task, []).append(analysis)
    for task, candidates in by_task.items():
        rows = []
        covered: set[int] = set()
        used: list[AnalysisRef] = []
        for analysis in candidates:  # newest (or first named) first
            extra = _analysis_columns(analysis, job.name)
            if "member" not in extra or extra.empty:
                continue
            extra = extra[~extra["member"].isin(covered)]
            covered |= set(int(m) for m in extra["member"])
            rows.append(extra)
            used += [analysis] if len(extra) else []
        if rows:
            joined = pd.concat(rows, ignore_index=True)
            _warn_mixed(joined, task, job.name)
            _warn_mixed_settings(used, task, job.name)
            new = [c for c in joined.columns if c == "member" or c not in frame.columns]
            frame = frame.merge(joined[new], on="member", how="left")
    return frame


def _warn_mixed(joined: pd.DataFrame, task: str, job: str) -> None:
    """Members of one job filled from analyses of different objectives or batch-norm modes: a mean over
    them mixes two functions, so say so (the ``<task>_objective``/``<task>_bn_mode`` columns tell which)."""
    for key in ("objective", "bn_mode"):
        column = f"{task}_{key}"
        if column in joined and joined[column].nunique() > 1:
            kinds = ", ".join(f"{value} ({int(count)} members)" for value, count in joined[column].value_counts().items())
            print(f"surfacekit: warning: job {job}: the {task} columns mix analyses of {key} {kinds}; see the "
                  f"{column} column, or choose with analyses=[...]", file=sys.stderr)


# settings that say which members a run analysed and how many per pass, not what its numbers mean
RUN_SETTINGS = ("members", "batch_size")


def _flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if not prefix and key in RUN_SETTINGS:
            continue
        out.update(_flat_settings(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _warn_mixed_settings(used: list[AnalysisRef], task: str, job: str) -> None:
    """Members of one job filled from analyses of different settings (an index threshold, a method): a mean
    over them mixes two definitions, so say which settings differ (``members`` and ``batch_size`` aside)."""
    flat = [_flat_settings(a.settings or {}) for a in used]
    keys = sorted({k for f in flat for k in f if len({json.dumps(g.get(k), sort_keys=True) for g in flat}) > 1})
    if keys:
        values = "; ".join(f"{k}: " + " vs ".join(json.dumps(f.get(k)) for f in flat) for k in keys)
        print(f"surfacekit: warning: job {job}: the {task} columns mix analyses of different settings ({values}); "
              f"see the {task}_analysis column, or choose with analyses=[...]", file=sys.stderr)


def _report_skipped(col: Collection) -> None:
    for name, reason in col.skipped.items():
        print(f"surfacekit: skipped {name}: {reason}", file=sys.stderr)


def _one_job(col: Collection, source, job: str | None) -> JobRef:
    if job is None:
        if len(col.jobs) != 1:
            raise ResultsError(f"{source}: holds {len(col.jobs)} jobs; name one of {list(col.jobs)} (job=...)")
        return next(iter(col.jobs.values()))
    if job not in col.jobs:
        raise ResultsError(f"{source}: no job {job!r}; jobs are {list(col.jobs)}")
    return col.jobs[job]


def list_jobs(source: str | os.PathLike) -> list[str]:
    """Names of the training jobs in a job file, run directory, sweep directory or sweep file."""
    return list(collect(source).jobs)


def load_config(source: str | os.PathLike, job: str | None = None) -> dict[str, Any]:
    """The resolved config of a job, as a dict."""
    col = collect(source)
    f, g = _open(_one_job(col, source, job))
    with f:
        return _job_config(g)


def _group_arrays(g: h5py.Group) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    g.visititems(lambda name, obj: out.__setitem__(name, _read(obj)) if isinstance(obj, h5py.Dataset) else None)
    order = json.loads(g.attrs.get("order", "[]"))
    return {name: out[name] for name in [n for n in order if n in out] + sorted(set(out) - set(order))}


def load_group(source: str | os.PathLike, group: str, job: str | None = None) -> dict[str, np.ndarray]:
    """All datasets of one group of one job (e.g. 'curves', 'params', 'spectrum', 'critical/newton_mr'),
    as numpy arrays in the order written (parameters in the model's canonical flattening order).

    The group is looked up in the training file first, then in the newest analysis of the job that
    has it. Raises ResultsError naming the groups there are when neither has it.
    """
    col = collect(source)
    if not col.jobs and len(col.analyses) == 1:  # an analysis file on its own
        analysis = col.analyses[0]
        names = list(analysis.jobs)
        if job is None and len(names) != 1:
            raise ResultsError(f"{source}: analyses {len(names)} jobs; name one of {names} (job=...)")
        return _analysis_group(analysis, job or names[0], group, source)
    ref = _one_job(col, source, job)
    f, g = _open(ref)
    with f:
        if group in g:
            return _group_arrays(g[group])
        present = sorted(g)
    for analysis in analyses_of(col, ref):
        fa, ga = _open(analysis, f"jobs/{ref.name}")
        with fa:
            if group in ga:
                return _group_arrays(ga[group])
            present += [f"{name} ({analysis.task} analysis)" for name in ga if name != "members"]
    raise ResultsError(f"{source}: job {ref.name!r} has no group /{group}; it has {present}")


def _analysis_group(analysis: AnalysisRef, job: str, group: str, source) -> dict[str, np.ndarray]:
    f, g = _open(analysis, f"jobs/{job}")
    with f:
        if group not in g:
            raise ResultsError(f"{source}: job {job!r} has no group /{group}; it has {sorted(g)}")
        return _group_arrays(g[group])


def load_curves(source: str | os.PathLike, job: str | None = None, tidy: bool = False):
    """Learning curves of one job: name -> [K, T], plus 'step' and 'epoch' [T]; with ``tidy=True``
    a long-format DataFrame of every job (``job`` ignored unless given), one row per (job, member,
    evaluation): ``seaborn.lineplot(data=load_curves(path, tidy=True), x="epoch", y="train_loss",
    hue="model.width")``."""
    if tidy:
        frame = load_tidy(source, "curves")
        return frame if job is None else frame[frame["job"] == job].reset_index(drop=True)
    return load_group(source, "curves", job)


def _group_with_dims(ref: JobRef | AnalysisRef, sub: str) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    f, g = _open(ref, sub)
    with f:
        arrays = _group_arrays(g)
        dims: dict[str, tuple[str, ...]] = {}
        for name, value in arrays.items():
            axes = [a for a in str(g[name].attrs.get("dims", "")).split(",") if a]
            shape = np.shape(value)
            if "..." in axes:
                axes = axes[: axes.index("...")]
                axes += [f"axis{i}" for i in range(len(axes), len(shape))]
            dims[name] = tuple(axes) if len(axes) == len(shape) else tuple(f"axis{i}" for i in range(len(shape)))
    return arrays, dims


def _tidy_frame(arrays: dict[str, np.ndarray], dims: dict[str, tuple[str, ...]], member_ids: np.ndarray,
                axes: tuple[str, ...] | None) -> pd.DataFrame:
    data = {n: a for n, a in arrays.items() if "param" not in dims[n] and np.ndim(a) >= 1}
    if not data:
        return pd.DataFrame()
    if axes is None:
        candidates = [dims[n] for n in data if len(dims[n]) == max(len(dims[m]) for m in data)]
        axes = max(set(candidates), key=candidates.count)
    shape = {}
    for name, value in data.items():
        for axis, size in zip(dims[name], np.shape(value)):
            shape.setdefault(axis, size)
    if any(a not in shape for a in axes):
        raise ResultsError(f"axes {axes} are not all axes of this group (it has {sorted(shape)})")
    grid = np.meshgrid(*[np.arange(shape[a]) for a in axes], indexing="ij")
    columns: dict[str, np.ndarray] = {}
    for axis, index in zip(axes, grid):
        columns[axis] = index.ravel()
    if "member" in axes and "member" not in data and len(member_ids) == shape["member"]:
        columns["member"] = np.asarray(member_ids)[columns["member"]]
    for name, value in data.items():
        own = dims[name]
        if not set(own) <= set(axes):
            continue  # on other axes (e.g. density probes beside eigenvalue ranks): ask for those axes
        index = tuple(grid[axes.index(a)].ravel() for a in own)
        columns[name] = np.asarray(value)[index]
    return pd.DataFrame(columns)


def load_tidy(source: str | os.PathLike, group: str, axes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One group of every job (training file or newest analysis) in long format: one row per point
    of ``axes`` (default: the axes of the group's datasets with the most axes, e.g. (member, eval)
    for curves, (member, x, y) for a 2D slice, (start,) for a finder's endpoints), every dataset on
    a subset of those axes as a column (others are left out: ask for their axes), plus ``job`` and
    the swept config values (typed as in ``load_members``). The member axis holds member ids.
    """
    col = collect(source)
    _report_skipped(col)
    frames = []
    for job in col.jobs.values():
        f, g = _open(job)
        with f:
            has = group in g
            owner = g["centre"] if group.startswith("centre/") and "centre" in g else g  # whose member ids
            ids = _members_frame(owner, centre=False).get("member", pd.Series(dtype=int)).to_numpy()
            typed = _typed_overrides(json.loads(str(g.attrs.get("overrides", "[]")) or "[]"), _job_config(g))
        ref, sub = (job, group) if has else (None, None)
        if ref is None:
            for analysis in analyses_of(col, job):
                fa, ga = _open(analysis, f"jobs/{job.name}")
                with fa:
                    if group in ga:
                        ref, sub = analysis, f"jobs/{job.name}/{group}"
                        break
        if ref is None:
            continue
        arrays, dims = _group_with_dims(ref, sub)
        frame = _tidy_frame(arrays, dims, ids, axes)
        for key, value in typed.items():
            frame[key if key not in frame.columns else f"job_{key}"] = [value] * len(frame)
        frame.insert(0, "job", job.name)
        frames.append(frame)
    if not frames:
        raise ResultsError(f"{source}: no job has a group /{group}")
    return pd.concat(frames, ignore_index=True)


def load_params(source: str | os.PathLike, job: str | None = None) -> dict[str, np.ndarray]:
    """Final parameters of one job: name -> [K, ...] (initial ones: ``load_group(path, "init_params")``)."""
    return load_group(source, "params", job)


def load_attrs(source: str | os.PathLike, job: str | None = None) -> dict[str, Any]:
    """Root attributes of one training job (provenance, config text, overrides, run_id, ...)."""
    col = collect(source)
    f, g = _open(_one_job(col, source, job))
    with f:
        return {k: _attr_value(v) for k, v in g.attrs.items()}


def iter_jobs(source: str | os.PathLike) -> Iterator[JobRef]:
    """The readable training jobs of ``source`` (skipped ones are reported on stderr)."""
    col = collect(source)
    _report_skipped(col)
    yield from col.jobs.values()


# ----------------------------------------------------------------------------------- rebuild

@dataclass
class Job:
    """A finished training job rebuilt from its results: config, spec, data (float64, on ``device``)
    and stacked parameters [K, ...] in the canonical order of ``models.param_shapes`` (so
    ``population.flatten`` gives valid thetas), plus the members table (a coupled population's centre
    is its last member, in both)."""

    name: str
    path: Path
    run_id: str
    cfg: Any
    spec: Any
    data: Any
    params: dict
    init_params: dict
    buffers: dict
    members: pd.DataFrame
    ref: JobRef | None = None


def job_objective(job: Job, member: int, objective: str = "trained", bn_mode: str = "batch",
                  chunk_size: int | None = None):
    """One member's objective as the curvature tools and finders take it: ``(loss_fn, theta, info)``.

    ``loss_fn(theta)`` is ``surfacekit.objective.objective_fn`` over the job's full training set
    (float64): the data loss plus the L2 term its training method applied (``objective="trained"``)
    or the data loss alone (``"data"``), batch norm with full-set batch statistics (``bn_mode="batch"``)
    or the stored statistics (``"eval"``). ``theta`` [P] are the member's final parameters. ``info``
    records what the numbers describe: objective, weight_decay (the largest L2 coefficient),
    l2_coefficients (per parameter tensor), bn_mode, batch_norm, dtype, data, split, num_examples,
    chunk_size. ``member`` is a member id (the ``member`` column).

    Raises ResultsError for an unknown member or ``bn_mode="eval"`` without stored statistics.
    """
    from surfacekit.objective import objective_fn

    k, optimizer, trainer, info = _objective_parts(job, [member], objective, bn_mode, chunk_size)
    statistics = {n: v[k[0]] for n, v in job.buffers.items()} if job.buffers else None
    d = job.data
    try:
        loss_fn = objective_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss, optimizer_cfg=optimizer,
                               trainer_cfg=trainer, objective=objective, bn_mode=bn_mode, statistics=statistics,
                               chunk_size=chunk_size)
    except ValueError as exc:
        raise ResultsError(f"{job.path}: {exc}") from None
    return loss_fn, _flat_params(job, k)[0], info


class PopulationObjective(NamedTuple):
    """Several members' objective, for batched curvature (:func:`job_population_objective`)."""

    losses_fn: Any
    thetas: Any
    info: dict
    affine_input: Any


def job_population_objective(job: Job, members: list[int], objective: str = "trained", bn_mode: str = "batch",
                             chunk_size: int | None = None) -> PopulationObjective:
    """The objective of several members at once, for ``surfacekit.curvature.population``.

    ``losses_fn(thetas) -> [B]`` is ``surfacekit.objective.population_objective_fn`` over the job's
    full training set (float64), row b the objective of member ``members[b]`` as :func:`job_objective`
    builds it (with ``bn_mode="eval"`` row b uses that member's stored statistics: call it with
    these B rows in this order); ``thetas`` [B, P] their final parameters; ``info`` as for
    :func:`job_objective`; ``affine_input`` its structure for cheap dense Hessians
    (``surfacekit.objective.affine_input``; None with batch norm in batch mode).

    Raises ResultsError for an unknown member or ``bn_mode="eval"`` without stored statistics.
    """
    from surfacekit.objective import affine_input, population_objective_fn

    k, optimizer, trainer, info = _objective_parts(job, members, objective, bn_mode, chunk_size)
    statistics = {n: v[k] for n, v in job.buffers.items()} if job.buffers else None
    d = job.data
    kwargs = dict(optimizer_cfg=optimizer, trainer_cfg=trainer, objective=objective, bn_mode=bn_mode,
                  statistics=statistics, chunk_size=chunk_size)
    try:
        losses_fn = population_objective_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss, **kwargs)
        structure = affine_input(job.spec, d.x_train, d.y_train, job.cfg.model.loss, **kwargs)
    except ValueError as exc:
        raise ResultsError(f"{job.path}: {exc}") from None
    return PopulationObjective(losses_fn, _flat_params(job, k), info, structure)


def _objective_parts(job: Job, members: list[int], objective: str, bn_mode: str, chunk_size: int | None):
    """Positions of ``members`` on the population axis, the job's optimizer and trainer configs, and the
    ``info`` of :func:`job_objective`. Raises ResultsError for an unknown member."""
    from omegaconf import OmegaConf

    from surfacekit.objective import l2_coefficients

    ids = [int(m) for m in job.members["member"]]
    unknown = [int(m) for m in members if int(m) not in ids]
    if unknown:
        raise ResultsError(f"{job.path}: job {job.name!r} has no member {unknown[0]}; its members are {ids}")
    positions = [ids.index(int(m)) for m in members]
    optimizer = OmegaConf.to_container(job.cfg.optimizer, resolve=True)
    trainer = OmegaConf.to_container(job.cfg.trainer, resolve=True)
    try:
        l2 = l2_coefficients(job.spec, trainer["method"], optimizer, trainer, objective)
    except ValueError as exc:
        raise ResultsError(f"{job.path}: {exc}") from None
    d = job.data
    info = {"objective": objective, "weight_decay": max(l2.values(), default=0.0), "l2_coefficients": l2,
            "bn_mode": bn_mode, "batch_norm": bool(job.spec.batch_norm), "dtype": "float64",
            "data": str(job.cfg.data.name), "split": "train", "num_examples": int(d.x_train.shape[0]),
            "chunk_size": chunk_size}
    return positions, optimizer, trainer, info


def _flat_params(job: Job, positions: list[int]):
    """The flat final parameters [B, P] of the members at ``positions``."""
    from surfacekit.population import flatten

    return flatten({n: v[positions] for n, v in job.params.items()})


def load_job(source: str | os.PathLike, job: str | None = None, device: Any = "cpu") -> Job:
    """Rebuild one training job (of a job file, run directory, sweep directory or sweep file).

    Raises ResultsError when the file is not a training job's or lacks parameters, and the data
    module's DataError when its data can no longer be built (e.g. a moved MNIST directory).
    """
    import torch
    from omegaconf import OmegaConf

    from surfacekit.data import load_data
    from surfacekit.models import build_spec, param_shapes

    col = collect(source)
    ref = _one_job(col, source, job)
    f, g = _open(ref)
    with f:
        if "params" not in g:
            raise ResultsError(f"{ref.file}: job {ref.name!r} has no /params (not a trained population)")
        cfg = OmegaConf.create(_job_config(g))
        groups = {name: _group_arrays(g[name]) if name in g else {} for name in ("params", "init_params", "buffers")}
        for name in ("params", "init_params"):  # a coupled population's centre is its last member
            if f"centre/{name}" in g:
                centre = _group_arrays(g[f"centre/{name}"])
                groups[name] = {n: np.concatenate([v, centre[n]]) if n in centre else v for n, v in groups[name].items()}
        members = _members_frame(g)
    data = load_data(OmegaConf.to_container(cfg.data, resolve=True)).to(device, torch.float64)
    try:
        spec = build_spec(cfg.model, data)
    except ValueError as exc:
        raise ResultsError(f"{ref.file}: job {ref.name!r}: its model cannot be rebuilt: {exc}") from None

    def tensors(arrays: dict, names) -> dict:
        return {n: torch.from_numpy(np.asarray(arrays[n])).to(device, torch.float64) for n in names if n in arrays}

    names = list(param_shapes(spec))
    params = tensors(groups["params"], names)
    missing = sorted(set(names) - set(params))
    if missing:
        raise ResultsError(f"{ref.file}: job {ref.name!r} lacks parameters {missing} of its model")
    return Job(ref.name, ref.file, ref.run_id, cfg, spec, data, params, tensors(groups["init_params"], names),
               tensors(groups["buffers"], groups["buffers"]), members, ref)


def results_file(source: str | os.PathLike) -> Path:
    """``source`` as a path: every loader accepts a job file, run directory, sweep directory or
    sweep file directly (kept for scripts written against the merge-first loaders)."""
    return Path(source).expanduser()
