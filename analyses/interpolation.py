"""Loss along linear interpolation paths (Goodfellow, Vinyals & Saxe 2015) and a barrier table.

Reads the ``/landscape/interpolation_init`` and ``/landscape/interpolation_pairs`` groups that
``surfacekit task=landscape`` writes to ``SOURCE/analyses/landscape-HASH/landscape.h5``, for every
job of every source (a results file, run directory, sweep directory or merged ``sweep.h5``); each
group comes from the newest landscape analysis of the job that holds it, so a later analysis that
computed only slices does not hide it. Writes into --out (default
FIRST_RESULTS_DIR/analysis/interpolation):

* ``interpolation.png/.pdf``: train (solid) and test (dashed) data loss against alpha, init ->
  solution (one line per member) and solution -> solution (one line per pair); [0, 1] is shaded.
  Up to 8 lines are named in a legend; more are coloured along a colormap with a colour bar;
* ``interpolation_barriers.csv/.md``: per path the endpoint losses, the barrier
  max_{a in [0,1]} L(a) - max(L(0), L(1)), the barrier above the chord, and monotonicity.
  Columns ``train_*`` and ``test_*`` are the **data loss** of the split (no weight decay);
  ``train_objective_barrier`` (present when the job trained with an L2 term) is the barrier of the
  **trained objective**, the training data loss plus the L2 term the method applied, which is
  what training minimized.

    python analyses/interpolation.py outputs/runs/.../results.h5 [more sources ...] [--out DIR]
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
from surfacekit.store import ResultsError, list_jobs, load_group

PROG = "interpolation"
GROUPS = {"interpolation_init": "initialization → solution", "interpolation_pairs": "solution → solution"}
MAX_LEGEND = 8
COLUMNS_NOTE = ("train_*, test_*: data loss of the split (no weight decay); train_objective_barrier: the trained "
                "objective (training data loss + the L2 term the method applied)")


def groups(path: Path, job: str) -> dict[str, dict[str, np.ndarray]]:
    """The interpolation groups of one job (each from the newest analysis that holds it); {} if none."""
    out = {}
    for name in GROUPS:
        try:
            out[name] = load_group(path, f"landscape/{name}", job)
        except ResultsError:  # the job is named, so this is a missing group
            pass
    return out


def all_groups(paths: list[Path]) -> dict[tuple[Path, str], dict[str, dict[str, np.ndarray]]]:
    """(source, job) -> its interpolation groups, for every job of every source that has them.

    Raises:
        AnalysisError: no job has an interpolation group (the message names the sources and jobs).
    """
    data, missing = {}, []
    for path in paths:
        for job in list_jobs(path):
            found = groups(path, job)
            if found:
                data[(path, job)] = found
            else:
                missing.append(f"{path} job {job}")
    if not data:
        raise AnalysisError(f"no /landscape/interpolation_* group in {', '.join(missing)}; run surfacekit task=landscape "
                            f"landscape.kind=interpolation source={paths[0]} first")
    return data


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


def barrier_rows(path: Path, job: str, name: str, g: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for i, ident in enumerate(path_names(g)):
        row = {"source": str(path), "job": job, "path": GROUPS[name].replace("→", "->"), "members": ident.split(" ", 1)[1]}
        for split in ("train", "test"):
            if f"{split}_loss" in g:
                row.update({f"{split}_loss0": g[f"{split}_loss0"][i], f"{split}_loss1": g[f"{split}_loss1"][i],
                            f"{split}_barrier": g[f"{split}_barrier"][i],
                            f"{split}_barrier_linear": g[f"{split}_barrier_linear"][i]})
        if "train_objective_barrier" in g:
            row["train_objective_barrier"] = g["train_objective_barrier"][i]
        if "train_monotone" in g:
            row["train_monotone"] = bool(g["train_monotone"][i])
        rows.append(row)
    return rows


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="results files, run directories or sweeps analysed by task=landscape")
    parser.add_argument("--out", help="output directory (default FIRST_RESULTS_DIR/analysis/interpolation)")
    parser.add_argument("--ylim", type=float, nargs=2, default=None, help="loss axis limits")
    args = parser.parse_args(argv)
    paths = [results_path(p) for p in args.sources]
    data = all_groups(paths)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rows = []
    for ax, name in zip(axes, GROUPS):
        lines = []
        for (path, job), gs in data.items():
            g = gs.get(name)
            if g is None:
                continue
            prefix = f"{job}: " if len(data) > 1 else ""
            lines += [(prefix + ident, g["alpha"], g, i) for i, ident in enumerate(path_names(g))]
            rows += barrier_rows(path, job, name, g)
        if lines:
            draw_panel(fig, ax, GROUPS[name], lines)
        else:
            ax.set_title(f"{GROUPS[name]}: not computed")
            ax.set_axis_off()
    axes[0].set_ylabel("data loss")
    losses = [g[k] for gs in data.values() for g in gs.values() for k in ("train_loss", "test_loss") if k in g]
    log_axis(axes[0], np.concatenate([v.ravel() for v in losses]), "y", ticks="round")
    if args.ylim:
        axes[0].set_ylim(*args.ylim)
    out = output_dir(paths[0], PROG, args.out)
    written = save_figure(fig, out, "interpolation")
    table = pd.DataFrame(rows)
    written += save_table(table, out, "interpolation_barriers")
    print(COLUMNS_NOTE)
    print(table.drop(columns="source").to_string(index=False, float_format="%.4g"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
