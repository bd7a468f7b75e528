"""Progress bars for long work: live in a terminal, throttled in log files (SLURM output, app logs)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # seconds between progress lines when stderr is not a terminal


def bar(total: int | None = None, desc: str = "", enabled: bool = True, unit: str = "it", leave: bool = False) -> tqdm:
    """A tqdm bar on stderr; updated at most every 30 s when stderr is a file or pipe, so log files
    get a line per 30 s rather than one per update."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, unit=unit, leave=leave or not interactive,
                mininterval=0.1 if interactive else LOG_INTERVAL_S,
                maxinterval=10.0 if interactive else LOG_INTERVAL_S * 4)
