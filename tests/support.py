"""Helpers shared by the tests (import as ``from support import ...``): the command line run in
this process or as a subprocess, composed configs, tiny job settings."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ("population.size=2", "trainer.epochs=2", "model.width=3", "data.train_size=100", "progress=false", "threads=1")



@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def _in_process(args: list[str], cwd: Path) -> CliResult:
    from surfacekit import app

    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_argv = Path.cwd(), sys.argv
    code = 0
    os.chdir(cwd)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                sys.argv = ["surfacekit"]
                app.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    return CliResult(code, out.getvalue(), err.getvalue())


def _subprocess(args: list[str], cwd: Path, timeout: float) -> CliResult:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "surfacekit", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return CliResult(out.returncode, out.stdout, out.stderr)


def compose_config(overrides=()):
    """The composed job config for these overrides (no Hydra run)."""
    from hydra import compose, initialize_config_module

    from surfacekit import jobs

    jobs.register_resolvers()
    with initialize_config_module(config_module="surfacekit.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))




class UserNet(torch.nn.Module):
    """A user's module class for ``model=module model._target_=support.UserNet`` in tests: flatten,
    linear, BatchNorm1d, tanh, linear (takes in_shape and num_outputs from the data)."""

    def __init__(self, in_shape, num_outputs, hidden=4):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(in_shape).prod()), hidden),
                                        torch.nn.BatchNorm1d(hidden), torch.nn.Tanh())
        self.out = torch.nn.Linear(hidden, num_outputs)

    def forward(self, x):
        return self.out(self.body(x))


class FrozenNet(UserNet):
    """UserNet with its first linear layer frozen (requires_grad=False): a population cannot honour it."""

    def __init__(self, in_shape, num_outputs, hidden=4):
        super().__init__(in_shape, num_outputs, hidden)
        self.body[1].weight.requires_grad_(False)


class RandomFeaturesNet(torch.nn.Module):
    """A fixed random projection drawn at construction (a seed-dependent buffer) and a linear head."""

    def __init__(self, in_shape, num_outputs, hidden=4):
        super().__init__()
        self.register_buffer("projection", torch.randn(int(torch.tensor(in_shape).prod()), hidden))
        self.head = torch.nn.Linear(hidden, num_outputs)

    def forward(self, x):
        return self.head(torch.tanh(x.flatten(1) @ self.projection))


def interrupt_after(monkeypatch, owner, name: str, calls: int) -> list:
    """Let ``owner.name`` run ``calls`` times, then raise KeyboardInterrupt (a Ctrl-C in the middle of
    a task). Returns the list of each call's keyword arguments; ``monkeypatch.undo()`` restores it."""
    original, seen = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        if len(seen) == calls:
            raise KeyboardInterrupt
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return seen
