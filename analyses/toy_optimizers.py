"""Optimizer paths on a toy surface (default: C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2)).

One panel per optimizer setting of ``surfacekit.toy.TOY_OPTIMIZERS`` (gradient descent with lr 0.25
and 0.35, momentum, Nesterov, Rprop, Adagrad, RMSprop, Adadelta, Adam, AdaMax, Newton) over the
surface's contours, with its minima (x) and saddles (+). Needs no results file.

    python analyses/toy_optimizers.py --out figures/toy --steps 150
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from surfacekit import toy
from surfacekit.plots import save_figure, save_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surface", default="two_minima", choices=sorted(toy.SURFACES), help="toy surface (default two_minima)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per path (default 150)")
    parser.add_argument("--start", type=float, nargs=2, default=None, metavar=("W1", "W2"), help="start point (default: the surface's)")
    parser.add_argument("--optimizers", nargs="*", default=None, help=f"subset of {list(toy.TOY_OPTIMIZERS)}")
    parser.add_argument("--out", default="figures/toy_optimizers", help="output directory")
    args = parser.parse_args(argv)

    s = toy.surface(args.surface)
    start = tuple(args.start) if args.start else s.start
    names = args.optimizers or list(toy.TOY_OPTIMIZERS)
    unknown = [n for n in names if n not in toy.TOY_OPTIMIZERS]
    if unknown:
        parser.error(f"unknown optimizer setting(s) {unknown}; choose from {list(toy.TOY_OPTIMIZERS)}")
    out = Path(args.out)
    xs, ys, z = toy.grid(s.loss_fn, s.window, 201)
    z = z.numpy()
    levels = np.quantile(z, np.linspace(0, 1, 30) ** 2)
    levels = np.unique(levels)
    best = min((float(s.loss_fn(torch.tensor(m, dtype=torch.float64))) for m in s.minima), default=-math.inf)

    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False, sharex=True, sharey=True)
    table = []
    for ax, name in zip(axes.flat, names):
        cfg = toy.TOY_OPTIMIZERS[name]
        path, losses = toy.optimize(s.loss_fn, start, cfg, steps=args.steps)
        p = path.numpy()
        ax.contour(xs, ys, z, levels=levels, cmap="viridis", linewidths=0.6)
        ax.plot(p[:, 0], p[:, 1], "-o", color="crimson", ms=1.8, lw=0.9)
        ax.plot(*start, "ks", ms=4)
        for m in s.minima:
            ax.plot(*m, "bx", ms=6)
        for q in s.saddles:
            ax.plot(*q, "k+", ms=8)
        settings = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
        ax.set_title(f"{name}\n{cfg['name']} {settings}", fontsize=8)
        ax.set_xlim(s.window[:2])
        ax.set_ylim(s.window[2:])
        l = losses.numpy()
        within = np.nonzero(np.isfinite(l) & (l - best < 1e-3))[0] if math.isfinite(best) else np.array([])
        table.append({"optimizer": name, "algorithm": cfg["name"], "settings": settings,
                      "final_w1": float(p[-1, 0]), "final_w2": float(p[-1, 1]), "final_loss": float(l[-1]),
                      "steps_to_1e-3": int(within[0]) if len(within) else -1,
                      "monotone": bool(np.all(np.diff(l) <= 1e-14))})
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{s.name}: {s.formula}; start {start}, {args.steps} steps", fontsize=10)
    fig.tight_layout()
    written = save_figure(fig, out, f"toy_{s.name}_paths")
    written += save_table(pd.DataFrame(table), out, f"toy_{s.name}_paths")
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
