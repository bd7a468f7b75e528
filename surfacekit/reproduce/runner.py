"""Run reproductions: each plan's commands as subprocesses, then its checks, with progress and timing.

Every step is a real command line, the one the report prints: ``surfacekit [-m] OVERRIDES`` (run as
``python -m surfacekit`` with this interpreter, so the configured Hydra launcher applies) or
``python analyses/<script>.py ARGS --out DIR``. Output goes to the reproduction's ``log.txt``;
Hydra's job-launch lines and surfacekit's one-line errors are echoed as progress. A step that exits
non-zero, or checks that raise, make the reproduction an ERROR with the error's last lines; the
other reproductions still run. The report is rewritten after every reproduction, so an interrupted
run leaves a report of what finished.
"""

from __future__ import annotations

import collections
import os
import re
import resource
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Step, Surfacekit

# The analysis scripts live in the source checkout beside the package (they are not installed).
ANALYSES_DIR = Path(__file__).resolve().parents[2] / "analyses"
# Hydra's job-launch line ("[...][HYDRA] \t#3 : model.width=50 ...") and surfacekit's own one-liners.
_JOB_LINE = re.compile(r"\[HYDRA\]\s+#(\d+) : (.*)")
_ERROR_LINE = re.compile(r"^[\w.-]+: (error|warning): ")
_ERROR_TAIL = 15  # lines of a failed command's output kept for the report


class ReproduceError(RuntimeError):
    """A step of a reproduction failed; the message is the command's last lines of output."""


@dataclass
class StepResult:
    """One executed command: its shell form, wall seconds and exit status."""

    command: str
    seconds: float
    returncode: int


@dataclass
class Outcome:
    """What one reproduction gave: status PASS (every tested check passed), FAIL (a check failed)
    or ERROR (a step or the checks failed; ``error`` holds the message), with its checks, commands,
    the scale's notes, wall and CPU seconds (this process and its children) and the log file."""

    entry: Reproduction
    ctx: Context
    status: str
    checks: list[Check] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    error: str = ""

    @property
    def log(self) -> Path:
        return self.ctx.root / "log.txt"


def status_of(checks: Sequence[Check]) -> str:
    """PASS when every tested check passed, FAIL otherwise (also when nothing was tested)."""
    tested = [c.passed for c in checks if c.passed is not None]
    return "PASS" if tested and all(tested) else "FAIL"


def cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _script_path(script: Path) -> str:
    """An analysis script's path as the report prints it: relative to the working directory when below it."""
    try:
        return str(script.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(script)


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """Keys an override list sweeps (``key=a,b``; commas inside brackets are a list value, not a sweep)."""
    keys = []
    for text in overrides:
        key, _, value = text.partition("=")
        depth, sweep = 0, False
        for ch in value:
            if ch in "[{(":
                depth += 1
            elif ch in "]})":
                depth -= 1
            elif ch == "," and depth == 0:
                sweep = True
        if sweep:
            keys.append(key)
    return keys


def command_line(step: Step, ctx: Context, overrides: Sequence[str], resume: bool) -> tuple[list[str], str]:
    """(argv to execute, the shell command the report shows) of one step."""
    if isinstance(step, Surfacekit):
        args = list(step.overrides) + list(overrides)
        if step.sweep:
            args = ["-m", *args, f"hydra.sweep.dir={ctx.run_dir(step.name)}"]
            if resume:
                args.append("resume=true")
        return [sys.executable, "-m", "surfacekit", *args], shlex.join(["surfacekit", *args])
    script = ANALYSES_DIR / f"{step.script}.py"
    args = [*step.args, "--out", str(ctx.figures_dir(step.folder))]
    return [sys.executable, str(script), *args], shlex.join(["python", _script_path(script), *args])


def execute(argv: list[str], log: TextIO, progress: Callable[[str], None], swept: Sequence[str] = ()) -> tuple[int, list[str]]:
    """Run ``argv`` with its output (stdout and stderr) going through :func:`relay`. Returns (exit
    status, the last lines of output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        tail = relay(proc.stdout, log, progress, swept)
        code = proc.wait()
    return code, tail


def relay(lines: Iterable[str], log: TextIO, progress: Callable[[str], None], swept: Sequence[str] = ()) -> list[str]:
    """Copy a command's output ``lines`` to ``log`` as they come; echo Hydra's job-launch lines (with the
    values of the ``swept`` keys) and the one-line messages of surfacekit and the analyses
    (``prog: error: ...``) to ``progress``. Returns the last non-empty lines (for the report of a failure)."""
    tail: collections.deque[str] = collections.deque(maxlen=_ERROR_TAIL)
    for line in lines:
        log.write(line)
        log.flush()
        if line.strip():
            tail.append(line.rstrip("\n"))
        job = _JOB_LINE.search(line)
        if job:
            values = [t for t in job.group(2).split() if t.partition("=")[0] in swept]
            progress(f"job #{job.group(1)}" + (f": {' '.join(values)}" if values else ""))
        elif line.startswith("surfacekit: ") or _ERROR_LINE.match(line):
            progress(line.strip())
    return list(tail)


def run_one(entry: Reproduction, ctx: Context, overrides: Sequence[str] = (), resume: bool = False,
            progress: Callable[[str], None] = print) -> Outcome:
    """Plan, execute and check one reproduction; never raises for a failing step or check (ERROR)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    ctx.root.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(entry, ctx, "ERROR")
    with open(ctx.root / "log.txt", "a") as log:
        try:
            plan: Plan = entry.plan(ctx)
            outcome.notes = plan.notes
            for note in plan.notes:
                progress(f"note: {note}")
            for step in plan.steps:
                argv, shown = command_line(step, ctx, overrides, resume)
                if isinstance(step, Analysis) and not Path(argv[1]).exists():
                    raise ReproduceError(f"{argv[1]} not found: surfacekit-reproduce runs the analysis "
                                         "scripts of a source checkout (they are not installed with the package)")
                progress(shown)
                log.write(f"$ {shown}\n")
                log.flush()
                t0 = time.perf_counter()
                code, tail = execute(argv, log, progress, swept_keys(step.overrides) if isinstance(step, Surfacekit) else ())
                outcome.steps.append(StepResult(shown, time.perf_counter() - t0, code))
                if code != 0:
                    raise ReproduceError(f"exit status {code} from: {shown}\n" + "\n".join(tail))
            log.write("$ checks\n")
            outcome.checks = list(entry.checks(ctx))
            for check in outcome.checks:
                log.write(f"{mark(check.passed)} {check.claim}: {check.measured}\n")
            outcome.status = status_of(outcome.checks)
        except Exception as exc:  # noqa: BLE001 - one reproduction's failure must not stop the others
            outcome.status = "ERROR"
            outcome.error = str(exc) if isinstance(exc, ReproduceError) else f"{type(exc).__name__}: {exc}"
            log.write("".join(traceback.format_exception(exc)))
    outcome.seconds = time.perf_counter() - start
    outcome.cpu_seconds = cpu_seconds() - cpu
    return outcome


def mark(passed: bool | None) -> str:
    """PASS, FAIL or info (a check shown without a test)."""
    return {True: "PASS", False: "FAIL", None: "info"}[passed]
