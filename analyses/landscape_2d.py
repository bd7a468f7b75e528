"""Random-direction 2D slices (Li et al. 2018): contours and a 3D surface of one member's loss.

Reads ``/landscape/slice2d`` (and ``/landscape/slice1d`` when present) that ``surfacekit
task=landscape`` adds to a job's results file, and writes

* ``slice2d_m<member>_<split>.png/.pdf``: filled contours of L(theta* + x d1 + y d2) (log scale) and
  the 3D surface; with the 1D slice as a third panel when stored;
* ``slice2d_summary.csv/.md``: per member the loss at the center, the min and max over the grid, and
  the fraction of grid points within 2x the center loss (a crude flatness measure).

    python analyses/landscape_2d.py outputs/runs/.../results.h5 --member 0 --split train --out figures/slices
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from surfacekit.plots import save_figure, save_table
from surfacekit.store import ResultsError, load_group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a job results.h5 holding /landscape/slice2d")
    parser.add_argument("--member", type=int, nargs="*", default=None, help="member ids to plot (default: the first)")
    parser.add_argument("--split", default="train", choices=["train", "test"], help="which loss (default train)")
    parser.add_argument("--levels", type=int, default=30, help="contour levels (default 30)")
    parser.add_argument("--out", default="figures/landscape_2d", help="output directory")
    args = parser.parse_args(argv)
    try:
        g = load_group(args.source, "landscape/slice2d")
    except ResultsError as exc:
        print(f"landscape_2d.py: error: {exc}; run surfacekit task=landscape landscape.kind=slice2d source=... first", file=sys.stderr)
        return 2
    try:
        g1 = load_group(args.source, "landscape/slice1d")
    except ResultsError:
        g1 = None
    key = f"{args.split}_loss"
    if key not in g:
        print(f"landscape_2d.py: error: {args.source}: slice2d has no {key} (stored: {sorted(k for k in g if k.endswith('_loss'))})", file=sys.stderr)
        return 2
    ids = list(g["member"])
    chosen = args.member or ids[:1]
    missing = [m for m in chosen if m not in ids]
    if missing:
        print(f"landscape_2d.py: error: members {missing} not in slice2d (stored: {ids})", file=sys.stderr)
        return 2
    out = Path(args.out)
    x, y = g["x"], g["y"]
    X, Y = np.meshgrid(x, y, indexing="ij")
    written = []
    for m in chosen:
        z = g[key][ids.index(m)]
        panels = 3 if g1 is not None and key in g1 and m in list(g1["member"]) else 2
        fig = plt.figure(figsize=(5.2 * panels, 4.4))
        ax = fig.add_subplot(1, panels, 1)
        positive = np.clip(z, max(z.min(), 1e-12), None)
        levels = np.geomspace(positive.min(), positive.max(), args.levels)
        cs = ax.contourf(X, Y, positive, levels=levels, norm=LogNorm(), cmap="viridis")
        ax.contour(X, Y, positive, levels=levels[::3], colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label=f"{args.split} loss")
        ax.plot(0, 0, "r*", ms=8)
        ax.set_xlabel("x (direction 1)")
        ax.set_ylabel("y (direction 2)")
        ax.set_title(f"member {m}: contours", fontsize=10)
        ax3 = fig.add_subplot(1, panels, 2, projection="3d")
        ax3.plot_surface(X, Y, np.log10(positive), cmap="viridis", linewidth=0, antialiased=True)
        ax3.set_xlabel("x")
        ax3.set_ylabel("y")
        ax3.set_zlabel(f"log10 {args.split} loss")
        ax3.set_title(f"member {m}: surface", fontsize=10)
        if panels == 3:
            a1 = fig.add_subplot(1, 3, 3)
            i = list(g1["member"]).index(m)
            for split, ls in (("train", "-"), ("test", "--")):
                if f"{split}_loss" in g1:
                    a1.plot(g1["x"], g1[f"{split}_loss"][i], ls, label=split)
            a1.set_yscale("log")
            a1.set_xlabel("x")
            a1.set_title(f"member {m}: 1D slice", fontsize=10)
            a1.legend()
        fig.tight_layout()
        written += save_figure(fig, out, f"slice2d_m{m}_{args.split}")
    rows = []
    cx, cy = int(np.argmin(np.abs(x))), int(np.argmin(np.abs(y)))
    for i, m in enumerate(ids):
        for split in ("train", "test"):
            if f"{split}_loss" not in g:
                continue
            z = g[f"{split}_loss"][i]
            rows.append({"member": int(m), "split": split, "center": z[cx, cy], "min": z.min(), "max": z.max(),
                         "frac_within_2x_center": float(np.mean(z <= 2 * z[cx, cy])), "grid": f"{len(x)}x{len(y)}"})
    table = pd.DataFrame(rows)
    written += save_table(table, out, "slice2d_summary")
    print(table.to_string(index=False, float_format="%.4g"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
