"""Elastic averaging SGD on a population: the centre's loss and test error against steps and against
gradient evaluations for SGD, momentum SGD, periodic averaging, EASGD and EAMSGD over tau, the
worker-centre spread against tau, and the effect of momentum.

    surfacekit -m experiment=easgd                 # averaging, EASGD, EAMSGD x tau x seeds
    surfacekit -m experiment=easgd_baselines       # SGD and momentum SGD (beta = 0) x seeds
    python analyses/easgd.py EASGD_SWEEP BASELINE_SWEEP [--out DIR]

A coupled job (``trainer.coupling``, beta > 0, or averaging) contributes its centre (``/centre/curves``),
whose gradient evaluations are the active workers' minibatch gradients so far
(``/centre/gradient_evaluations``: p per step). A job with beta = 0 is a set of independent runs
(EASGD with beta = 0 is SGD, bit for bit; EAMSGD with beta = 0 is Nesterov momentum SGD): each worker
is a run of its own, with one gradient evaluation per step. Curves are averaged over runs (seeds)
at equal steps; bands span the runs. The spread is the worker-centre distance |x_i - c| averaged
over workers and the second half of training. Written into --out (default
FIRST_SOURCE/analysis/easgd): ``test_error_vs_steps``, ``test_error_vs_gradient_evaluations``,
``train_loss_vs_steps`` (one panel per tau, baselines in every panel), ``spread_vs_tau``, and the
tables ``summary`` (per method and tau: final and best test error, final losses, spread) and
``momentum_effect`` (EAMSGD against EASGD at each tau, momentum SGD against SGD: final training
loss ratio and test-error difference, whichever way they come out).
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
from surfacekit.plots import AnalysisError, log_axis, loss_label, one_line_errors, output_dir, results_path, save_figure, save_table

PROG = "easgd"
METHODS = ("SGD", "momentum SGD", "averaging", "EASGD", "EAMSGD")
PALETTE = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
BASELINES = ("SGD", "momentum SGD")


def method_of(config: dict) -> str:
    """The method of a job's resolved config: an uncoupled job (or beta = 0) is SGD or, with EAMSGD's
    or the optimizer's momentum (momentum, nesterov), momentum SGD; a coupled job is averaging, EASGD
    or EAMSGD with optimizer=sgd. Raises AnalysisError for any other optimizer."""
    trainer, optimizer = config.get("trainer", {}), config.get("optimizer", {}).get("name", "sgd")
    coupling, beta = trainer.get("coupling", "none"), float(trainer.get("beta", 0.0))
    if optimizer not in ("sgd", "momentum", "nesterov"):
        raise AnalysisError(f"optimizer={optimizer}: the EASGD comparison takes sgd, momentum and nesterov jobs only")
    if coupling == "none" or (beta == 0 and coupling != "averaging"):
        return "momentum SGD" if coupling == "eamsgd" or optimizer != "sgd" else "SGD"
    if optimizer != "sgd":
        raise AnalysisError(f"optimizer={optimizer} with trainer.coupling={coupling}: the coupled methods of the "
                            "comparison use optimizer=sgd (EAMSGD's momentum is trainer.delta)")
    if coupling == "averaging":
        return "averaging"
    return {"easgd": "EASGD", "eamsgd": "EAMSGD"}[coupling]


def runs(path: Path) -> pd.DataFrame:
    """One row per run: method, tau, seed, and its curves (arrays) at steps and gradient evaluations."""
    rows = []
    for job in store.list_jobs(path):
        config = store.load_config(path, job or None)
        trainer = config.get("trainer", {})
        method = method_of(config)
        curves = store.load_group(path, "curves", job or None)
        base = {"job": job, "source": str(path), "method": method, "seed": int(config.get("seed", 0)),
                "tau": int(trainer.get("tau", 1)) if method not in BASELINES else 0, "step": curves["step"]}
        if method in BASELINES:
            for k in range(curves["train_loss"].shape[0]):
                rows.append({**base, "run": f"{job}/{k}", "evaluations": curves["step"].astype(float),
                             **{n: curves[n][k] for n in ("train_loss", "test_loss", "test_error", "train_error")},
                             "spread": np.nan})
            continue
        try:
            centre = store.load_group(path, "centre/curves", job or None)
            info = store.load_group(path, "centre", job or None)
        except store.ResultsError:
            raise AnalysisError(f"{path}: job {job!r} is coupled but has no /centre group") from None
        distance = curves["centre_distance"]
        half = distance[:, distance.shape[1] // 2:]
        rows.append({**base, "run": job, "evaluations": info["gradient_evaluations"].astype(float),
                     **{n: centre[n][0] for n in ("train_loss", "test_loss", "test_error", "train_error")},
                     "spread": float(np.nanmean(half))})
    return pd.DataFrame(rows)


def mean_curve(part: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, mean, min and max of y over the runs of ``part`` (on the shortest common grid)."""
    n = min(len(v) for v in part[y])
    values = np.stack([np.asarray(v[:n], dtype=float) for v in part[y]])
    grid = np.asarray(part[x].iloc[0][:n], dtype=float)
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def curves_figure(table: pd.DataFrame, x: str, y: str, ylabel: str, log_y: bool = False) -> plt.Figure:
    taus = sorted(t for t in table["tau"].unique() if t > 0) or [0]
    fig, axes = plt.subplots(1, len(taus), figsize=(3.6 * len(taus), 3.3), squeeze=False, sharey=True)
    for ax, tau in zip(axes[0], taus):
        shown = table[(table["tau"] == tau) | table["method"].isin(BASELINES)]
        for method in METHODS:
            part = shown[shown["method"] == method]
            if part.empty:
                continue
            grid, mean, low, high = mean_curve(part, x, y)
            ax.plot(grid, mean, color=PALETTE[method], lw=1.2, label=f"{method} ({len(part)})")
            ax.fill_between(grid, low, high, color=PALETTE[method], alpha=0.15, lw=0)
        if log_y:
            values = np.concatenate([np.asarray(v, dtype=float) for v in shown[y]])
            log_axis(ax, values[np.isfinite(values) & (values > 0)], "y", ticks="round")
        ax.set_title(rf"$\tau$ = {tau}" if tau else "uncoupled")
        ax.set_xlabel("steps (per worker)" if x == "step" else "gradient evaluations (all workers)")
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7, title="method (runs)")
    return fig


