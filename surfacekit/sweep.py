"""Merging a sweep: every job's results file and every analysis of them into one ``sweep.h5``.

``surfacekit-merge SWEEP_DIR [-o OUT]`` and the Hydra callback at the end of a multirun call
:func:`merge`. It works on whatever finished: missing, failed, corrupt, foreign and duplicate files
are skipped and listed with a reason. The merged file holds ``/jobs/<job>`` (each training file's
content and attributes) and ``/analyses/<name>`` (each analysis file found under the sweep
directory, ``[*/]analyses/<task>-<hash>/<task>.h5``), so the loaders join them as they do from the
directory itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import h5py

from surfacekit.store import (
    FAILURE_NAME, RESULTS_NAME, SWEEP_NAME, ResultsError, _last_line, analysis_files, check_results, job_dirs,
    now_iso, provenance, set_attrs, write_atomic,
)

# The report of the last merge run by the Hydra callback in this process (the command reads it).
LAST_REPORT: dict[str, Any] | None = None


def _copy(src: h5py.File, dest: h5py.Group) -> None:
    for key, value in src.attrs.items():
        dest.attrs[key] = value
    for child in src:
        src.copy(src[child], dest, name=child)


def merge(sweep_dir: str | os.PathLike, output: str | os.PathLike | None = None) -> dict[str, Any]:
    """Merge every job's ``results.h5`` and every analysis file under ``sweep_dir`` into one sweep
    file (default ``SWEEP_DIR/sweep.h5``, replaced atomically).

    Returns {"output": path, "merged": [job names], "analyses": [names], "skipped": {job: reason},
    "failed": [jobs with error.txt]}. Raises ResultsError (one line) when ``sweep_dir`` is missing,
    holds no job folders (naming what it found instead), or the output's folder does not exist.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ResultsError(f"{sweep_dir}: no such sweep directory")
    if (sweep_dir / RESULTS_NAME).exists():
        raise ResultsError(f"{sweep_dir}: a single run directory (it holds {RESULTS_NAME}), not a sweep: "
                           "nothing to merge; load the file itself")
    dirs = job_dirs(sweep_dir)
    if not dirs:
        found = sorted(p.name for p in sweep_dir.iterdir())[:10]
        raise ResultsError(f"{sweep_dir}: no job folders (with .hydra, {RESULTS_NAME} or {FAILURE_NAME}) to merge; "
                           f"found {found or 'nothing'}")
    output = Path(output) if output else sweep_dir / SWEEP_NAME
    if not output.parent.is_dir():
        raise ResultsError(f"-o {output}: no such directory {output.parent}")
    if output.exists():
        try:
            kind = check_results(output)
        except ResultsError:
            kind = "not a results file"
        if kind != "sweep":
            raise ResultsError(f"-o {output}: exists and is {'a ' + kind + ' file' if kind in ('job', 'analysis') else kind}; "
                               "the merge only replaces an earlier sweep file")
    report: dict[str, Any] = {"output": output, "merged": [], "analyses": [], "skipped": {}, "failed": []}

    def fill(out: h5py.File) -> None:
        jobs = out.create_group("jobs")
        seen: dict[str, str] = {}
        for job_dir in dirs:
            name = job_dir.name
            path = job_dir / RESULTS_NAME
            failure = job_dir / FAILURE_NAME
            if failure.exists():
                report["failed"].append(name)
            if not path.exists():
                report["skipped"][name] = (f"failed: {_last_line(failure)}" if failure.exists()
                                           else "no results.h5 (job failed, still running or was killed)")
                continue
            try:
                if check_results(path) != "job":
                    raise ResultsError(f"{path}: not a job's results file")
                with h5py.File(path, "r") as src:
                    key = json.dumps([str(src.attrs.get("config", "")), str(src.attrs.get("overrides", ""))])
                    if key in seen:
                        report["skipped"][name] = f"duplicate of job {seen[key]} (same config and overrides)"
                        continue
                    _copy(src, jobs.create_group(name))
                    seen[key] = name
            except (ResultsError, OSError, KeyError) as exc:
                report["skipped"][name] = str(exc).splitlines()[0]
                continue
            report["merged"].append(name)
        group = out.create_group("analyses")
        for path in analysis_files(sweep_dir):
            name = "__".join(path.parent.relative_to(sweep_dir).parts)
            try:
                if check_results(path) != "analysis":
                    raise ResultsError(f"{path}: not an analysis file")
                with h5py.File(path, "r") as src:
                    _copy(src, group.create_group(name))
                report["analyses"].append(name)
            except (ResultsError, OSError, KeyError) as exc:
                report["skipped"][str(path.relative_to(sweep_dir))] = str(exc).splitlines()[0]
        set_attrs(out, {**provenance(), "kind": "sweep", "created": now_iso(), "sweep_dir": str(sweep_dir.resolve()),
                        "jobs": report["merged"], "analyses": report["analyses"], "skipped": report["skipped"]})

    write_atomic(output, fill, replace=True)
    return report


