"""Optimizer paths on a toy surface (default: C(w1, w2) = (w1 w2 - 1.5)^2 + 0.04 (w1^2 + w2^2)).

One panel per optimizer setting of ``surfacekit.toy.TOY_OPTIMIZERS`` (gradient descent with lr 0.25
and 0.35, momentum, Nesterov, Rprop, Adagrad, RMSprop, Adadelta, Adam, AdaMax, Newton) over the
surface's contours, with its minima (stars) and saddles (crosses); a path that leaves the window is
clipped and its exit marked. Needs no results file; writes into --out (default
./analysis/toy_optimizers) the figure and a table (final point and loss, steps to within 1e-3 of
the minimum, blank if never, the step the path left the window, monotone or not).

    python analyses/toy_optimizers.py [--surface two_minima] [--steps 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from surfacekit import toy
from surfacekit.plots import one_line_errors, save_figure, save_table

PROG = "toy_optimizers"


def mathtext(formula: str) -> str:
    """A surface's plain formula with its variables and powers as mathtext: w1^2 -> $w_1^2$, )^2 -> )$^2$."""
    formula = re.sub(r"\b([wxy])(\d?)(\^\d)?(?![A-Za-z])",
                     lambda m: "$" + m.group(1) + (f"_{m.group(2)}" if m.group(2) else "") + (m.group(3) or "") + "$", formula)
    return re.sub(r"\)\^(\d)", r")$^\1$", formula)


def first_exit(path: np.ndarray, window: tuple[float, float, float, float]) -> int | None:
    """Index of the first point of ``path`` [T, 2] outside ``window`` (None if it stays inside)."""
    outside = ((path[:, 0] < window[0]) | (path[:, 0] > window[1]) | (path[:, 1] < window[2]) | (path[:, 1] > window[3]))
    hits = np.nonzero(outside)[0]
    return int(hits[0]) if len(hits) else None


def draw_panel(ax, s, xs, ys, z, levels, p: np.ndarray, start, title: str) -> None:
    """Contours, the path (clipped to the window, its exit marked) and the known critical points."""
    ax.contour(xs, ys, z, levels=levels, cmap="Greys_r", linewidths=0.6, alpha=0.8)
    ax.plot(p[:, 0], p[:, 1], "-o", color="crimson", ms=1.8, lw=0.9, clip_on=True)
    ax.plot(*start, "s", color="k", ms=5)
    for m in s.minima:
        ax.plot(*m, marker="*", ms=11, mfc="gold", mec="k", mew=0.8, ls="none")
    for q in s.saddles:
        ax.plot(*q, marker="P", ms=8, mfc="deepskyblue", mec="k", mew=0.8, ls="none")
    k = first_exit(p, s.window)
    if k is not None:
        inside = p[k - 1] if k > 0 else np.asarray(start, dtype=float)
        exit_point = np.clip(p[k], [s.window[0], s.window[2]], [s.window[1], s.window[3]])
        ax.annotate("", xy=exit_point, xytext=inside, arrowprops={"arrowstyle": "->", "color": "crimson", "lw": 1.2})
        end, outside = p[-1], int(sum(first_exit(p[i : i + 1], s.window) is not None for i in range(len(p))))
        ax.text(0.03, 0.03, f"outside the window at {outside} step(s), first {k};\nends at ({end[0]:.3g}, {end[1]:.3g})",
                transform=ax.transAxes,
                fontsize=7, color="crimson", va="bottom", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    ax.set_xlim(s.window[:2])
    ax.set_ylim(s.window[2:])
    ax.set_title(title, fontsize=8)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surface", default="two_minima", choices=sorted(toy.SURFACES), help="toy surface (default two_minima)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per path (default 150)")
    parser.add_argument("--start", type=float, nargs=2, default=None, metavar=("W1", "W2"), help="start point (default: the surface's)")
    parser.add_argument("--optimizers", nargs="*", default=None, help=f"subset of {list(toy.TOY_OPTIMIZERS)}")
    parser.add_argument("--out", default=None, help="output directory (default ./analysis/toy_optimizers: there is no source)")
    args = parser.parse_args(argv)

    s = toy.surface(args.surface)
    start = tuple(args.start) if args.start else s.start
    names = args.optimizers or list(toy.TOY_OPTIMIZERS)
    unknown = [n for n in names if n not in toy.TOY_OPTIMIZERS]
    if unknown:
        parser.error(f"unknown optimizer setting(s) {unknown}; choose from {list(toy.TOY_OPTIMIZERS)}")
    out = Path(args.out) if args.out else Path("analysis") / PROG
    xs, ys, z = toy.grid(s.loss_fn, s.window, 201)
    z = z.numpy()
    levels = np.unique(np.quantile(z, np.linspace(0, 1, 30) ** 2))
    best = min((float(s.loss_fn(torch.tensor(m, dtype=torch.float64))) for m in s.minima), default=-math.inf)

    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), squeeze=False, sharex=True, sharey=True)
    table = []
    for ax, name in zip(axes.flat, names):
        cfg = toy.TOY_OPTIMIZERS[name]
        path, losses = toy.optimize(s.loss_fn, start, cfg, steps=args.steps)
        p = path.numpy()
        settings = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
        draw_panel(ax, s, xs, ys, z, levels, p, start, f"{name}\n{cfg['name']} {settings}")
        l = losses.numpy()
        within = np.nonzero(np.isfinite(l) & (l - best < 1e-3))[0] if math.isfinite(best) else np.array([])
        table.append({"optimizer": name, "algorithm": cfg["name"], "settings": settings,
                      "final_w1": float(p[-1, 0]), "final_w2": float(p[-1, 1]), "final_loss": float(l[-1]),
                      "steps_to_1e-3": int(within[0]) if len(within) else None,  # None: never within 1e-3 (blank)
                      "left_window_at": first_exit(p, s.window),
                      "monotone": bool(np.all(np.diff(l[np.isfinite(l)]) <= 1e-14)) and bool(np.isfinite(l).all())})
    names_xy = ("$w_1$", "$w_2$") if "w1" in s.formula else ("$x$", "$y$")
    for ax in axes[-1]:
        ax.set_xlabel(names_xy[0])
    for ax in axes[:, 0]:
        ax.set_ylabel(names_xy[1])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [Line2D([], [], color="crimson", marker="o", ms=3, lw=0.9, label="path"),
               Line2D([], [], color="k", marker="s", ls="none", label="start")]
    if s.minima:
        handles.append(Line2D([], [], marker="*", ms=11, mfc="gold", mec="k", ls="none", label="minimum"))
    if s.saddles:
        handles.append(Line2D([], [], marker="P", ms=8, mfc="deepskyblue", mec="k", ls="none", label="saddle"))
    fig.legend(handles=handles, loc="lower right" if len(names) % cols else "upper center",
               bbox_to_anchor=None if len(names) % cols else (0.5, 0.0), ncol=1 if len(names) % cols else 4)
    fig.suptitle(f"{s.name}: {mathtext(s.formula)}; start {start}, {args.steps} steps", fontsize=10)
    written = save_figure(fig, out, f"toy_{s.name}_paths")
    frame = pd.DataFrame(table).astype({"steps_to_1e-3": "Int64", "left_window_at": "Int64"})
    written += save_table(frame, out, f"toy_{s.name}_paths")
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
