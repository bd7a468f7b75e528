"""Shared helpers of the analysis scripts: output folder, saving figures, writing tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf; close the figure."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def markdown(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """Write ``name``.csv and ``name``.md."""
    frame.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(markdown(frame))
    return [out / f"{name}.csv", out / f"{name}.md"]
