"""``surfacekit-reproduce``: run every paper reproduction and write one static report.

    surfacekit-reproduce [--scale small|full] [--only NAME ...] [--out DIR] [--mnist DIR] [--resume]
                         [--list] [OVERRIDE ...]

OVERRIDEs (``key=value``) go to every ``surfacekit`` command of every reproduction, e.g.
``launcher=joblib hydra.launcher.n_jobs=2`` or ``launcher=slurm hydra.launcher.partition=gpu device=cuda``.
Exit status: 0 when every reproduction passed, 1 when one failed or could not run, 2 for a bad
command line, 130 when interrupted (the report then holds the reproductions that finished).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from surfacekit.reproduce.entries import registry
from surfacekit.reproduce.entry import SCALES, Context
from surfacekit.reproduce.report import RunInfo, duration, write_report
from surfacekit.reproduce.runner import Outcome, cpu_seconds, run_one
from surfacekit.store import provenance

PROG = "surfacekit-reproduce"


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _parser(names: list[str]) -> argparse.ArgumentParser:
    entries = registry()
    listing = "\n".join(f"  {n:<18} {entries[n].title}" for n in names)
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the paper reproductions (their surfacekit sweeps, analyses and property checks) and write a "
                    "static report DIR/index.html (and DIR/report.md): per reproduction the figures, tables, the "
                    "published numbers beside ours with their sources, each property's measured value, CI and "
                    "PASS/FAIL, wall time and the exact commands.",
        epilog=f"reproductions:\n{listing}\n\nkey=value arguments are Hydra overrides added to every surfacekit command, "
               "e.g. launcher=joblib hydra.launcher.n_jobs=2, or launcher=slurm hydra.launcher.partition=... with "
               "--scale full. --scale small runs one process at a time (docs/reproduce.md).")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small: the default, a budget of 20 minutes on 2 cores (measured: about 4 minutes of wall and CPU "
                             "time for all ten on a quiet machine); "
                             "full: the papers' sizes where the data exist locally (hours; a cluster with launcher=slurm)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these reproductions (names below)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="report folder (default outputs/reproduce/DATE/TIME-SCALE); must be new "
                                                 "or empty unless --resume")
    parser.add_argument("--mnist", type=Path, metavar="DIR", help="folder with the MNIST files (IDX or .npz): --scale full then uses the "
                                                   "papers' MNIST settings where they exist (e.g. Choromanska's 10x10 MNIST)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse an existing --out: finished jobs are skipped (resume=true), analyses and checks rerun")
    parser.add_argument("--list", action="store_true", help="list the reproductions and exit")
    return parser


def _default_out(scale: str) -> Path:
    now = datetime.now()
    return Path("outputs") / "reproduce" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}-{scale}"


def _check_overrides(overrides: list[str]) -> str | None:
    """The one-line reason the overrides cannot compose with the default config, or None."""
    from surfacekit.app import precheck
    from surfacekit.config import ConfigError

    try:
        precheck(overrides)
    except ConfigError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    entries = registry()
    names = list(entries)
    parser = _parser(names)
    args = parser.parse_args([a for a in argv if a not in overrides])
    if args.list:
        for name in names:
            print(f"{name:<18} {entries[name].title} ({entries[name].reference})")
        return 0
    chosen = args.only or names
    unknown = [n for n in chosen if n not in entries]
    if unknown:
        parser.error(f"unknown reproduction(s) {unknown}; choose from {names}")
    if args.mnist is not None and not args.mnist.is_dir():
        parser.error(f"--mnist {args.mnist}: no such folder")
    out = args.out or _default_out(args.scale)
    used = [n for n in chosen if (out / n).exists() and any((out / n).iterdir())]
    if used and not args.resume:
        parser.error(f"{out} already holds {used}: pass --resume to reuse their finished jobs, or choose another --out")
    problem = _check_overrides(overrides) if overrides else None
    if problem:
        parser.error(f"override rejected by surfacekit: {problem}")

    start, cpu, started = time.perf_counter(), cpu_seconds(), datetime.now().astimezone().isoformat(timespec="seconds")
    info = dict(command=shlex.join([PROG, *argv]), overrides=tuple(overrides), scale=args.scale, cwd=os.getcwd(), started=started,
                provenance=provenance(), load_start=os.getloadavg())
    _say(f"{len(chosen)} reproduction(s) at scale {args.scale} -> {out} (each command's output: {out}/NAME/log.txt)")
    outcomes: list[Outcome] = []
    finished = False
    try:
        for i, name in enumerate(chosen, 1):
            tag = f"[{i}/{len(chosen)}] {name}"
            _say(f"{tag}: {entries[name].title}")
            ctx = Context(name, args.scale, out / name, args.mnist)
            outcome = run_one(entries[name], ctx, overrides, args.resume, progress=lambda m, tag=tag: _say(f"{tag}: {m}"))
            outcomes.append(outcome)
            if outcome.error:
                _say(f"{tag}: ERROR in {duration(outcome.seconds)}: {outcome.error.strip().splitlines()[-1]}")
            else:
                tested = [c for c in outcome.checks if c.passed is not None]
                _say(f"{tag}: {outcome.status} ({sum(bool(c.passed) for c in tested)} of {len(tested)} checks passed) "
                     f"in {duration(outcome.seconds)}")
            write_report(outcomes, RunInfo(**info, load_end=os.getloadavg(), seconds=time.perf_counter() - start,
                                           cpu_seconds=cpu_seconds() - cpu, finished=False), out)
        finished = True
    except KeyboardInterrupt:
        _say("interrupted")
    page = write_report(outcomes, RunInfo(**info, load_end=os.getloadavg(), seconds=time.perf_counter() - start,
                                          cpu_seconds=cpu_seconds() - cpu, finished=finished), out)
    for o in outcomes:
        print(f"{o.status:<5}  {o.entry.name:<18} {duration(o.seconds):>12}")
    print(f"report: {page}")
    if not finished:
        return 130
    return 0 if all(o.status == "PASS" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
