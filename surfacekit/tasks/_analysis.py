"""What the post-hoc tasks (spectrum, critical, landscape) share: finding the source jobs, planning
the work, computing it unit by unit (a member, a start point, a slice) with every finished unit
saved at once, and writing the task's one file.

The job's run directory is ``SOURCE/analyses/<task>-<hash of its settings>/`` by default, so a rerun
with the same settings lands in the same place: jobs already in its ``<task>.h5`` (same source
``run_id``) are skipped, finished units of an interrupted run (``parts/``) are reused, and new jobs
of a grown sweep are added. Source jobs that cannot be read or analysed are listed with the reason
and make the command exit non-zero at the end, after every other job is done.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping

import h5py
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from surfacekit.config import ConfigError, resolve_device
from surfacekit.curvature.errors import MemoryLimitError, NonFiniteError
from surfacekit.curvature.memory import dense_members
from surfacekit.curvature.population import PopulationSpectrum, population_spectrum
from surfacekit.data import DataError
from surfacekit.jobs import JobError, analysis_root, job_attributes, warn
from surfacekit.progress import bar
from surfacekit.store import (
    ANALYSES_DIR, PARTS_DIR, Job, JobRef, Parts, ResultsError, _members_frame, _open, collect, file_sha256,
    _job_config, job_objective, job_population_objective, load_job, now_iso, set_attrs, write_atomic,
    _write_groups,
)

# a job that cannot be analysed (one line, the other jobs go on); NonFiniteError: a curvature routine met a NaN
# or infinite product it cannot answer past (tasks leave out members that are not finite at their start)
SOURCE_ERRORS = (ConfigError, DataError, ResultsError, MemoryLimitError, NonFiniteError)


@dataclass
class Plan:
    """The units of one source job: ``units`` maps a unit key (a file name) to what ``compute`` needs."""

    job: JobRef
    members: pd.DataFrame
    units: dict[str, Any]


@dataclass
class Task:
    """A post-hoc task: how to plan a job's units, compute one, and assemble a job's groups.

    plan(ref, members, settings) -> {unit key: unit}; compute(job, unit, settings, ctx) -> arrays;
    assemble(job_ref, members, {unit key: arrays}, settings) -> (groups, dims) where ``groups`` may
    hold a ``members`` group (with a ``member`` column) joined into ``load_members``;
    summary(groups) -> text.
    """

    name: str
    plan: Callable[[JobRef, pd.DataFrame, dict], dict[str, Any]]
    compute: Callable[[Job, Any, dict, dict], Mapping[str, Any]]
    assemble: Callable[[JobRef, pd.DataFrame, dict[str, dict], dict], tuple[dict, dict]]
    summary: Callable[[dict], str]


def settings_of(cfg: DictConfig) -> dict[str, Any]:
    """The task's settings as plain values."""
    return OmegaConf.to_container(cfg[cfg.task], resolve=True)


def select_members(members: pd.DataFrame, wanted: Any, key: str, job: str) -> list[int]:
    """Member ids to analyse: ``wanted`` (ids of the ``member`` column, an id or null for all);
    diverged members are skipped with a stored warning naming them and ``job``. Raises ConfigError
    naming ``key`` (``<task>.members``) for unknown ids."""
    ids = [int(m) for m in members["member"]]
    chosen = ids if wanted is None else ([int(wanted)] if isinstance(wanted, int) else [int(m) for m in wanted])
    chosen = list(dict.fromkeys(chosen))  # a repeated id is analysed once
    unknown = sorted(set(chosen) - set(ids))
    if unknown:
        raise ConfigError(f"{key}={chosen} is invalid: no member(s) {unknown}; the members are {ids[0]}..{ids[-1]}")
    if "diverged" in members:
        diverged = set(members.loc[members["diverged"].astype(bool), "member"].astype(int))
        skipped = sorted(set(chosen) & diverged)
        if skipped:
            warn(f"{key.split('.')[0]}: job {job}: skipping diverged member(s) {skipped} (diverged in training)")
        chosen = [m for m in chosen if m not in diverged]
    return chosen


