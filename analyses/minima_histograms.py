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

When ``task=certify`` has run on the sweep (``surfacekit task=certify source=SWEEP``), the same
properties are recomputed on the **certified minima** (``cert_class == "minimum"``; their losses
``cert_loss`` / ``cert_test_loss`` at the certified point, not at the endpoint): histograms of
certified minima beside the raw endpoints (``*_histograms_certified``), the counts of minima, saddles
and uncertified points per width with the reasons (``certified_counts``), the width table of the
certified minima (``minima_by_width_certified``: mean, std, worst (max) loss, r(train, test) with CI)
and their std ratios (``std_ratios_certified``). Whether mean and worst loss fall with width is
printed for both, as measured.
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


ENDPOINTS = {"train": "final_train_loss", "test": "final_test_loss", "error": "test_error"}
CERTIFIED = {"train": "cert_loss", "test": "cert_test_loss", "error": "cert_test_error"}


def certified_minima(members: pd.DataFrame) -> pd.DataFrame:
    """The rows whose certified point is a minimum, with the certified losses in the endpoint columns'
    roles (see :data:`CERTIFIED`); ``diverged`` False (a certified point is finite)."""
    minima = members[members["cert_class"] == "minimum"].copy()
    minima["diverged"] = False
    return minima


def width_table(members: pd.DataFrame, n_boot: int, cols: dict[str, str] = ENDPOINTS) -> pd.DataFrame:
    """One row per width: loss statistics (of the columns ``cols``: endpoints by default, or
    :data:`CERTIFIED`), correlation with CI, published r, index summary."""
    rows = []
    train_col, test_col = cols["train"], cols["test"]
    for width, group in members.groupby("width"):
        ok = group[~group["diverged"].astype(bool)]
        r, r_lo, r_hi = (bootstrap_ci(pearson, ok[train_col].to_numpy(), ok[test_col].to_numpy(), n_boot=n_boot,
                                      paired=True) if len(ok) > 2 else (np.nan,) * 3)
        row = {
            "width": int(width), "networks": len(group), "diverged": int(group["diverged"].sum()),
            "test_mean": ok[test_col].mean(), "test_std": ok[test_col].std(),
            "test_min": ok[test_col].min(), "test_max": ok[test_col].max(),
            "train_mean": ok[train_col].mean(), "train_std": ok[train_col].std(),
            "train_min": ok[train_col].min(), "train_max": ok[train_col].max(),
            "test_error": ok[cols["error"]].mean(), "pearson_r": r, "r_ci_low": r_lo, "r_ci_high": r_hi,
            "published_r": PUBLISHED_PEARSON.get(int(width), np.nan),
        }
        if "index_fraction" in ok and cols is ENDPOINTS:
            row["fraction_minima"] = float((ok.index_count == 0).mean())
            row["mean_index_fraction"] = ok.index_fraction.mean()
        rows.append(row)
    return pd.DataFrame(rows)


def std_ratio_table(members: pd.DataFrame, n_boot: int, test: str = "final_test_loss") -> pd.DataFrame:
    """Bootstrap CIs (90%) of std(test loss, width a) / std(test loss, width b)."""
    ok = members[~members["diverged"].astype(bool)]
    rows = []
    for a, b in STD_RATIOS:
        xa = ok.loc[ok.width == a, test].to_numpy()
        xb = ok.loc[ok.width == b, test].to_numpy()
        if len(xa) > 2 and len(xb) > 2:
            est, lo, hi = bootstrap_ci(std_ratio, xa, xb, n_boot=n_boot)
            rows.append({"ratio": f"std({a})/std({b})", "estimate": est, "ci90_low": lo, "ci90_high": hi})
    return pd.DataFrame(rows)


def _histograms(ax: plt.Axes, ok: pd.DataFrame, column: str, widths: list[int], log_x: bool) -> None:
    step_histograms(ax, {str(w): ok.loc[ok.width == w, column].to_numpy() for w in widths if (ok.width == w).any()},
                    sequential_colors(len(widths)), log_x=log_x)
    ax.set_ylabel("density per decade" if log_x else "density")
    ax.legend(title="hidden units")


def histogram_figure(members: pd.DataFrame, column: str, label: str, log_x: bool) -> plt.Figure:
    """Density histograms per width on one axis, each binned by its own sample size."""
    ok = members[~members["diverged"].astype(bool)]
    widths = sorted(int(w) for w in ok.width.unique())
    fig, ax = plt.subplots(figsize=(6, 4))
    _histograms(ax, ok, column, widths, log_x)
    if log_x:
        log_axis(ax, ok[column].to_numpy(), "x", ticks="round")
    ax.set_xlabel(label)
    ax.set_title(f"{label.split(' (')[0]} at the endpoints, per width")
    return fig


