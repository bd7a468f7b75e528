"""Loss along linear interpolation paths (Goodfellow, Vinyals & Saxe 2015) and a barrier table.

Reads the ``/landscape/interpolation_init`` and ``/landscape/interpolation_pairs`` groups that
``surfacekit task=landscape`` adds to a job's results file, and writes into --out (default
FIRST_RESULTS_DIR/analysis/interpolation):

* ``interpolation.png/.pdf``: train (solid) and test (dashed) loss against alpha, init -> solution
  (one line per member) and solution -> solution (one line per pair); [0, 1] is shaded. Up to 8
  lines are named in a legend; more are coloured along a colormap with a colour bar;
* ``interpolation_barriers.csv/.md``: per path the endpoint losses, the barrier
  max_{a in [0,1]} L(a) - max(L(0), L(1)), the barrier above the chord, and monotonicity.

    python analyses/interpolation.py outputs/runs/.../results.h5 [more results.h5 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.lines import Line2D

from surfacekit.plots import (AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table,
                              sequential_colors)
from surfacekit.store import ResultsError, load_group

PROG = "interpolation"
GROUPS = {"interpolation_init": "initialization → solution", "interpolation_pairs": "solution → solution"}
MAX_LEGEND = 8


def groups(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in GROUPS:
        try:
            out[name] = load_group(path, f"landscape/{name}")
        except ResultsError:
            pass
    if not out:
        raise AnalysisError(f"{path}: no /landscape/interpolation_* groups; run surfacekit task=landscape source={path} first")
    return out


def path_names(g: dict[str, np.ndarray]) -> list[str]:
    if "member" in g:
        return [f"member {m}" for m in g["member"]]
    return [f"members {a}–{b}" for a, b in zip(g["pair_a"], g["pair_b"])]


def draw_panel(fig: plt.Figure, ax: plt.Axes, title: str, lines: list[tuple[str, np.ndarray, dict]]) -> None:
    """Lines (label, alpha, arrays) of one panel: named in a legend when few, else a colour bar."""
    colors = sequential_colors(len(lines))
    handles = []
    for (label, alpha, g, i), color in zip(lines, colors):
        handles += ax.plot(alpha, g["train_loss"][i], color=color, lw=1.2, label=label)
        if "test_loss" in g:
            ax.plot(alpha, g["test_loss"][i], color=color, lw=1.0, ls="--")
    ax.axvspan(0, 1, color="0.92", zorder=0)
    ax.set_xlabel(r"$\alpha$ in $(1-\alpha)\,\theta_0 + \alpha\,\theta_1$")
    ax.set_title(title)
    styles = [Line2D([], [], color="k", lw=1.2, label="train"), Line2D([], [], color="k", lw=1.0, ls="--", label="test")]
    if len(lines) <= MAX_LEGEND:
        ax.legend(handles=handles + styles, ncol=2)
    else:
        cmap = ListedColormap(colors)
        bar = fig.colorbar(ScalarMappable(BoundaryNorm(np.arange(len(lines) + 1) - 0.5, len(lines)), cmap), ax=ax)
        step = int(np.ceil(len(lines) / 8))
        bar.set_ticks(np.arange(0, len(lines), step))
        bar.set_ticklabels([lines[k][0] for k in range(0, len(lines), step)])
        bar.ax.minorticks_off()
        ax.legend(handles=styles)


def barrier_rows(path: Path, name: str, g: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for i, ident in enumerate(path_names(g)):
        row = {"job": str(path), "path": GROUPS[name].replace("→", "->"), "members": ident.split(" ", 1)[1]}
        for split in ("train", "test"):
            if f"{split}_loss" in g:
                row.update({f"{split}_loss0": g[f"{split}_loss0"][i], f"{split}_loss1": g[f"{split}_loss1"][i],
                            f"{split}_barrier": g[f"{split}_barrier"][i],
                            f"{split}_barrier_linear": g[f"{split}_barrier_linear"][i]})
        if "train_monotone" in g:
            row["train_monotone"] = bool(g["train_monotone"][i])
        rows.append(row)
    return rows


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="job results.h5 files holding /landscape/interpolation_*")
    parser.add_argument("--out", help="output directory (default FIRST_RESULTS_DIR/analysis/interpolation)")
    parser.add_argument("--ylim", type=float, nargs=2, default=None, help="loss axis limits")
    args = parser.parse_args(argv)
    paths = [results_path(p) for p in args.sources]
    data = {p: groups(p) for p in paths}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rows = []
    for ax, name in zip(axes, GROUPS):
        lines = []
        for path, gs in data.items():
            g = gs.get(name)
            if g is None:
                continue
            prefix = f"{path.parent.name}: " if len(data) > 1 else ""
            lines += [(prefix + ident, g["alpha"], g, i) for i, ident in enumerate(path_names(g))]
            rows += barrier_rows(path, name, g)
        if lines:
            draw_panel(fig, ax, GROUPS[name], lines)
        else:
            ax.set_title(f"{GROUPS[name]}: not computed")
            ax.set_axis_off()
    axes[0].set_ylabel("loss")
    losses = [g[k] for gs in data.values() for g in gs.values() for k in ("train_loss", "test_loss") if k in g]
    log_axis(axes[0], np.concatenate([v.ravel() for v in losses]), "y", ticks="round")
    if args.ylim:
        axes[0].set_ylim(*args.ylim)
    out = output_dir(paths[0], PROG, args.out)
    written = save_figure(fig, out, "interpolation")
    table = pd.DataFrame(rows)
    written += save_table(table, out, "interpolation_barriers")
    print(table.drop(columns="job").to_string(index=False, float_format="%.4g"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
