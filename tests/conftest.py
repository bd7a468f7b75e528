"""Shared fixtures: the command line run in this process (or as a subprocess), configs, small data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support import TINY, CliResult, _in_process, _subprocess

# Small ops run fastest on one thread, and CI machines may be shared.
torch.set_num_threads(1)


@pytest.fixture
def run_cli(tmp_path):
    """``run_cli(*args, cwd=tmp_path, subprocess=False)``: the ``surfacekit`` command with these
    arguments, in this process (fast; Hydra and torch state restored) or as a subprocess (for
    launchers, signals and exit codes of a real process). Returns returncode, stdout, stderr."""

    def run(*args: str, cwd: Path | None = None, subprocess: bool = False, timeout: float = 600) -> CliResult:
        where = Path(cwd or tmp_path)
        return _subprocess(list(args), where, timeout) if subprocess else _in_process(list(args), where)

    return run


@pytest.fixture
def float64():
    """torch's default dtype set to float64 for the test, restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def digits64():
    """A small float64 slice of digits: 200 train, 100 test examples."""
    from surfacekit.data import load_data

    d = load_data({"name": "digits", "train_size": 200, "test_size": 100})
    return d.to("cpu", torch.float64)


@pytest.fixture(scope="session")
def trained_job(tmp_path_factory):
    """A tiny finished training job (2 members, 64-3-10, snapshots on) in a sweep-like folder
    ``.../sweep/0``; trained once per session, in this process. Do not write into it."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = root / "sweep" / "0"
    result = _in_process([*TINY, "trainer.epochs=5", "data.train_size=150", "trainer.snapshots=true",
                          f"hydra.run.dir={run_dir}"], root)
    assert result.returncode == 0, result.stderr
    return run_dir / "results.h5"


@pytest.fixture
def job_copy(trained_job, tmp_path):
    """A private copy of the trained job's sweep folder (post-hoc tasks write beside their source)."""
    import shutil

    shutil.copytree(trained_job.parent.parent, tmp_path / "sweep")
    return tmp_path / "sweep" / "0" / "results.h5"