def certified_histogram_figure(members: pd.DataFrame, split: str, label: str, log_x: bool) -> plt.Figure:
    """Endpoints (left) beside the certified minima of the same networks (right), per width, one x axis."""
    ok = members[~members["diverged"].astype(bool)]
    minima = certified_minima(members)
    widths = sorted(int(w) for w in ok.width.unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, frame, column, title in ((axes[0], ok, ENDPOINTS[split], f"training endpoints ({len(ok)})"),
                                     (axes[1], minima, CERTIFIED[split], f"certified minima ({len(minima)})")):
        _histograms(ax, frame, column, widths, log_x)
        ax.set(xlabel=label, title=title)
    values = np.concatenate([ok[ENDPOINTS[split]].to_numpy(), minima[CERTIFIED[split]].to_numpy()])
    if log_x:
        log_axis(axes[0], values, "x", ticks="round")
    return fig


def certified_counts(members: pd.DataFrame) -> pd.DataFrame:
    """Per width: networks, certified minima, saddles (with their indices), not certified (by reason)."""
    rows = []
    for width, group in members.groupby("width"):
        analysed = group["cert_class"].notna() & (group["cert_class"].astype(str) != "") if "cert_class" in group \
            else pd.Series(False, index=group.index)  # NaN: the job has no certify analysis; "": member not analysed
        done = group[analysed]
        cls = done["cert_class"].value_counts()
        reasons = done.loc[done["cert_class"] == "not certified", "cert_reason"].value_counts()
        saddle_index = sorted(set(done.loc[done["cert_class"] == "saddle", "cert_index"].astype(int)))
        rows.append({"width": int(width), "networks": len(group), "analysed": len(done),
                     "minima": int(cls.get("minimum", 0)), "saddles": int(cls.get("saddle", 0)),
                     "saddle_indices": " ".join(map(str, saddle_index)),
                     "not_certified": int(cls.get("not certified", 0)),
                     "reasons": "; ".join(f"{r} {n}" for r, n in reasons.items()),
                     "certified_fraction": float(done["certified"].astype(bool).mean()) if len(done) else np.nan,
                     "median_distance": float(done["cert_distance"].median()) if len(done) else np.nan,
                     "median_seconds": float(done["cert_seconds"].median()) if len(done) else np.nan})
    return pd.DataFrame(rows)


def falls_with_width(table: pd.DataFrame) -> str:
    """'mean falls: yes/no, worst falls: yes/no' over the widths of a width table (test loss)."""
    mean, worst = table.sort_values("width").test_mean, table.sort_values("width").test_max
    return (f"mean test loss falls with width: {'yes' if mean.is_monotonic_decreasing else 'no'}; worst: "
            f"{'yes' if worst.is_monotonic_decreasing else 'no'}")


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


def certified_outputs(members: pd.DataFrame, args, out: Path, test_label: str, train_label: str) -> None:
    """Counts per width, and the width table, std ratios and histograms of the certified minima."""
    counts = certified_counts(members)
    save_table(counts, out, "certified_counts")
    print(counts.to_string(index=False, float_format="%.4g"))
    minima = certified_minima(members)
    if not len(minima):
        print("no certified minimum: the certified-minima tables and histograms are skipped", file=sys.stderr)
        return
    table = width_table(minima, args.bootstrap, CERTIFIED)
    save_table(table, out, "minima_by_width_certified")
    print("certified minima:\n" + table.to_string(index=False, float_format="%.4g"))
    print("certified minima: " + falls_with_width(table))
    ratios = std_ratio_table(minima, args.bootstrap, CERTIFIED["test"])
    if len(ratios):
        save_table(ratios, out, "std_ratios_certified")
        print(ratios.to_string(index=False, float_format="%.3g"))
    for split, label in (("test", test_label), ("train", train_label)):
        save_figure(certified_histogram_figure(members, split, label, args.log_x), out, f"{split}_loss_histograms_certified")


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
    print("endpoints: " + falls_with_width(table))
    if len(ratios):
        print(ratios.to_string(index=False, float_format="%.3g"))
    if "cert_class" in members:
        certified_outputs(members, args, out, test_label, train_label)
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
