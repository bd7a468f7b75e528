"""Choromanska et al. (2015), figure and table: losses at the minima reached, per width.

    surfacekit -m experiment=choromanska
    python analyses/minima_histograms.py outputs/multirun/DATE/TIME [--out DIR]

Reads a sweep directory, a sweep.h5 or one results.h5. Writes into --out
(default SWEEP/analysis/minima_histograms): test- and train-loss histograms per width on a common
axis (each width binned by its own sample size, numpy's 'auto' rule; --log-x for a log loss axis),
the std of the test loss against width with bootstrap CIs (BCa), a table per width (mean, std, min,
max of the losses, test error, Pearson r(train, test) with a bootstrap CI beside the published r,
diverged count, and the Hessian index at the endpoints when the spectrum task has run), and the
bootstrap CIs of the std ratios std(5)/std(25) and std(10)/std(250).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from surfacekit import store
from surfacekit.plots import (AnalysisError, log_axis, loss_label, one_line_errors, output_dir, results_path, save_figure,
                              save_table, sequential_colors, step_histograms)
from surfacekit.stats import bootstrap_ci, pearson, std, std_ratio

# Choromanska et al. 2015, Table 1: Pearson r(train, test) over 1000 networks, MNIST 10x10.
PUBLISHED_PEARSON = {25: 0.7616, 50: 0.6861, 100: 0.5983, 250: 0.5302, 500: 0.4081}
STD_RATIOS = [(5, 25), (10, 250)]
PROG = "minima_histograms"


def width_table(members: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """One row per width: loss statistics, correlation with CI, published r, index summary."""
    rows = []
    for width, group in members.groupby("width"):
        ok = group[~group["diverged"].astype(bool)]
        r, r_lo, r_hi = (bootstrap_ci(pearson, ok.final_train_loss.to_numpy(), ok.final_test_loss.to_numpy(), n_boot=n_boot,
                                      paired=True) if len(ok) > 2 else (np.nan,) * 3)
        row = {
            "width": int(width), "networks": len(group), "diverged": int(group["diverged"].sum()),
            "test_mean": ok.final_test_loss.mean(), "test_std": ok.final_test_loss.std(),
            "test_min": ok.final_test_loss.min(), "test_max": ok.final_test_loss.max(),
            "train_mean": ok.final_train_loss.mean(), "train_std": ok.final_train_loss.std(),
            "train_min": ok.final_train_loss.min(), "train_max": ok.final_train_loss.max(),
            "test_error": ok.test_error.mean(), "pearson_r": r, "r_ci_low": r_lo, "r_ci_high": r_hi,
            "published_r": PUBLISHED_PEARSON.get(int(width), np.nan),
        }
        if "index_fraction" in ok:
            row["fraction_minima"] = float((ok.index_count == 0).mean())
            row["mean_index_fraction"] = ok.index_fraction.mean()
        rows.append(row)
    return pd.DataFrame(rows)


def std_ratio_table(members: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """Bootstrap CIs (90%) of std(test loss, width a) / std(test loss, width b)."""
    ok = members[~members["diverged"].astype(bool)]
    rows = []
    for a, b in STD_RATIOS:
        xa = ok.loc[ok.width == a, "final_test_loss"].to_numpy()
        xb = ok.loc[ok.width == b, "final_test_loss"].to_numpy()
        if len(xa) > 2 and len(xb) > 2:
            est, lo, hi = bootstrap_ci(std_ratio, xa, xb, n_boot=n_boot)
            rows.append({"ratio": f"std({a})/std({b})", "estimate": est, "ci90_low": lo, "ci90_high": hi})
    return pd.DataFrame(rows)


def histogram_figure(members: pd.DataFrame, column: str, label: str, log_x: bool) -> plt.Figure:
    """Density histograms per width on one axis, each binned by its own sample size."""
    ok = members[~members["diverged"].astype(bool)]
    widths = sorted(int(w) for w in ok.width.unique())
    fig, ax = plt.subplots(figsize=(6, 4))
    step_histograms(ax, {str(w): ok.loc[ok.width == w, column].to_numpy() for w in widths}, sequential_colors(len(widths)),
                    log_x=log_x)
    if log_x:
        log_axis(ax, ok[column].to_numpy(), "x", ticks="round")
    ax.set_xlabel(label)
    ax.set_ylabel("density per decade" if log_x else "density")
    ax.legend(title="hidden units")
    ax.set_title(f"{label.split(' (')[0]} at the endpoints, per width")
    return fig


def std_figure(members: pd.DataFrame, n_boot: int, label: str) -> plt.Figure:
    ok = members[~members["diverged"].astype(bool)]
    rows = [(w, *bootstrap_ci(std, g.final_test_loss.to_numpy(), n_boot=n_boot)) for w, g in ok.groupby("width") if len(g) > 2]
    if not rows:
        raise AnalysisError("no width has 3 or more non-diverged networks: no spread to show")
    w, est, lo, hi = (np.array(c) for c in zip(*rows))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(w, est, yerr=[est - np.where(np.isfinite(lo), lo, est), np.where(np.isfinite(hi), hi, est) - est],
                marker="o", capsize=3, color="k")
    log_axis(ax, w, "x")
    log_axis(ax, np.concatenate([est, lo, hi]), "y", ticks="round")
    ax.set_xlabel("hidden units")
    ax.set_ylabel(f"std of the {label}\n(90% bootstrap CI, BCa)")
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="sweep directory, sweep.h5 or results.h5")
    parser.add_argument("--out", type=Path, help="output directory (default SOURCE/analysis/minima_histograms)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--log-x", action="store_true", help="histograms on a log loss axis")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    members = store.load_members(path)
    missing = {"width", "final_train_loss", "final_test_loss", "test_error", "diverged"} - set(members.columns)
    if missing:
        raise AnalysisError(f"{path}: members lack {sorted(missing)}; this analysis needs a training width sweep")
    out = output_dir(args.source, PROG, args.out)
    table = width_table(members, args.bootstrap)
    ratios = std_ratio_table(members, args.bootstrap)
    save_table(table, out, "minima_by_width")
    if len(ratios):
        save_table(ratios, out, "std_ratios")
    test_label, train_label = loss_label(path, "test loss"), loss_label(path, "train loss")
    save_figure(histogram_figure(members, "final_test_loss", test_label, args.log_x), out, "test_loss_histograms")
    save_figure(histogram_figure(members, "final_train_loss", train_label, args.log_x), out, "train_loss_histograms")
    save_figure(std_figure(members, args.bootstrap, "test loss"), out, "test_loss_std_vs_width")
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format="%.4g"))
    if len(ratios):
        print(ratios.to_string(index=False, float_format="%.3g"))
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