def parameter_count(ref: JobRef) -> int:
    """P, the parameters of one member of the job ``ref`` (read from the shapes of its ``/params``).

    Raises ResultsError when the job has no parameters."""
    f, g = _open(ref)
    with f:
        if "params" not in g:
            raise ResultsError(f"{ref.file}: job {ref.name!r} has no /params (not a trained population)")
        return int(sum(np.prod(d.shape[1:], dtype=np.int64) for d in g["params"].values()))


def job_model(ref: JobRef) -> dict:
    """The ``model`` settings the job ``ref`` was trained with (from its stored config)."""
    f, g = _open(ref)
    with f:
        return dict(_job_config(g).get("model", {}))


def member_arrays(by_pos: Mapping[int, Mapping[str, Any]], names: Iterable[str], k: int,
                  strings: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Per-member rows ``{position: {name: value}}`` as arrays with a leading member axis [k, ...] (the
    trailing shape of the first row's value); members without a row hold NaN (floats), -1 (integers),
    False (booleans) or "" (the names in ``strings``, stored as text)."""
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        if name in strings:
            arrays[name] = np.array([str(by_pos[p][name]) if p in by_pos else "" for p in range(k)])
            continue
        first = np.asarray(next(iter(by_pos.values()))[name]) if by_pos else np.zeros(())
        if first.dtype == bool:
            out = np.zeros((k, *first.shape), dtype=bool)
        elif np.issubdtype(first.dtype, np.integer):
            out = np.full((k, *first.shape), -1, dtype=np.int64)
        else:
            out = np.full((k, *first.shape), np.nan)
        for p, row in by_pos.items():
            out[p] = row[name]
        arrays[name] = out
    return arrays


def rows_by_position(members: pd.DataFrame, rows: Mapping[str, Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """The rows of per-member units (keys ``member-<id>``) by the member's position in the population."""
    positions = member_positions(members)
    return {positions[int(key.split("-")[1])]: row for key, row in rows.items()}


def batch_rows_by_position(members: pd.DataFrame, rows: Mapping[str, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """The per-member rows of units that each hold a batch of members (their ids in the unit's
    ``member`` array, every other field stacked on a leading member axis), by member position."""
    positions = member_positions(members)
    return {positions[int(m)]: {name: values[i] for name, values in unit.items() if name != "member"}
            for unit in rows.values() for i, m in enumerate(unit["member"])}


def memory_limit(cfg: Mapping[str, Any]) -> int | None:
    """The job's ``memory_limit_gb`` in bytes (None: the free memory decides)."""
    value = cfg.get("memory_limit_gb")
    return None if value is None else int(float(value) * 2**30)


def member_positions(members: pd.DataFrame) -> dict[int, int]:
    """Member id -> position on the population axis."""
    return {int(m): i for i, m in enumerate(members["member"])}


def population_objective(job: Job, members: list[int], ctx: dict):
    """``store.job_population_objective`` of ``members`` (repeats allowed: row b is member
    ``members[b]``'s objective) on the task's objective, bn_mode and chunking."""
    cfg = ctx["cfg"]
    return job_population_objective(job, members, str(cfg.objective), str(cfg.bn_mode), cfg.get("chunk_size"))


def dense_spectra(job: Job, members: list[int], ctx: dict, top_k: int = 1, bottom_k: int = 1,
                  threshold: float | None = None, relative_threshold: float = 1e-5,
                  points: torch.Tensor | None = None) -> list[tuple[PopulationSpectrum, int]]:
    """Exact spectra from dense Hessians for row b of ``members``, at ``points[b]`` [n, P] (None: the
    members' stored parameters): :func:`surfacekit.curvature.population_spectrum` on as many rows at
    once as the memory allows (``memory_limit_gb``, else free memory), assembled through the affine
    first layer where the model has one. Returns (result, row in that result) per member, in order.

    Raises:
        MemoryLimitError: not even one dense Hessian fits.
    """
    cfg = ctx["cfg"]
    limit = memory_limit(cfg)
    size = parameter_count(job.ref) if points is None else points.shape[1]
    out: list[tuple[PopulationSpectrum, int]] = []
    first = 0
    while first < len(members):
        step = max(dense_members(size, cfg.device, limit, wanted=len(members) - first), 1)
        pop = population_objective(job, members[first : first + step], ctx)
        thetas = pop.thetas if points is None else points[first : first + step]
        res = population_spectrum(pop.losses_fn, thetas, top_k, bottom_k, threshold, relative_threshold,
                                  structure=pop.affine_input, memory_limit=limit)
        out += [(res, b) for b in range(len(thetas))]
        first += len(thetas)
    return out


def member_objective(job: Job, member: int, ctx: dict):
    """``(loss_fn, theta)`` of one member on the configured objective and BN mode (cached per member)."""
    cache = ctx["cache"].setdefault("objectives", {})
    if member not in cache:
        cfg = ctx["cfg"]
        loss_fn, theta, _ = job_objective(job, member, str(cfg.objective), str(cfg.bn_mode), cfg.get("chunk_size"))
        cache.clear()  # one member at a time: keeps one autograd graph alive
        cache[member] = (loss_fn, theta)
    return cache[member]


def _existing_jobs(path: Path, cfg: DictConfig, settings: dict) -> dict[str, str]:
    """Job name -> source run_id of the jobs in an existing output file. Raises JobError when that
    file was written with other settings (never mixed with, never replaced by, this run)."""
    if not path.exists():
        return {}
    with h5py.File(path, "r") as f:
        stored = (json.loads(str(f.attrs.get("settings", "null"))), str(f.attrs.get("objective", "")),
                  str(f.attrs.get("bn_mode", "")))
        if stored[0] != settings or (f.get("jobs") and stored[1:] != (str(cfg.objective), str(cfg.bn_mode))):
            raise JobError(f"{path} holds an analysis with other settings; use another directory or delete it")
        return {name: str(g.attrs.get("source_run_id", "")) for name, g in f.get("jobs", {}).items()}


def _parts_of(parts: Parts, ref: JobRef) -> None:
    """Forget a job's finished units when they were computed from another training file (a job retrained
    into the same directory): units are only reused for the same source ``run_id``."""
    stamp = parts.directory / ref.name / "source_run_id.txt"
    if stamp.exists() and stamp.read_text() != ref.run_id:
        shutil.rmtree(parts.directory / ref.name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(ref.run_id)


def _plan_job(task: Task, ref: JobRef, settings: dict) -> Plan:
    f, g = _open(ref)
    with f:
        if "params" not in g:
            raise ResultsError(f"{ref.file}: job {ref.name!r} has no /params (not a trained population: "
                               f"task={g.attrs.get('task', '?')})")
        members = _members_frame(g)
    return Plan(ref, members, task.plan(ref, members, settings))


def run(task: Task, cfg: DictConfig, out_dir: Path) -> Path:
    """Plan, compute (resumably) and write ``out_dir/<task>.h5`` for every job of ``source``.

    Jobs already in the output file with the same source ``run_id`` are kept as they are; jobs of
    the file whose source is missing now (moved, unreadable) are kept too; a job whose training file
    changed (another ``run_id``) is analysed again. A job with nothing to analyse (every selected
    member diverged) is reported and skipped.
    """
    started = now_iso()
    settings = settings_of(cfg)
    device = resolve_device(cfg.device)
    col = collect(cfg.source)
    if not col.jobs and col.analyses:
        raise ConfigError(f"source={cfg.source} is an analysis file; name the training job, run directory or sweep")
    failed: dict[str, str] = dict(col.skipped)
    analyses_dir = (analysis_root(cfg.source) / ANALYSES_DIR).resolve()
    if analyses_dir not in out_dir.resolve().parents:
        warn(f"the output directory {out_dir} is outside {analyses_dir}: load_members(source) will not join "
             f"these results; read them with load_group({out_dir / (task.name + '.h5')}, GROUP)")
    output = out_dir / f"{task.name}.h5"
    existing = _existing_jobs(output, cfg, settings)
    done = {name for name, run_id in existing.items() if name in col.jobs and run_id and run_id == col.jobs[name].run_id}
    kept = {name for name in existing if name not in col.jobs}  # sources missing now: keep their results
    signature = json.dumps({"settings": settings, "objective": cfg.objective, "bn_mode": cfg.bn_mode}, sort_keys=True)
    parts = Parts(out_dir / PARTS_DIR, signature=signature)
    plans: list[Plan] = []
    for ref in col.jobs.values():
        if ref.name in done:
            continue
        try:
            plan = _plan_job(task, ref, settings)
        except SOURCE_ERRORS as exc:
            failed[ref.name] = str(exc).splitlines()[0]
            continue
        if not plan.units:
            warn(f"{task.name}: job {ref.name}: nothing to analyse (every selected member diverged); skipped")
            continue
        _parts_of(parts, ref)
        plans.append(plan)
    total = sum(len(p.units) for p in plans)
    finished = sum(parts.done(f"{p.job.name}/{key}") for p in plans for key in p.units)
    print(f"[surfacekit] {task.name}: {len(col.jobs)} job(s) in {cfg.source}; {len(done)} already analysed with these "
          f"settings, {len(plans)} to do: {total} unit(s), {finished} finished earlier -> {output}")
    results: dict[str, tuple[dict, dict, dict]] = {}
    progress = bar(total=total, desc=task.name, enabled=bool(cfg.progress), unit="unit")
    progress.update(finished)
    first_unit_s: float | None = None
    for plan in plans:
        todo = [key for key in plan.units if not parts.done(f"{plan.job.name}/{key}")]
        try:
            job = load_job(plan.job.file, plan.job.name if plan.job.group else None, device)
            first = int(plan.members["member"].iloc[0])
            info = job_objective(job, first, str(cfg.objective), str(cfg.bn_mode), cfg.get("chunk_size"))[2]
            ctx = {"cfg": cfg, "info": info, "cache": {}}
            for key in todo:
                t0 = time.perf_counter()
                arrays = task.compute(job, plan.units[key], settings, ctx)
                parts.save(f"{plan.job.name}/{key}", arrays)
                progress.update(1)
                if first_unit_s is None:
                    first_unit_s = time.perf_counter() - t0
                    remaining = total - finished - 1
                    print(f"[surfacekit] {task.name}: first unit took {first_unit_s:.1f} s; about "
                          f"{first_unit_s * remaining / 60:.1f} min for the remaining {remaining}", flush=True)
            arrays = {key: parts.load(f"{plan.job.name}/{key}") for key in plan.units}
            groups, dims = task.assemble(plan.job, plan.members, arrays, settings)
            results[plan.job.name] = (groups, dims, ctx["info"])
        except SOURCE_ERRORS as exc:
            failed[plan.job.name] = str(exc).splitlines()[0]
    progress.close()
    if results:
        _write(output, cfg, started, col, done | kept, results)
        for name in results:
            shutil.rmtree(out_dir / PARTS_DIR / name, ignore_errors=True)
    if not parts.keys():
        parts.remove()
    for name, (groups, _, _) in results.items():
        print(f"[surfacekit] {task.name} of job {name}:\n{task.summary(groups)}")
    if failed:
        lines = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        raise JobError(f"{task.name}: {len(failed)} source job(s) not analysed ({lines}); "
                       f"{len(results) + len(done)} analysed in {output}")
    if not results and not done:
        raise JobError(f"{task.name}: nothing to analyse in {cfg.source}")
    return output


def _write(output: Path, cfg: DictConfig, started: str, col, keep: set[str], results: dict) -> None:
    def fill(f: h5py.File) -> None:
        attrs = {**job_attributes(cfg, started, kind="analysis"), "source": str(cfg.source),
                 "settings": settings_of(cfg), "objective": str(cfg.objective), "bn_mode": str(cfg.bn_mode)}
        if keep and output.exists():
            with h5py.File(output, "r") as old:
                for name in keep:
                    old.copy(old["jobs"][name], f.require_group("jobs"), name=name)
        set_attrs(f, attrs)
        for name, (groups, dims, info) in results.items():
            ref = col.jobs[name]
            g = f.require_group("jobs").create_group(name)
            set_attrs(g, {"source_path": str(ref.file.resolve()), "source_group": ref.group, "source_run_id": ref.run_id,
                          "source_sha256": file_sha256(ref.file), **info})
            _write_groups(g, groups, dims)

    write_atomic(output, fill, replace=True)


def to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
