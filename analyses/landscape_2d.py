"""Random-direction 2D slices (Li et al. 2018): contours and a 3D surface of one member's loss.

Reads ``/landscape/slice2d`` (and ``/landscape/slice1d`` when present) of one job: a results file,
a run directory, or a sweep directory or merged ``sweep.h5`` with ``--job NAME``. ``surfacekit
task=landscape`` writes them to ``SOURCE/analyses/landscape-HASH/landscape.h5`` (the training file
is never modified); the newest landscape analysis of the job that holds the group is read, so a
later analysis that computed only slice1d does not hide an earlier slice2d. Writes into --out
(default RESULTS_DIR/analysis/landscape_2d):

* ``slice2d_m<member>_<split>.png/.pdf``: filled contours of L(theta* + x d1 + y d2) (log colour
  scale, labelled round ticks) with the solution (x = y = 0) and the grid minimum marked, the 3D
  surface of log10 L, and the 1D slice as a third panel when stored;
* ``slice2d_summary.csv/.md``: per member and split the loss at the centre, the min and max over the
  grid, and the fraction of grid points within 2x the centre loss (a crude flatness measure).

L is the data loss of the split (``train_objective``, the loss plus the L2 term of training, is
stored beside it by the task); batch-norm networks are evaluated with the training set's
statistics at every grid point.

    python analyses/landscape_2d.py outputs/runs/.../results.h5 --member 0 --split train [--out DIR]
    python analyses/landscape_2d.py SWEEP_DIR --job 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from surfacekit.plots import (AnalysisError, analysis_with, h5_attr, log_axis, log_colorbar, one_job, one_line_errors,
                              output_dir, results_path, save_figure, save_table)
from surfacekit.store import ResultsError, load_group

PROG = "landscape_2d"


def direction_label(path: Path, job: str) -> str:
    """'filter-normalized' etc.: the slice settings of the landscape analysis the slice came from
    (the job's newest one holding slice2d; a schema-1 file: its ``landscape_config`` attribute); ''
    when unknown."""
    found = analysis_with(path, job, "landscape", "landscape/slice2d")
    try:
        settings = found.settings if found else json.loads(h5_attr(path, "landscape_config"))
        return f"{settings['slice']['normalization']}-normalized"
    except (TypeError, ValueError, KeyError):
        return ""


def slice_figure(g: dict, g1: dict | None, member: int, split: str, levels: int, normalized: str) -> plt.Figure:
    """Contours, 3D surface and (when stored) the 1D slice of one member."""
    ids = list(g["member"])
    x, y = g["x"], g["y"]
    z = g[f"{split}_loss"][ids.index(member)]
    X, Y = np.meshgrid(x, y, indexing="ij")
    with_1d = g1 is not None and f"{split}_loss" in g1 and member in list(g1["member"])
    panels = 3 if with_1d else 2
    fig = plt.figure(figsize=(5.0 * panels, 4.2))
    ax = fig.add_subplot(1, panels, 1)
    finite = z[np.isfinite(z)]
    positive = np.clip(z, max(finite.min(), 1e-12), None)
    lo, hi = positive.min(), positive.max()
    bounds = np.geomspace(lo, hi * (1 + 1e-12), levels)
    cs = ax.contourf(X, Y, positive, levels=bounds, norm=LogNorm(lo, hi), cmap="viridis")
    ax.contour(X, Y, positive, levels=bounds[::3], colors="k", linewidths=0.3, alpha=0.6)
    log_colorbar(fig, cs, ax, f"{split} loss", lo, hi)
    i, j = np.unravel_index(np.argmin(positive), positive.shape)
    if x[i] == 0 and y[j] == 0:  # one marker: a second one would hide the first
        ax.plot(0, 0, marker="*", ms=12, mfc="white", mec="k", ls="none",
                label=rf"solution $\theta^*$ = grid minimum {positive[i, j]:.3g}")
    else:
        ax.plot(0, 0, marker="*", ms=12, mfc="white", mec="k", ls="none", label=r"solution $\theta^*$")
        ax.plot(x[i], y[j], marker="X", ms=8, mfc="tab:red", mec="white", ls="none", label=f"grid minimum {positive[i, j]:.3g}")
    suffix = f", {normalized}" if normalized else ""
    ax.set_xlabel(f"$x$ (along direction $d_1${suffix})")
    ax.set_ylabel(f"$y$ (along direction $d_2${suffix})")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", framealpha=0.85)
    ax.set_title(rf"member {member}: $L(\theta^* + x\,d_1 + y\,d_2)$")

    ax3 = fig.add_subplot(1, panels, 2, projection="3d")
    ax3.plot_surface(X, Y, np.log10(positive), cmap="viridis", linewidth=0, antialiased=True)
    ax3.set_xlabel("$x$")
    ax3.set_ylabel("$y$")
    ax3.set_zlabel(rf"$\log_{{10}}$ {split} loss")
    for axis in (ax3.xaxis, ax3.yaxis, ax3.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax3.set_box_aspect(None, zoom=0.85)  # room for the z label
    ax3.set_title(f"member {member}: surface")

    if with_1d:
        a1 = fig.add_subplot(1, 3, 3)
        k = list(g1["member"]).index(member)
        values = []
        for name, style in (("train", "-"), ("test", "--")):
            if f"{name}_loss" in g1:
                a1.plot(g1["x"], g1[f"{name}_loss"][k], style, color="k", label=name)
                values.append(g1[f"{name}_loss"][k])
        log_axis(a1, np.concatenate(values), "y", ticks="round")
        a1.set_xlabel(f"$x$ (along direction $d_1${suffix})")
        a1.set_ylabel("loss")
        a1.set_title(f"member {member}: 1D slice")
        a1.legend()
    return fig


def summary_table(g: dict) -> pd.DataFrame:
    x, y = g["x"], g["y"]
    cx, cy = int(np.argmin(np.abs(x))), int(np.argmin(np.abs(y)))
    rows = []
    for i, m in enumerate(g["member"]):
        for split in ("train", "test"):
            if f"{split}_loss" not in g:
                continue
            z = g[f"{split}_loss"][i]
            rows.append({"member": int(m), "split": split, "center": z[cx, cy], "min": np.nanmin(z), "max": np.nanmax(z),
                         "frac_within_2x_center": float(np.mean(z <= 2 * z[cx, cy])), "grid": f"{len(x)}x{len(y)}"})
    return pd.DataFrame(rows)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a job's results.h5 or run directory analysed by task=landscape, or a sweep")
    parser.add_argument("--job", help="the job to read when SOURCE is a sweep (e.g. 0)")
    parser.add_argument("--member", type=int, nargs="*", default=None, help="member ids to plot (default: the first)")
    parser.add_argument("--split", default="train", choices=["train", "test"], help="which loss (default train)")
    parser.add_argument("--levels", type=int, default=30, help="contour levels (default 30)")
    parser.add_argument("--out", help="output directory (default RESULTS_DIR/analysis/landscape_2d)")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    job = one_job(path, args.job)
    try:
        g = load_group(path, "landscape/slice2d", job)
    except ResultsError as exc:
        raise AnalysisError(f"{exc}; run surfacekit task=landscape landscape.kind=slice2d source={path} first") from None
    try:
        g1 = load_group(path, "landscape/slice1d", job)
    except ResultsError:
        g1 = None
    key = f"{args.split}_loss"
    if key not in g:
        raise AnalysisError(f"{path}: slice2d has no {key} (stored: {sorted(k for k in g if k.endswith('_loss'))})")
    ids = [int(m) for m in g["member"]]
    chosen = args.member or ids[:1]
    missing = [m for m in chosen if m not in ids]
    if missing:
        raise AnalysisError(f"{path}: members {missing} not in slice2d (stored: {ids})")
    out = output_dir(path, PROG, args.out)
    written = []
    for m in chosen:
        fig = slice_figure(g, g1, m, args.split, args.levels, direction_label(path, job))
        written += save_figure(fig, out, f"slice2d_m{m}_{args.split}")
    table = summary_table(g)
    written += save_table(table, out, "slice2d_summary")
    print(table.to_string(index=False, float_format="%.4g"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
