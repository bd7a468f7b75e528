"""Choromanska et al. (2015), figure and table: losses at the minima reached, per width.

    surfacekit -m experiment=choromanska
    python analyses/minima_histograms.py outputs/multirun/DATE/TIME [--out DIR]

Reads a sweep directory (merging it if needed), a sweep.h5 or one results.h5. Writes into --out
(default SWEEP/analysis/minima_histograms): test- and train-loss histograms per width on a common
axis, the std of the test loss against width with bootstrap CIs, a table per width (mean, std, min,
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
import seaborn as sns

from surfacekit import store
from surfacekit.plots import save_figure, save_table
from surfacekit.stats import bootstrap_ci, pearson, std, std_ratio

# Choromanska et al. 2015, Table 1: Pearson r(train, test) over 1000 networks, MNIST 10x10.
PUBLISHED_PEARSON = {25: 0.7616, 50: 0.6861, 100: 0.5983, 250: 0.5302, 500: 0.4081}
STD_RATIOS = [(5, 25), (10, 250)]


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


def histogram_figure(members: pd.DataFrame, column: str, label: str) -> plt.Figure:
    ok = members[~members["diverged"].astype(bool)]
    widths = [str(w) for w in sorted(ok.width.unique())]
    ok = ok.assign(hidden_units=ok.width.astype(str))
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(ok[column].min(), ok[column].max(), 60)
    sns.histplot(ok, x=column, hue="hidden_units", hue_order=widths, bins=bins, element="step", stat="density",
                 common_norm=False, palette=sns.color_palette("viridis", len(widths)), ax=ax)
    ax.set_xlabel(label)
    ax.set_title(f"{label} at the endpoints, per width")
    return fig


def std_figure(members: pd.DataFrame, n_boot: int) -> plt.Figure:
    ok = members[~members["diverged"].astype(bool)]
    rows = [(w, *bootstrap_ci(std, g.final_test_loss.to_numpy(), n_boot=n_boot)) for w, g in ok.groupby("width") if len(g) > 2]
    w, est, lo, hi = (np.array(c) for c in zip(*rows))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(w, est, yerr=[est - lo, hi - est], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden units")
    ax.set_ylabel("std of test loss (90% bootstrap CI)")
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="sweep directory, sweep.h5 or results.h5")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = parser.parse_args(argv)
    try:
        path = store.results_file(args.source)
        members = store.load_members(path)
    except store.ResultsError as exc:
        print(f"minima_histograms: {exc}", file=sys.stderr)
        return 2
    out = args.out or (path.parent / "analysis" / "minima_histograms")
    table = width_table(members, args.bootstrap)
    ratios = std_ratio_table(members, args.bootstrap)
    save_table(table, out, "minima_by_width")
    if len(ratios):
        save_table(ratios, out, "std_ratios")
    save_figure(histogram_figure(members, "final_test_loss", "test loss"), out, "test_loss_histograms")
    save_figure(histogram_figure(members, "final_train_loss", "train loss"), out, "train_loss_histograms")
    save_figure(std_figure(members, args.bootstrap), out, "test_loss_std_vs_width")
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format="%.4g"))
    if len(ratios):
        print(ratios.to_string(index=False, float_format="%.3g"))
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
