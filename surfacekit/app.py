"""The ``surfacekit`` command: check the command line, then run one Hydra job per configuration.

Before Hydra starts, every configuration the command line names (each value of a sweep) is
composed and validated (:func:`surfacekit.config.validate`), so a typo, an unknown option or a bad
value ends with one line (``surfacekit: error: ...``, exit 2) before any work, with the nearest
valid keys where Hydra would suggest an appending ``+``. Each job then runs
``surfacekit.tasks.<task>.run(cfg, out_dir)`` in its own run directory, holding a lock on it. A
failed job of a sweep writes ``error.txt`` (and its traceback to ``app.log``) and the sweep goes
on; the command exits 1 after the merge when any job failed. Ctrl-C ends with one line (exit 130).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from surfacekit import jobs, sweep
from surfacekit.config import TASK_RULES, ConfigError, check_forced, flat_keys, mapping_hint, nearest_keys, validate
from surfacekit.data import DataError
from surfacekit.jobs import JobError
from surfacekit.store import FAILURE_NAME, ResultsError

USER_ERRORS = (ConfigError, DataError, ResultsError, JobError)
log = logging.getLogger("surfacekit")
jobs.register_resolvers()

# Hydra flags that print something instead of running (no pre-check), and flags that take a value.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun", "--info", "-i"}
_MULTIRUN = {"-m", "--multirun"}


def setup(cfg: DictConfig) -> None:
    """Process-wide settings every job starts from (joblib reuses worker processes)."""
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    torch.set_flush_denormal(True)
    torch.manual_seed(int(cfg.seed))
    np.random.seed(int(cfg.seed) % 2**32)
    jobs.WARNINGS.clear()
    jobs.stop_with_parent()


def run(cfg: DictConfig) -> Path:
    """Validate, then run the configured task in this Hydra job; return its results path."""
    setup(cfg)  # clears the warnings of the previous job of this process first
    for message in validate(cfg, jobs.job_overrides()):
        jobs.warn(message)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with jobs.directory_lock(out_dir):
        (out_dir / FAILURE_NAME).unlink(missing_ok=True)
        return importlib.import_module(f"surfacekit.tasks.{cfg.task}").run(cfg, out_dir)


def record_failure(exc: BaseException) -> None:
    """A failed job of a sweep writes ``error.txt`` into its directory (the merge reports it), its
    traceback into the job's log file, and the sweep goes on."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, jobs.DirectoryInUse):  # another process's directory: write nothing there
        print(f"surfacekit: job {HydraConfig.get().job.num} failed: {first}", file=sys.stderr)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    text = str(exc) if isinstance(exc, USER_ERRORS) else "".join(traceback.format_exception(exc))
    (out_dir / FAILURE_NAME).write_text(text)
    _log_to_file(out_dir, "job failed:\n" + "".join(traceback.format_exception(exc)))
    print(f"surfacekit: job {HydraConfig.get().job.num} failed: {first}", file=sys.stderr)


def _log_to_file(out_dir: Path, text: str) -> None:
    """Append to the job's log file (``app.log``) only: the console gets the one-line summary."""
    with open(out_dir / f"{HydraConfig.get().job.name}.log", "a") as f:
        f.write(text if text.endswith("\n") else text + "\n")


