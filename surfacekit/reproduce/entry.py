"""What one reproduction is: its commands at each scale, and the checks that compare ours with the paper.

A reproduction (:class:`Reproduction`) is data plus two functions:

* ``plan(ctx) -> Plan``: the commands for ``ctx.scale``, in order: :class:`Surfacekit` steps (a
  sweep with ``-m`` into ``ctx.run_dir(name)``, or a post-hoc task on an earlier step's results) and
  :class:`Analysis` steps (``python analyses/<script>.py ... --out ctx.figures_dir(script)``), plus
  notes on what this scale leaves out and why;
* ``checks(ctx) -> list[Check]``: reads the results (``surfacekit.store`` loaders, the analysis
  tables in ``ctx.figures_dir(...)``) and returns one :class:`Check` per stated property or
  published number: our measured value, a confidence interval where one applies, the paper's value
  with its source, and PASS/FAIL (or ``None``: shown for comparison, not tested).

The runner (:mod:`surfacekit.reproduce.runner`) executes the plan, runs the checks and hands the
outcome to the report. Nothing here runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

SCALES = ("small", "full")


@dataclass(frozen=True)
class Surfacekit:
    """One ``surfacekit`` command. ``sweep=True``: ``surfacekit -m OVERRIDES`` into
    ``ctx.run_dir(name)`` (the runner adds ``hydra.sweep.dir``; the configured launcher runs it, so
    ``launcher=slurm`` sends it to a cluster). ``sweep=False``: a single job, e.g. a post-hoc task
    whose ``source=`` is an earlier sweep (it writes into SOURCE/analyses/<task>-<hash>/)."""

    name: str
    overrides: tuple[str, ...]
    sweep: bool = True


@dataclass(frozen=True)
class Analysis:
    """``python analyses/<script>.py ARGS --out ctx.figures_dir(out)`` (``out`` defaults to the script's name)."""

    script: str
    args: tuple[str, ...]
    out: str = ""

    @property
    def folder(self) -> str:
        return self.out or self.script


Step = Union[Surfacekit, Analysis]


@dataclass(frozen=True)
class Plan:
    """The steps of one reproduction at one scale, and what that scale leaves out (one line each, with the reason)."""

    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """One row of a reproduction's comparison table.

    ``claim``: the property or published quantity, in words. ``measured``: our value (a number or a
    short text). ``passed``: True/False for a tested property, None for a number shown beside the
    published one without a test (e.g. a correlation measured on digits beside the paper's MNIST
    value). ``criterion``: the pass rule in words. ``ci``: a confidence interval of ``measured``
    (with ``ci_level``). ``published`` and ``source``: the paper's value or claim and where it is
    (paper, figure, table, or this project's calibration note).
    """

    claim: str
    measured: float | int | str
    passed: bool | None
    criterion: str = ""
    ci: tuple[float, float] | None = None
    ci_level: str = ""
    published: str = ""
    source: str = ""

    def __post_init__(self):
        if self.passed is not None:  # numpy booleans from comparisons become plain ones
            object.__setattr__(self, "passed", bool(self.passed))


@dataclass(frozen=True)
class Context:
    """Where one reproduction runs: its scale, its folder (``DIR/<name>``) and optional local data."""

    name: str
    scale: str
    root: Path
    mnist: Path | None = None

    def run_dir(self, step: str) -> Path:
        """The sweep directory of the ``Surfacekit`` step named ``step``: ``DIR/<name>/runs/<step>``."""
        return self.root / "runs" / step

    def figures_dir(self, folder: str) -> Path:
        """Where an ``Analysis`` step writes: ``DIR/<name>/figures/<folder>``."""
        return self.root / "figures" / folder

    def by_scale(self, small, full):
        """``small`` or ``full`` for this context's scale."""
        return small if self.scale == "small" else full


@dataclass(frozen=True)
class Reproduction:
    """A registry entry: names, the paper, a one-paragraph summary, the plan and the checks.

    ``name`` is what ``--only`` takes and the folder under DIR; ``summary`` says what is reproduced,
    on what data, and where it departs from the paper.
    """

    name: str
    title: str
    reference: str
    summary: str
    plan: Callable[[Context], Plan]
    checks: Callable[[Context], Sequence[Check]]