def describe(report: dict[str, Any]) -> str:
    """The merge report as lines: what was merged, what was skipped and why."""
    lines = [f"merged {len(report['merged'])} job(s)"
             + (f" and {len(report['analyses'])} analysis file(s)" if report["analyses"] else "")
             + f" into {report['output']}"]
    lines += [f"  skipped {job}: {reason}" for job, reason in report["skipped"].items()]
    return "\n".join(lines)


def failure_summary(sweep_dir: str | os.PathLike, report: dict[str, Any]) -> str | None:
    """One line when jobs of the sweep failed ("3 of 4 jobs failed: see DIR/N/error.txt"), else None."""
    failed = report["failed"]
    if not failed:
        return None
    total = len(job_dirs(Path(sweep_dir)))
    where = ", ".join(str(Path(sweep_dir) / job / FAILURE_NAME) for job in failed[:3]) + (" ..." if len(failed) > 3 else "")
    return f"{len(failed)} of {total} jobs failed: see {where}"


def merge_main(argv: list[str] | None = None) -> int:
    """``surfacekit-merge SWEEP_DIR [-o OUT]``: merge a sweep's job and analysis files, list skipped jobs."""
    import argparse

    parser = argparse.ArgumentParser(prog="surfacekit-merge", description=merge_main.__doc__)
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (holds one folder per job)")
    parser.add_argument("-o", "--output", help="merged file (default: SWEEP_DIR/sweep.h5)")
    args = parser.parse_args(argv)
    try:
        report = merge(args.sweep_dir, args.output)
    except ResultsError as exc:
        print(f"surfacekit-merge: error: {exc}", file=sys.stderr)
        return 2
    print(describe(report))
    return 0


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


_SWEEP_LOCK = None  # the open lock file of the running sweep (held until the sweep ends)


def release_sweep_lock() -> None:
    """Release the sweep directory's lock (at the end of the sweep, also when it failed or was
    interrupted: one process may run several sweeps in turn)."""
    global _SWEEP_LOCK
    if _SWEEP_LOCK is not None:
        _SWEEP_LOCK.close()
        _SWEEP_LOCK = None


class MergeCallback(Callback):
    """Hydra callback: one sweep per directory (a lock taken when the multirun starts), and the merge
    of the sweep directory when it ends (the command then exits non-zero if any job failed, see
    ``surfacekit.app``)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        import fcntl

        global _SWEEP_LOCK
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        handle = open(sweep_dir / ".surfacekit-sweep.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            print(f"surfacekit: error: {sweep_dir} is in use by another sweep (pid {handle.read().strip() or '?'}); "
                  "wait for it or choose another hydra.sweep.dir", file=sys.stderr)
            sys.exit(2)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _SWEEP_LOCK = handle

    def on_multirun_end(self, config, **kwargs) -> None:
        global LAST_REPORT
        sweep_dir = config.hydra.sweep.dir
        try:
            try:
                report = merge(sweep_dir)
            except ResultsError as exc:
                print(f"[surfacekit] nothing merged: {exc}", file=sys.stderr)
                LAST_REPORT = {"sweep_dir": sweep_dir, "failed": [], "error": str(exc)}
                return
            print("[surfacekit] " + describe(report))
            LAST_REPORT = {**report, "sweep_dir": sweep_dir}
        finally:
            release_sweep_lock()