@hydra.main(version_base="1.3", config_path="pkg://surfacekit.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run(cfg)
    except USER_ERRORS as exc:
        if sweeping:
            record_failure(exc)
            return
        print(f"surfacekit: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        out_dir = HydraConfig.get().runtime.output_dir
        print(f"surfacekit: interrupted; finished parts (if any) are kept in {out_dir}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not sweeping:
            raise
        record_failure(exc)


# ----------------------------------------------------------------------------------- command-line pre-check

def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a Hydra command line."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _VALUE_FLAGS and i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]:
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def _compose(overrides: list[str]) -> DictConfig:
    """The job config for these overrides (Hydra's own ``hydra.*`` overrides applied and checked, the
    ``hydra`` node then dropped)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="surfacekit.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _composition_message(exc: Exception, overrides: list[str]) -> str:
    """Hydra's composition error as one line, with the nearest valid keys instead of a '+' hint."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "Could not override '" in text:
        key = text.split("Could not override '", 1)[1].split("'", 1)[0]
        if mapping_hint(key):
            return f"{key}: {mapping_hint(key)}"
        groups = [o for o in overrides if "=" in o and "." not in o.partition("=")[0].lstrip("+~")]
        try:
            known = flat_keys(_compose(groups))
        except Exception:  # noqa: BLE001 - suggestions are best effort
            known = []
        head = key.split(".", 1)[0]
        if head in TASK_RULES and f"task={head}" not in overrides:
            return f"{key}: the {head}.* settings belong to task={head}; add task={head} to the command line"
        hint = nearest_keys(key, known)
        return f"{key}: no such setting" + (f"; did you mean {' or '.join(hint)}?" if hint else "")
    if "Could not find '" in text or "Could not load '" in text:
        missing = text.split("Could not ", 1)[1].split("'", 2)[1]
        group, _, option = missing.rpartition("/")
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
        available = []
        if start is not None:
            for line in lines[start + 1:]:
                if not line.startswith("\t"):
                    break
                available.append(line.strip())
        close = difflib_close(option, available)
        return (f"{group}={option} is unknown" + (f"; choose one of {available}" if available else "")
                + (f" (did you mean {close}?)" if close else ""))
    if "=~" in text or "token recognition error at: '~'" in text:
        culprit = next((o for o in overrides if "=~" in o), first)
        return (f"{culprit}: a path starting with ~ is not valid Hydra syntax: write $HOME/... (the shell expands it) "
                "or quote it: 'data.path=\"~/data\"'")
    return first


def difflib_close(word: str, options: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    return close[0] if close else ""


def _groups() -> set[str]:
    """Config group names (folders of conf/)."""
    from importlib.resources import files

    return {p.name for p in files("surfacekit.conf").iterdir() if p.is_dir() and not p.name.startswith("_")}


def _check_hydra_paths(overrides: list[str]) -> None:
    for text in overrides:
        key, _, value = text.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir"):
            value = value.strip("'\"")
            if not value:
                raise ConfigError(f"{text}: an empty directory; name one (results are written there)")
            if value.startswith("~"):
                raise ConfigError(f"{text}: Hydra does not expand ~ in its directories (it would create a folder "
                                  f"named ~); write $HOME/{value[1:].lstrip('/')} (the shell expands it)")


def precheck(overrides: list[str]) -> None:
    """Compose and validate every configuration of the command line before any work; ConfigError on
    the first problem.

    Each value of a swept config group is composed once (with the other swept keys at their first
    value); each value of a swept setting is checked on the composed config directly (no compose), so
    a sweep of any length is checked in full at the cost of one validation per value. Hydra's own
    overrides (``hydra.*``) are composed with the job's.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _check_hydra_paths(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(_composition_message(exc, overrides)) from None
    groups = _groups()
    is_group = lambda o: o.key_or_group in groups or o.key_or_group.startswith("hydra/")  # noqa: E731
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
             for o in parsed]
    combos = [first]
    for i, o in enumerate(parsed):
        if o.is_sweep_override() and is_group(o):
            combos += [first[:i] + [f"{o.get_key_element()}={v}"] + first[i + 1:] for v in list(o.sweep_string_iterator())[1:]]
    value_sweeps = [(i, o) for i, o in enumerate(parsed) if o.is_sweep_override() and not is_group(o)]
    for combo in combos:
        try:
            cfg = _compose(combo)
            forced = [t for t in combo if t.startswith("++")]
            if forced:
                check_forced(forced, _compose([t for t in combo if not t.startswith("++")]))
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(_composition_message(exc, combo)) from None
        job = [t for t in combo if not t.lstrip("+~").startswith(("hydra.", "hydra/"))]
        validate(cfg, job)
        for i, o in value_sweeps:
            for value, text in list(zip(o.sweep_iterator(), o.sweep_string_iterator()))[1:]:
                variant = OmegaConf.create(OmegaConf.to_container(cfg))
                OmegaConf.update(variant, o.key_or_group, value, force_add=True)
                validate(variant, job[:i] + [f"{o.get_key_element()}={text}"] + job[i + 1:])


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``surfacekit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags, overrides = _split(argv)
    multirun = any(f in _MULTIRUN for f in flags)
    if multirun and overrides:
        first_override = next(i for i, a in enumerate(argv) if a in overrides)
        first_m = next(i for i, a in enumerate(argv) if a in _MULTIRUN)
        if first_m > first_override:
            print("surfacekit: error: -m/--multirun must come before the overrides: surfacekit -m "
                  + " ".join(a for a in argv if a not in _MULTIRUN), file=sys.stderr)
            sys.exit(2)
    if not any(f in _INFO_FLAGS for f in flags):
        try:
            precheck(overrides)
        except ConfigError as exc:
            print(f"surfacekit: error: {exc}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    sweep.LAST_REPORT = None
    try:
        hydra_main()
    except KeyboardInterrupt:
        print("surfacekit: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        sweep.release_sweep_lock()
    report = sweep.LAST_REPORT
    if multirun and report:
        summary = sweep.failure_summary(report["sweep_dir"], report) if report.get("failed") else None
        if summary:
            print(f"surfacekit: {summary}", file=sys.stderr)
            sys.exit(1)
