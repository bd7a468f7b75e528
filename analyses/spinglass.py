"""Choromanska et al. (2015), spin-glass side: histograms of H/N at gradient-descent endpoints per N.

    surfacekit task=spinglass -m spinglass.N=25,50,100,150 spinglass.p=3 threads=1
    python analyses/spinglass.py outputs/multirun/DATE/TIME [--networks NETWORK_SWEEP] [--out DIR]

Reads a sweep directory, a sweep.h5 or one results.h5 of ``task=spinglass``.
Writes into --out (default SOURCE/analysis/spinglass):

* ``energy_histograms``: H/N per N on common bins, with vertical lines at -E_0 and -E_inf;
* ``mean_vs_N``: the mean of H/N (with standard errors) against N and the least-squares fit
  mean = -E_inf + c N^(-2/3) (E_inf from theory, c the only free parameter);
* ``spinglass_by_N`` table: starts, disorder samples, mean, sem, std, min, max, fraction in
  [-1.75, -1.25], median gradient norm, converged and index-0 fractions, distinct minima, the std
  of the per-disorder-sample means (when a sweep over ``seed`` gives several), fit and residual;
* ``fit`` table: c, its standard error, chi^2, and a free-intercept fit for comparison;
* with ``--networks`` (a width sweep with ``width`` and ``final_test_loss`` members, e.g.
  ``experiment=choromanska``): ``side_by_side``, the spin-glass histograms beside the network
  test-loss histograms per width, as the paper sets them. Network losses are min-max normalized
  with ONE map over all widths, (L - min) / (max - min) over every non-diverged network, so
  the relative spreads of the widths survive (a per-width z-score would erase them).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from surfacekit import store
from surfacekit.plots import (AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table,
                              sequential_colors, step_histograms)
from surfacekit.spinglass import thresholds

BAND = (-1.75, -1.25)
PROG = "spinglass"


def load_spinglass(source: Path, p: int | None) -> tuple[pd.DataFrame, int]:
    """Members of the spin-glass jobs in ``source`` for one p (the only one, or ``p``)."""
    path = results_path(source)
    members = store.load_members(path)
    if members.empty or not {"energy_per_n", "N", "p"} <= set(members.columns):
        raise AnalysisError(f"{path}: no spin-glass members (energy_per_n, N, p); run surfacekit task=spinglass")
    ps = sorted(int(v) for v in members["p"].unique())
    if p is None:
        if len(ps) > 1:
            raise AnalysisError(f"{path}: several p values {ps}; choose one with --p")
        p = ps[0]
    if p not in ps:
        raise AnalysisError(f"{path}: no jobs with p={p}; p values here are {ps}")
    members = members[members["p"] == p].copy()
    return members, p


def finite_size_mean(n: np.ndarray, c: float, e_inf: float) -> np.ndarray:
    """The finite-size law for the mean energy per spin: -E_inf + c N^(-2/3)."""
    return -e_inf + c * np.asarray(n, dtype=float) ** (-2.0 / 3.0)


def finite_size_free(n: np.ndarray, intercept: float, c: float) -> np.ndarray:
    """The same law with a free intercept: intercept + c N^(-2/3)."""
    return intercept + c * np.asarray(n, dtype=float) ** (-2.0 / 3.0)


def _jacobian(n: np.ndarray, *params: float, free: bool = False) -> np.ndarray:
    """d law / d params [len(n), 1 or 2]: exact, so the linear fits are exact (no finite differences)."""
    x = np.asarray(n, dtype=float)[:, None] ** (-2.0 / 3.0)
    return np.hstack([np.ones_like(x), x]) if free else x


def fit_finite_size(n: np.ndarray, mean: np.ndarray, sem: np.ndarray, e_inf: float) -> dict[str, float]:
    """Fit mean(N) = -E_inf + c N^(-2/3) (E_inf from theory, c free) with ``scipy.optimize.curve_fit``.

    ``c``: ordinary least squares (as the paper's fit), ``c_se`` from the residual scatter (NaN with
    one N). ``c_weighted``: weighted by 1/sem^2, ``c_weighted_se`` the error the sems imply
    (absolute sigma) and ``chi2`` its chi-square on ``dof`` degrees of freedom (NaN unless every sem
    is positive). ``free_intercept`` (with its standard error) and ``free_c``: least squares with a
    free intercept, to compare with -E_inf (needs two or more N).
    """
    n, mean, sem = (np.asarray(v, dtype=float) for v in (n, mean, sem))
    law = partial(finite_size_mean, e_inf=e_inf)
    with warnings.catch_warnings():  # curve_fit warns when a covariance cannot be estimated; it is NaN then
        warnings.simplefilter("ignore", OptimizeWarning)
        (c,), cov = curve_fit(law, n, mean, p0=(1.0,), jac=_jacobian)
        residual = mean - law(n, c)
        out = {"c": float(c), "c_se": float(np.sqrt(cov[0, 0])) if len(n) > 1 else np.nan,
               "c_weighted": np.nan, "c_weighted_se": np.nan, "chi2": np.nan, "dof": len(n) - 1,
               "max_abs_residual": float(np.abs(residual).max()),
               "free_intercept": np.nan, "free_intercept_se": np.nan, "free_c": np.nan, "-E_inf": -e_inf}
        if np.all(np.isfinite(sem)) and np.all(sem > 0):
            (cw,), cov_w = curve_fit(law, n, mean, p0=(float(c),), sigma=sem, absolute_sigma=True, jac=_jacobian)
            out.update(c_weighted=float(cw), c_weighted_se=float(np.sqrt(cov_w[0, 0])),
                       chi2=float(np.sum(((mean - law(n, cw)) / sem) ** 2)))
        if len(n) > 1:
            (b, c_free), cov_free = curve_fit(finite_size_free, n, mean, p0=(-e_inf, float(c)),
                                              jac=partial(_jacobian, free=True))
            out.update(free_intercept=float(b), free_intercept_se=float(np.sqrt(cov_free[0, 0])), free_c=float(c_free))
    return out


def by_n_table(members: pd.DataFrame, e_inf: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per N (statistics and fit residual) and a one-row fit summary (:func:`fit_finite_size`)."""
    rows = []
    for n, g in members.groupby("N"):
        e = g["energy_per_n"].to_numpy()
        row = {
            "N": int(n), "starts": len(g),
            "samples": g["disorder_seed"].nunique() if "disorder_seed" in g else 1,
            "mean": e.mean(), "sem": e.std(ddof=1) / np.sqrt(e.size) if e.size > 1 else np.nan,
            "std": e.std(ddof=1) if e.size > 1 else np.nan, "min": e.min(), "max": e.max(),
            "in_band": float(np.mean((e >= BAND[0]) & (e <= BAND[1]))),
            "median_grad_norm": float(np.median(g["grad_norm"])),
            "converged": float(g["converged"].astype(bool).mean()),
            "index0": float((g["index"] == 0).mean()) if "index" in g and g["index"].notna().all() else np.nan,
            "distinct_minima": int(np.unique(np.round(e, 6)).size),
            "median_steps": float(np.median(g["steps"])),
        }
        seeds = g["disorder_seed"] if "disorder_seed" in g else pd.Series(0, index=g.index)
        sample_means = g.groupby(seeds)["energy_per_n"].mean()
        row["std_sample_means"] = sample_means.std(ddof=1) if len(sample_means) > 1 else np.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    fit = fit_finite_size(table["N"], table["mean"], table["sem"], e_inf)
    table["fit"] = finite_size_mean(table["N"], fit["c"], e_inf)
    table["residual"] = table["mean"] - table["fit"]
    return table, pd.DataFrame([fit])