def spread_figure(table: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    coupled = table[~table["method"].isin(BASELINES) & (table["method"] != "averaging")]
    for method, part in coupled.groupby("method"):
        ax.scatter(part["tau"], part["spread"], color=PALETTE[method], s=12, alpha=0.6)
        means = part.groupby("tau")["spread"].mean()
        ax.plot(means.index, means.values, color=PALETTE[method], marker="o", label=method)
    if not coupled.empty:
        log_axis(ax, coupled["tau"], "x")
        log_axis(ax, coupled["spread"], "y", ticks="round")
    ax.set_xlabel(r"communication period $\tau$")
    ax.set_ylabel(r"worker-centre distance $|x_i - c|$" + "\n(second half of training)")
    ax.legend(fontsize=7)
    return fig


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (method, tau), part in table.groupby(["method", "tau"], sort=False):
        final_error = np.array([np.asarray(v)[-1] for v in part["test_error"]])
        rows.append({"method": method, "tau": tau or None, "runs": len(part),
                     "final_test_error": final_error.mean(), "final_test_error_std": final_error.std(ddof=1) if len(part) > 1 else np.nan,
                     "best_test_error": np.mean([np.nanmin(v) for v in part["test_error"]]),
                     "final_train_loss": np.mean([np.asarray(v)[-1] for v in part["train_loss"]]),
                     "final_test_loss": np.mean([np.asarray(v)[-1] for v in part["test_loss"]]),
                     "spread": part["spread"].mean(), "steps": int(np.asarray(part["step"].iloc[0])[-1]),
                     "gradient_evaluations": float(np.asarray(part["evaluations"].iloc[0])[-1])})
    order = {m: i for i, m in enumerate(METHODS)}
    return pd.DataFrame(rows).sort_values(["method", "tau"], key=lambda c: c.map(order) if c.name == "method" else c)


def momentum_table(summary: pd.DataFrame) -> pd.DataFrame:
    """EAMSGD against EASGD at every tau, and momentum SGD against SGD: ratio of final training losses
    (below 1: momentum lower) and difference of final test errors (below 0: momentum better)."""
    rows = []
    pairs = [("momentum SGD", "SGD", None)] + [("EAMSGD", "EASGD", t) for t in sorted(summary["tau"].dropna().unique())]
    for with_momentum, without, tau in pairs:
        a = summary[(summary["method"] == with_momentum) & ((summary["tau"] == tau) if tau else summary["tau"].isna())]
        b = summary[(summary["method"] == without) & ((summary["tau"] == tau) if tau else summary["tau"].isna())]
        if a.empty or b.empty:
            continue
        ratio = float(a["final_train_loss"].iloc[0] / b["final_train_loss"].iloc[0])
        difference = float(a["final_test_error"].iloc[0] - b["final_test_error"].iloc[0])
        rows.append({"comparison": f"{with_momentum} vs {without}", "tau": tau, "train_loss_ratio": ratio,
                     "test_error_difference": difference,
                     "verdict": f"momentum {'lowers' if ratio < 1 else 'raises'} the final training loss {max(ratio, 1 / ratio):.3g}x "
                                f"and {'lowers' if difference < 0 else 'raises'} the test error by {abs(difference):.3g}"})
    return pd.DataFrame(rows)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs="+", help="sweep directories, sweep.h5 or results.h5 files")
    parser.add_argument("--out", type=Path, help="output directory (default FIRST_SOURCE/analysis/easgd)")
    args = parser.parse_args(argv)
    table = pd.concat([runs(results_path(s)) for s in args.sources], ignore_index=True)
    if table.empty:
        raise AnalysisError(f"{args.sources[0]}: no training runs")
    out = output_dir(args.sources[0], PROG, args.out)
    summary = summary_table(table)
    momentum = momentum_table(summary)
    save_table(summary, out, "summary")
    save_table(momentum, out, "momentum_effect")
    save_figure(curves_figure(table, "step", "test_error", "centre test error"), out, "test_error_vs_steps")
    save_figure(curves_figure(table, "evaluations", "test_error", "centre test error"), out,
                "test_error_vs_gradient_evaluations")
    save_figure(curves_figure(table, "step", "train_loss", loss_label(args.sources[0], "centre training loss"), log_y=True),
                out, "train_loss_vs_steps")
    save_figure(spread_figure(table), out, "spread_vs_tau")
    print(summary.to_string(index=False, float_format="%.4g"))
    print(momentum.to_string(index=False, float_format="%.4g") if len(momentum) else
          "momentum effect: no pair to compare (EAMSGD and EASGD at one tau, or momentum SGD and SGD baselines)")
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
