"""Loss along linear interpolation paths (Goodfellow, Vinyals & Saxe 2015) and a barrier table.

Reads the ``/landscape/interpolation_init`` and ``/landscape/interpolation_pairs`` groups that
``surfacekit task=landscape`` adds to a job's results file, and writes

* ``interpolation.png/.pdf``: train (solid) and test (dashed) loss against alpha, init -> solution
  (one line per member) and solution -> solution (one line per pair); [0, 1] is shaded;
* ``interpolation_barriers.csv/.md``: per path the endpoint losses, the barrier
  max_{a in [0,1]} L(a) - max(L(0), L(1)), the barrier above the chord, and monotonicity.

    python analyses/interpolation.py outputs/runs/.../results.h5 [more results.h5 ...] --out figures/interp
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from surfacekit.plots import save_figure, save_table
from surfacekit.store import ResultsError, load_group


def groups(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for name in ("interpolation_init", "interpolation_pairs"):
        try:
            out[name] = load_group(path, f"landscape/{name}")
        except ResultsError:
            pass
    if not out:
        raise ResultsError(f"{path}: no /landscape/interpolation_* groups; run surfacekit task=landscape source={path} first")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="job results.h5 files holding /landscape/interpolation_*")
    parser.add_argument("--out", default="figures/interpolation", help="output directory")
    parser.add_argument("--ylim", type=float, nargs=2, default=None, help="loss axis limits")
    args = parser.parse_args(argv)
    try:
        data = {Path(p): groups(Path(p)) for p in args.sources}
    except ResultsError as exc:
        print(f"interpolation.py: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    rows = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for job, (path, gs) in enumerate(data.items()):
        label = path.parent.name
        for ax, name in zip(axes, ("interpolation_init", "interpolation_pairs")):
            g = gs.get(name)
            if g is None:
                continue
            ids = [f"m{m}" for m in g["member"]] if "member" in g else [f"m{a}-m{b}" for a, b in zip(g["pair_a"], g["pair_b"])]
            for i, ident in enumerate(ids):
                c = colors[(i + 3 * job) % len(colors)]
                ax.plot(g["alpha"], g["train_loss"][i], color=c, lw=1.2, label=f"{label} {ident}" if len(data) > 1 else ident)
                if "test_loss" in g:
                    ax.plot(g["alpha"], g["test_loss"][i], color=c, lw=1.0, ls="--")
                row = {"job": str(path), "path": "init->solution" if name.endswith("init") else "solution->solution",
                       "members": ident}
                for split in ("train", "test"):
                    if f"{split}_loss" in g:
                        row.update({f"{split}_loss0": g[f"{split}_loss0"][i], f"{split}_loss1": g[f"{split}_loss1"][i],
                                    f"{split}_barrier": g[f"{split}_barrier"][i],
                                    f"{split}_barrier_linear": g[f"{split}_barrier_linear"][i]})
                if name.endswith("init") and "train_monotone" in g:
                    row["train_monotone"] = bool(g["train_monotone"][i])
                rows.append(row)
    for ax, title in zip(axes, ("initialization -> solution", "solution -> solution")):
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.set_xlabel(r"$\alpha$ in $(1-\alpha)\,\theta_0 + \alpha\,\theta_1$")
        ax.set_title(title + " (train solid, test dashed)", fontsize=10)
        ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("loss")
    if args.ylim:
        axes[0].set_ylim(*args.ylim)
    fig.tight_layout()
    written = save_figure(fig, out, "interpolation")
    table = pd.DataFrame(rows)
    written += save_table(table, out, "interpolation_barriers")
    print(table.drop(columns="job").to_string(index=False, float_format="%.4g"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
