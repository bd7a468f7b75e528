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
from typing import Any, Callable, Mapping

import h5py
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from surfacekit.config import ConfigError, resolve_device
from surfacekit.curvature.errors import MemoryLimitError
from surfacekit.data import DataError
from surfacekit.jobs import JobError, job_attributes
from surfacekit.progress import bar
from surfacekit.store import (
    PARTS_DIR, Job, JobRef, Parts, ResultsError, _members_frame, _open, collect, file_sha256, job_objective, load_job,
    now_iso,
    set_attrs, write_atomic, _write_groups,
)

SOURCE_ERRORS = (ConfigError, DataError, ResultsError, MemoryLimitError)  # a job that cannot be analysed


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


def select_members(members: pd.DataFrame, wanted: Any, key: str, skip_diverged: bool = True) -> list[int]:
    """Member ids to analyse: ``wanted`` (ids of the ``member`` column, an id or null for all);
    diverged members are skipped. Raises ConfigError naming ``key`` for unknown ids."""
    ids = [int(m) for m in members["member"]]
    chosen = ids if wanted is None else ([int(wanted)] if isinstance(wanted, int) else [int(m) for m in wanted])
    unknown = sorted(set(chosen) - set(ids))
    if unknown:
        raise ConfigError(f"{key}={chosen} is invalid: no member(s) {unknown}; the members are {ids[0]}..{ids[-1]}")
    if skip_diverged and "diverged" in members:
        diverged = set(members.loc[members["diverged"].astype(bool), "member"].astype(int))
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


def member_positions(members: pd.DataFrame) -> dict[int, int]:
    """Member id -> position on the population axis."""
    return {int(m): i for i, m in enumerate(members["member"])}


def member_objective(job: Job, member: int, ctx: dict):
    """``(loss_fn, theta)`` of one member on the configured objective and BN mode (cached per member)."""
    cache = ctx["cache"].setdefault("objectives", {})
    if member not in cache:
        cfg = ctx["cfg"]
        loss_fn, theta, _ = job_objective(job, member, str(cfg.objective), str(cfg.bn_mode), cfg.get("chunk_size"))
        cache.clear()  # one member at a time: keeps one autograd graph alive
        cache[member] = (loss_fn, theta)
    return cache[member]


def _done_jobs(path: Path, col_jobs: dict[str, JobRef], cfg: DictConfig, settings: dict) -> set[str]:
    """Jobs of an existing output file whose source is unchanged (same run_id). Raises JobError when
    that file was written with other settings (never mixed with, never replaced by, this run)."""
    if not path.exists():
        return set()
    with h5py.File(path, "r") as f:
        stored = (json.loads(str(f.attrs.get("settings", "null"))), str(f.attrs.get("objective", "")),
                  str(f.attrs.get("bn_mode", "")))
        if stored[0] != settings or (f.get("jobs") and stored[1:] != (str(cfg.objective), str(cfg.bn_mode))):
            raise JobError(f"{path} holds an analysis with other settings; use another directory or delete it")
        return {name for name, g in f.get("jobs", {}).items()
                if name in col_jobs and col_jobs[name].run_id and str(g.attrs.get("source_run_id", "")) == col_jobs[name].run_id}


def run(task: Task, cfg: DictConfig, out_dir: Path) -> Path:
    """Plan, compute (resumably) and write ``out_dir/<task>.h5`` for every job of ``source``."""
    started = now_iso()
    settings = settings_of(cfg)
    device = resolve_device(cfg.device)
    col = collect(cfg.source)
    failed: dict[str, str] = dict(col.skipped)
    output = out_dir / f"{task.name}.h5"
    done = _done_jobs(output, col.jobs, cfg, settings)
    signature = json.dumps({"settings": settings, "objective": cfg.objective, "bn_mode": cfg.bn_mode}, sort_keys=True)
    parts = Parts(out_dir / PARTS_DIR, signature=signature)
    plans: list[Plan] = []
    for ref in col.jobs.values():
        if ref.name in done:
            continue
        f, g = _open(ref)
        with f:
            members = _members_frame(g)
        try:
            plans.append(Plan(ref, members, task.plan(ref, members, settings)))
        except SOURCE_ERRORS as exc:
            failed[ref.name] = str(exc).splitlines()[0]
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
        _write(output, cfg, started, col, done, results)
        for name in results:
            shutil.rmtree(out_dir / PARTS_DIR / name, ignore_errors=True)
    for name, (groups, _, _) in results.items():
        print(f"[surfacekit] {task.name} of job {name}:\n{task.summary(groups)}")
    if failed:
        lines = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        raise JobError(f"{task.name}: {len(failed)} source job(s) not analysed ({lines}); "
                       f"{len(results) + len(done)} analysed in {output}")
    if not results and not done:
        raise JobError(f"{task.name}: nothing to analyse in {cfg.source}")
    return output


def _write(output: Path, cfg: DictConfig, started: str, col, done: set[str], results: dict) -> None:
    infos = [info for _, _, info in results.values()]
    common = {key: infos[0][key] for key in ("objective", "bn_mode")} if infos else {}
    if infos:
        common["weight_decay"] = sorted({i["weight_decay"] for i in infos})[-1] if len({i["weight_decay"] for i in infos}) == 1 else float("nan")

    def fill(f: h5py.File) -> None:
        attrs = {**job_attributes(cfg, started, kind="analysis"), "source": str(cfg.source),
                 "settings": settings_of(cfg), **common}
        if done and output.exists():
            with h5py.File(output, "r") as old:
                for name in done:
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
