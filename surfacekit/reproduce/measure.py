"""Small helpers the checks of the reproductions share: reading the analyses' tables, trends."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from surfacekit.reproduce.entry import Context


def table(ctx: Context, folder: str, name: str) -> pd.DataFrame:
    """The table ``name.csv`` an analysis wrote into ``ctx.figures_dir(folder)``.

    Raises:
        FileNotFoundError: the analysis did not write it (the message names the path).
    """
    path = ctx.figures_dir(folder) / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the analysis wrote no such table")
    return pd.read_csv(path)


def falls(values: Sequence[float]) -> bool:
    """Whether ``values`` decrease strictly from each entry to the next (finite, two or more)."""
    v = np.asarray(values, dtype=float)
    return len(v) > 1 and bool(np.all(np.isfinite(v))) and bool(np.all(np.diff(v) < 0))


def sequence(values: Sequence[float], digits: int = 3) -> str:
    """A sequence as text, '0.494, 0.207, 0.155' (``digits`` significant digits)."""
    return ", ".join(f"{float(v):.{digits}g}" for v in values)
