"""Flatness measures against the generalization gap: Kendall's tau and Jiang et al.'s granulated
Kendall coefficient over the swept hyperparameters.

    surfacekit -m experiment=flatness
    surfacekit task=sharpness source=outputs/multirun/DATE/TIME
    python analyses/flatness.py outputs/multirun/DATE/TIME [EASGD_SWEEP ...] [--out DIR]

Reads the members table with the ``task=sharpness`` columns of every source. The networks of one
source are compared with each other: plain members of uncoupled jobs, and of coupled jobs
(``trainer.coupling``) only the centre (the method's output; with beta = 0 the workers, which are
independent runs). Their hyperparameters are the
learning rate (optimizer.lr x lr_scale), the batch size, the coupling and tau, the seed; the
axes of a source are those that vary in it (seed excepted). The generalization gap is the test
error minus the training error (and the same for the loss, in the table).

For each measure (lambda_max, trace, Keskar's sharpness, adaptive sharpness lambda_max(T H T),
the PAC-Bayes flatness 1 / sigma^2) and axis: the granulated coefficient psi (Jiang et al. 2020,
eq. 4: the mean over groups of networks that differ only in that axis of Kendall's tau between the
measure and the gap within the group; the seed counts as a setting, so groups never mix seeds),
with a permutation p-value (the measure shuffled within every group, 2000 times), and the overall
Kendall tau over all networks of the source with scipy's p-value; Psi is the mean of psi over the
axes. The verdict says "correlates" only for psi with p < 0.05 and states the sign; otherwise
"no evidence". Written into --out (default FIRST_SOURCE/analysis/flatness): ``measures_vs_gap``
(each measure against the gap, colour = learning rate, marker = batch size), the table
``kendall`` and ``networks`` (every network's measures, settings and gaps).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from surfacekit import store
from surfacekit.plots import AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table

PROG = "flatness"
MEASURES = {"sharpness_lambda_max": r"$\lambda_{\max}$", "sharpness_trace": "trace", "keskar_sharpness": "Keskar (%)",
            "adaptive_sharpness": r"adaptive $\lambda_{\max}(THT)$", "pac_bayes_flatness": r"PAC-Bayes $1/\sigma^2$"}
AXES = ("lr", "batch_size", "coupling", "tau")
PERMUTATIONS = 2000


def networks(path: Path, source: str) -> pd.DataFrame:
    """One row per analysed network of ``path``: its measures, gaps and hyperparameters."""
    members = store.load_members(path)
    missing = [m for m in MEASURES if m not in members]
    if missing:
        raise AnalysisError(f"{path}: no task=sharpness columns ({missing[0]} missing); run surfacekit task=sharpness "
                            f"source={path} first")
    rows = []
    for job in store.list_jobs(path):
        config = store.load_config(path, job or None)
        trainer, optimizer = config.get("trainer", {}), config.get("optimizer", {})
        coupling = trainer.get("coupling", "none")
        # beta = 0 (not averaging): independent runs, whose centre never moved from the start
        independent = coupling == "none" or (coupling != "averaging" and float(trainer.get("beta", 0.9)) == 0)
        frame = members[members["job"] == job].copy()
        centre = frame.get("is_centre", pd.Series(False, index=frame.index)).astype(bool)
        frame = frame[~centre] if independent else frame[centre]
        frame["source"] = source
        frame["lr"] = float(optimizer.get("lr", np.nan)) * frame.get("lr_scale", pd.Series(1.0, index=frame.index)).fillna(1.0)
        frame["batch_size"] = trainer.get("batch_size") or 0  # 0: full batch
        frame["coupling"] = f"{coupling} (beta 0)" if independent and coupling != "none" else coupling
        frame["tau"] = 0 if independent else int(trainer.get("tau", 1))
        frame["run_seed"] = int(config.get("seed", 0))
        frame["init_seed"] = frame["seed"] if "seed" in frame else 0
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    table = table[~table["diverged"].astype(bool) & table[list(MEASURES)].notna().all(axis=1)]
    table["error_gap"] = table["test_error"] - table["train_error"]
    table["loss_gap"] = table["final_test_loss"] - table["final_train_loss"]
    return table.reset_index(drop=True)


def varying_axes(table: pd.DataFrame) -> list[str]:
    return [a for a in AXES if table[a].nunique() > 1]


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of every row of ``x`` [..., n] with ``y`` [n] (NaN where either is constant).

    The same statistic as ``scipy.stats.kendalltau`` (tested against it), vectorized over rows
    because the permutation test needs it for thousands of shuffles of small groups at once.
    """
    i, j = np.triu_indices(len(y), k=1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[i] - y[j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(axis=-1) / np.sqrt(np.count_nonzero(sx, axis=-1) * np.count_nonzero(sy))


def granulated(table: pd.DataFrame, measure: str, axis: str, gap: str, rng: np.random.Generator) -> dict:
    """psi (the mean within-group Kendall tau), the number of groups and the permutation p-value."""
    # networks of one group share every other setting and the seed; along lr (members of one job) their
    # initializations differ, along the other axes member k of every job starts from the same one
    others = [a for a in AXES if a != axis] + ["run_seed"] + ([] if axis == "lr" else ["init_seed"])
    groups = [g for _, g in table.groupby(others, dropna=False) if g[axis].nunique() > 1 and len(g) > 1]
    if not groups:
        return {"psi": np.nan, "groups": 0, "p": np.nan}
    observed, null = [], []
    for g in groups:
        x, y = g[measure].to_numpy(float), g[gap].to_numpy(float)
        shuffled = np.stack([rng.permutation(x) for _ in range(PERMUTATIONS)])
        observed.append(kendall_tau_b(x, y))
        null.append(kendall_tau_b(shuffled, y))
    psi = float(np.nanmean(observed)) if np.isfinite(observed).any() else np.nan
    with warnings.catch_warnings():  # a measure constant in every group: no tau at all (NaN, stated)
        warnings.simplefilter("ignore", RuntimeWarning)
        null_psi = np.nanmean(np.stack(null), axis=0)
    p = (1 + np.sum(np.abs(null_psi) >= abs(psi) - 1e-12)) / (1 + PERMUTATIONS) if np.isfinite(psi) else np.nan
    return {"psi": psi, "groups": len(groups), "p": float(p)}


def kendall_table(table: pd.DataFrame, gap: str = "error_gap") -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for source, part in table.groupby("source", sort=False):
        axes = varying_axes(part)
        for measure in MEASURES:
            overall = stats.kendalltau(part[measure], part[gap])
            per_axis = {axis: granulated(part, measure, axis, gap, rng) for axis in axes}
            psis = [r["psi"] for r in per_axis.values() if np.isfinite(r["psi"])]
            for axis, r in per_axis.items():
                verdict = ("no evidence" if not np.isfinite(r["p"]) or r["p"] >= 0.05
                           else f"correlates {'positively' if r['psi'] > 0 else 'negatively'}")
                rows.append({"source": source, "measure": measure, "axis": axis, "psi": r["psi"], "groups": r["groups"],
                             "p_permutation": r["p"], "verdict": verdict, "Psi": np.mean(psis) if psis else np.nan,
                             "tau_overall": overall.statistic, "p_overall": overall.pvalue, "networks": len(part),
                             "gap": gap})
    return pd.DataFrame(rows)


def scatter_figure(table: pd.DataFrame) -> plt.Figure:
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(3.3 * len(MEASURES), 3.3), squeeze=False)
    lrs = np.sort(table["lr"].unique())
    markers = dict(zip(sorted(table["batch_size"].unique()), "os^Dv<>p*h"))
    norm = plt.matplotlib.colors.LogNorm(vmin=lrs.min(), vmax=max(lrs.max(), lrs.min() * 1.01))
    for ax, (measure, label) in zip(axes[0], MEASURES.items()):
        for bs, part in table.groupby("batch_size"):
            centre = part["coupling"] != "none"
            ax.scatter(part[measure], part["error_gap"], c=part["lr"], cmap="viridis", norm=norm, s=14,
                       marker=markers[bs], edgecolors=np.where(centre, "k", "none"), linewidths=0.6,
                       label=f"batch {bs or 'full'}")
        values = table[measure].to_numpy()
        if (values > 0).all():
            log_axis(ax, values, "x", ticks="round")
        ax.set_xlabel(label)
        ax.set_ylabel("test error - train error")
    axes[0][0].legend(fontsize=7, title="black edge: EASGD-type centre", title_fontsize=6)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[0][-1], label="learning rate")
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, nargs="+", help="sweep directories, sweep.h5 or results.h5 (after task=sharpness)")
    parser.add_argument("--out", type=Path, help="output directory (default FIRST_SOURCE/analysis/flatness)")
    args = parser.parse_args(argv)
    table = pd.concat([networks(results_path(s), str(s)) for s in args.sources], ignore_index=True)
    if len(table) < 3:
        raise AnalysisError(f"{args.sources[0]}: {len(table)} analysed networks; correlations need at least 3")
    for source, part in table.groupby("source", sort=False):
        if not varying_axes(part):
            raise AnalysisError(f"{source}: none of the hyperparameters {list(AXES)} varies among its {len(part)} "
                                "networks, so there is no axis to correlate along (sweep one: experiment=flatness)")
    out = output_dir(args.sources[0], PROG, args.out)
    kendall = pd.concat([kendall_table(table, "error_gap"), kendall_table(table, "loss_gap")], ignore_index=True)
    columns = ["source", "job", "member", "coupling", "tau", "batch_size", "lr", "train_error", "test_error", "error_gap",
               "loss_gap", *MEASURES, "pac_bayes_sigma"]
    save_table(table[[c for c in columns if c in table]], out, "networks")
    save_table(kendall, out, "kendall")
    save_figure(scatter_figure(table), out, "measures_vs_gap")
    shown = kendall[kendall["gap"] == "error_gap"].drop(columns=["gap"])
    print(shown.to_string(index=False, float_format="%.3g"))
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