def _energy_axes(ax, members: pd.DataFrame, e_0: float, e_inf: float) -> None:
    """H/N histograms per N (each binned by its own number of starts) with the theory thresholds."""
    sizes = sorted(int(n) for n in members["N"].unique())
    step_histograms(ax, {str(n): members.loc[members["N"] == n, "energy_per_n"].to_numpy() for n in sizes},
                    sequential_colors(len(sizes)))
    ax.axvline(-e_0, color="k", ls="-", lw=1, label=r"$-E_0$ (ground state, $N\to\infty$)")
    ax.axvline(-e_inf, color="k", ls="--", lw=1, label=r"$-E_\infty$ (threshold)")
    ax.axvspan(*BAND, color="0.92", zorder=0, label=f"band [{BAND[0]:g}, {BAND[1]:g}]")
    ax.legend(title="$N$ (spins)", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the data
    ax.set_xlabel("$H/N$ at the gradient-descent endpoints")
    ax.set_ylabel("density")


def histogram_figure(members: pd.DataFrame, p: int, e_0: float, e_inf: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _energy_axes(ax, members, e_0, e_inf)
    ax.set_title(f"spherical {p}-spin glass: endpoints per $N$")
    return fig


def mean_figure(table: pd.DataFrame, fit: pd.DataFrame, e_0: float, e_inf: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    ax.errorbar(table["N"], table["mean"], yerr=table["sem"], marker="o", ls="none", capsize=3, color="k",
                label=r"mean $H/N$ ($\pm$ s.e.m.)")
    grid = np.geomspace(table["N"].min() * 0.9, table["N"].max() * 1.1, 200)
    c = float(fit["c"].iloc[0])
    ax.plot(grid, finite_size_mean(grid, c, e_inf), color="tab:blue", label=rf"$-E_\infty + {c:.3f}\,N^{{-2/3}}$ (fit)")
    ax.axhline(-e_inf, color="k", ls="--", lw=1, label=rf"$-E_\infty = {-e_inf:.4f}$")
    ax.axhline(-e_0, color="k", lw=1, label=rf"$-E_0 = {-e_0:.4f}$")
    log_axis(ax, table["N"], "x")
    ax.set_xlabel("$N$ (spins)")
    ax.set_ylabel("mean $H/N$ at the endpoints")
    ax.legend()
    return fig


def load_networks(source: Path) -> pd.DataFrame:
    """Non-diverged members of a network width sweep with a ``normalized_test_loss`` column (one min-max map)."""
    path = results_path(source)
    nets = store.load_members(path)
    if nets.empty or not {"width", "final_test_loss"} <= set(nets.columns):
        raise AnalysisError(f"{path}: --networks needs members with width and final_test_loss (a training width sweep)")
    if "diverged" in nets:
        nets = nets[~nets["diverged"].astype(bool)]
    nets = nets[np.isfinite(nets["final_test_loss"])]
    if nets.empty:
        raise AnalysisError(f"{path}: no finite, non-diverged test losses")
    loss = nets["final_test_loss"]
    span = loss.max() - loss.min()
    return nets.assign(normalized_test_loss=(loss - loss.min()) / (span if span > 0 else 1.0))


def side_by_side_figure(members: pd.DataFrame, nets: pd.DataFrame, p: int, e_0: float, e_inf: float) -> plt.Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.2))
    _energy_axes(left, members, e_0, e_inf)
    left.set_title(f"spin glass ($p = {p}$)")
    widths = sorted(int(w) for w in nets["width"].unique())
    step_histograms(right, {str(w): nets.loc[nets["width"] == w, "normalized_test_loss"].to_numpy() for w in widths},
                    sequential_colors(len(widths)))
    right.legend(title="hidden units", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    right.set_xlabel("test loss, min-max normalized over all widths")
    right.set_ylabel("density")
    right.set_title("networks")
    return fig


def network_table(nets: pd.DataFrame) -> pd.DataFrame:
    return (nets.groupby("width")["normalized_test_loss"].agg(["count", "mean", "std", "min", "max"])
            .reset_index().rename(columns={"count": "networks"}))


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="task=spinglass sweep directory, sweep.h5 or results.h5")
    parser.add_argument("--networks", type=Path, help="network width sweep (directory, sweep.h5 or results.h5)")
    parser.add_argument("--p", type=int, help="interaction order to analyse when the source holds several")
    parser.add_argument("--out", type=Path, help="output directory (default SOURCE/analysis/spinglass)")
    args = parser.parse_args(argv)
    members, p = load_spinglass(args.source, args.p)
    nets = load_networks(args.networks) if args.networks else None
    out = output_dir(args.source, PROG, args.out)
    e_0, e_inf = thresholds(p)
    table, fit = by_n_table(members, e_inf)
    save_table(table, out, "spinglass_by_N")
    save_table(fit, out, "fit")
    save_figure(histogram_figure(members, p, e_0, e_inf), out, "energy_histograms")
    save_figure(mean_figure(table, fit, e_0, e_inf), out, "mean_vs_N")
    pd.set_option("display.width", 200)
    print(f"p = {p}: -E_0 = {-e_0:.6f}, -E_inf = {-e_inf:.6f}")
    print(table.to_string(index=False, float_format="%.4g"))
    print(fit.to_string(index=False, float_format="%.4g"))
    if nets is not None:
        save_figure(side_by_side_figure(members, nets, p, e_0, e_inf), out, "side_by_side")
        ntable = network_table(nets)
        save_table(ntable, out, "networks_normalized")
        print(ntable.to_string(index=False, float_format="%.4g"))
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
