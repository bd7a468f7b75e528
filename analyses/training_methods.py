"""Compare training methods (backprop, tp, dtp, penalty) across results files or sweep directories.

Writes into --out (default FIRST_INPUT/analysis/training_methods, beside the first input):
endpoint test-loss histograms per method and width (each binned by its own sample size), learning
curves (median and interquartile band over networks), cosine-to-backprop curves per layer for
dtp/tp (one row per depth; a panel whose cosines all lie within float rounding of one value is kept
at least 0.05 wide and says so), Hessian index / top eigenvalues when a /spectrum group is present,
each as PNG and PDF, plus ``summary.md`` (a table of endpoint statistics per method, width and depth).
At depth 1 TP and DTP coincide (the only hidden layer's target is the gradient step itself; the
difference correction acts from the second hidden layer down); the figure and summary say so.

    python analyses/training_methods.py outputs/multirun/2024-01-01/12-00-00 other/results.h5 [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from surfacekit.plots import (AnalysisError, log_axis, loss_label, noise_floor, one_line_errors, output_dir, results_path,
                              save_figure, sequential_colors, step_histograms)
from surfacekit.store import ResultsError, list_jobs, load_config, load_curves, load_group, load_members

PROG = "training_methods"
METHODS = ("backprop", "dtp", "tp", "penalty")
PALETTE = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))
# Cosines within this of each other are float rounding (the top layers are exactly parallel up to ~1e-7 in float32).
COSINE_SPAN = 0.05
TP_DTP_NOTE = ("depth 1: TP and DTP coincide (the only hidden target is the gradient step; "
               "the difference correction acts from the second hidden layer down)")


def method_of(config: dict) -> str:
    trainer = config.get("trainer", {})
    method = trainer.get("method", "backprop")
    if method == "dtp" and not trainer.get("difference_correction", True):
        return "tp"
    return method


def collect(files: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per network (members table + method, depth) and one record per job (curves, spectrum)."""
    rows, jobs = [], []
    for path in files:
        members = load_members(path)
        missing = {"width", "final_test_loss", "final_train_loss", "test_error", "diverged"} - set(members.columns)
        if members.empty or missing:
            raise AnalysisError(f"{path}: no training members" + (f" (missing {sorted(missing)})" if not members.empty else ""))
        for job in list_jobs(path):
            config = load_config(path, job or None)
            method = method_of(config)
            frame = members[members["job"] == job].copy()
            frame["method"] = method
            frame["depth"] = int(config.get("model", {}).get("depth", 1))
            frame["file"] = str(path)
            rows.append(frame)
            record = {"method": method, "width": int(frame["width"].iloc[0]), "depth": int(frame["depth"].iloc[0]),
                      "curves": load_curves(path, job or None)}
            try:
                record["spectrum"] = load_group(path, "spectrum", job or None)
            except ResultsError:
                record["spectrum"] = None
            jobs.append(record)
    return pd.concat(rows, ignore_index=True), jobs


def coincide_at_depth_one(members: pd.DataFrame) -> bool:
    methods = set(members.loc[members["depth"] == 1, "method"])
    return {"tp", "dtp"} <= methods


def plot_histograms(members: pd.DataFrame, out: Path, label: str, note: str | None) -> None:
    groups = sorted({(int(w), int(d)) for w, d in zip(members["width"], members["depth"])})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, (width, depth) in zip(axes[0], groups):
        sub = members[(members["width"] == width) & (members["depth"] == depth) & ~members["diverged"].astype(bool)]
        methods = [m for m in METHODS if m in set(sub["method"])] + sorted(set(sub["method"]) - set(METHODS))
        step_histograms(ax, {m: sub.loc[sub["method"] == m, "final_test_loss"].to_numpy() for m in methods},
                        [PALETTE.get(m, "0.3") for m in methods], log_x=True)
        log_axis(ax, sub["final_test_loss"].to_numpy(), "x", ticks="round")
        ax.set_xlabel(label)
        ax.set_ylabel("density per decade")
        same = " (TP = DTP, expected)" if note and depth == 1 and {"tp", "dtp"} <= set(methods) else ""
        ax.set_title(f"{width} hidden units x {depth} layer(s){same}")
        ax.legend(title="method")
    save_figure(fig, out, "endpoint_loss_histograms")


def long_curves(jobs: list[dict], names: list[str]) -> pd.DataFrame:
    parts = []
    for j, job in enumerate(jobs):
        c = job["curves"]
        for name in names:
            if name not in c or np.ndim(c[name]) != 2:
                continue
            values = c[name]
            k, t = values.shape
            parts.append(pd.DataFrame({"job": j, "method": job["method"], "width": job["width"], "depth": job["depth"],
                                       "curve": name, "member": np.repeat(np.arange(k), t), "epoch": np.tile(c["epoch"], k),
                                       "value": values.ravel()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def layer_name(curve: str, depth: int) -> str:
    """cosine_layer{i} -> 'layer i+1 (...)' counted from the input; the output layer is named."""
    i = int(curve.removeprefix("cosine_layer"))
    return f"layer {i + 1} (output)" if i == depth else (f"layer {i + 1} (top hidden)" if i == depth - 1 else f"layer {i + 1}")


def plot_learning_curves(jobs: list[dict], out: Path, note: str | None) -> None:
    data = long_curves(jobs, ["train_loss", "test_error"])
    data["setting"] = [f"{w} units x {d}" for w, d in zip(data["width"], data["depth"])]
    data["curve"] = data["curve"].map({"train_loss": "train loss", "test_error": "test error (fraction)"})
    methods = [m for m in METHODS if m in set(data["method"])] + sorted(set(data["method"]) - set(METHODS))
    g = sns.relplot(data, x="epoch", y="value", hue="method", hue_order=methods, palette=PALETTE, col="curve",
                    row="setting", kind="line", errorbar=("pi", 50), facet_kws={"sharey": False}, height=2.8, aspect=1.35)
    g.set_titles("{row_name}: {col_name}")
    g.set_axis_labels("epoch", "")
    for (row, col), ax in g.axes_dict.items():
        values = data.loc[(data["setting"] == row) & (data["curve"] == col), "value"].to_numpy()
        if np.all(values[np.isfinite(values)] > 0):
            log_axis(ax, values, "y", ticks="round")
    title = "learning curves (median over networks, interquartile band)"
    g.figure.suptitle(title + (f"\n{note}: their curves overlap" if note else ""), y=1.02 + 0.02 * bool(note))
    save_figure(g.figure, out, "learning_curves")


def plot_cosines(jobs: list[dict], out: Path, note: str | None) -> bool:
    tp_jobs = [j for j in jobs if j["method"] in ("dtp", "tp")]
    names = sorted({n for j in tp_jobs for n in j["curves"] if n.startswith("cosine_layer")}, key=lambda n: int(n[12:]))
    data = long_curves(tp_jobs, names)
    if data.empty:
        return False
    data["layer"] = [layer_name(c, d) for c, d in zip(data["curve"], data["depth"])]
    depths = sorted(data["depth"].unique())
    methods = [m for m in ("dtp", "tp") if m in set(data["method"])]
    fig, axes = plt.subplots(len(depths), len(methods), figsize=(4.6 * len(methods), 3.2 * len(depths)), squeeze=False,
                             sharex=True)
    for r, depth in enumerate(depths):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            sub = data[(data["depth"] == depth) & (data["method"] == method)]
            if sub.empty:
                ax.set_axis_off()
                continue
            layers = sorted(sub["layer"].unique(), key=lambda s: int(s.split()[1]))
            sns.lineplot(sub, x="epoch", y="value", hue="layer", hue_order=layers, errorbar=("pi", 50), ax=ax,
                         palette=sns.color_palette("viridis", len(layers)), legend=c == len(methods) - 1)
            noise_floor(ax, sub["value"].to_numpy(), COSINE_SPAN, "float rounding, the layers are parallel")
            ax.set_title(f"{method.upper()}, depth {depth}")
            ax.set_ylabel("cosine to the backprop gradient" if c == 0 else "")
            if c == len(methods) - 1:
                ax.legend(title="layer (median, IQR band)", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if note and 1 in depths:
        fig.suptitle(note, fontsize=8, color="0.3")
    save_figure(fig, out, "cosine_to_backprop")
    return True


def plot_penalty(jobs: list[dict], out: Path) -> bool:
    """Penalty jobs: the monitored objective E (at the current mu) and the constraint violation per
    alternation, one line per member and stage, so the rise of E when mu grows between stages is a
    break, not a segment; the final refit is a marker."""
    pen = [j for j in jobs if j["method"] == "penalty" and "objective" in j["curves"]]
    if not pen:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), sharex=True)
    for job in pen:
        c = job["curves"]
        step, stage, phase = c["step"], c["stage"], c["phase"]
        colors = sequential_colors(len(c["objective"]))
        for k, color in enumerate(colors):
            for ax, name in zip(axes, ("objective", "violation")):
                for s in np.unique(stage[phase != 2]):
                    at = (stage == s) & (phase != 2)
                    values = np.where(c[name][k, at] > 0, c[name][k, at], np.nan)  # codes start on the forward pass: violation 0
                    ax.plot(step[at], values, "-o", ms=2.5, lw=1.1, color=color,
                            label=f"member {k} ({job['width']} units x {job['depth']})" if s == 0 and name == "objective" else None)
            refit = phase == 2
            axes[0].plot(step[refit], c["objective"][k, refit], "s", ms=5, mfc="none", color=color)
        starts = step[(phase == 0)]
        for ax in axes:
            for x, mu in zip(starts, c["mu"][phase == 0]):
                ax.axvline(x, color="0.8", lw=0.7, zorder=0)
                ax.text(x, 1.01, rf"$\mu$={mu:g}", transform=ax.get_xaxis_transform(), fontsize=7, color="0.35",
                        ha="left", va="bottom")
    positive = lambda name: np.concatenate([j["curves"][name][np.isfinite(j["curves"][name]) & (j["curves"][name] > 0)]  # noqa: E731
                                            for j in pen])
    for ax, name in zip(axes, ("objective", "violation")):
        log_axis(ax, positive(name), "y", ticks="round")
        ax.set_xlabel("alternation (W-step + Z-step)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(r"penalty objective $E$ at the current $\mu$")
    axes[1].set_ylabel(r"constraint violation $\sum_l \mathrm{mean}_n \|z_l - f_l(z_{l-1})\|^2$")
    axes[0].plot([], [], "s", mfc="none", color="k", label="after the final refit (nested loss)")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(r"penalty method: $E$ never rises within a stage (fixed $\mu$); it jumps when $\mu$ grows", y=1.03)
    save_figure(fig, out, "penalty_objective")
    return True


def plot_spectrum(jobs: list[dict], out: Path) -> bool:
    rows = []
    for job in jobs:
        s = job["spectrum"]
        if not s or "index_fraction" not in s:
            continue
        top = s.get("top")
        for k, frac in enumerate(np.atleast_1d(s["index_fraction"])):
            rows.append({"method": job["method"], "width": job["width"], "index_fraction": float(frac),
                         "top_eigenvalue": float(np.max(top[k])) if top is not None else np.nan})
    if not rows:
        return False
    frame = pd.DataFrame(rows)
    methods = [m for m in METHODS if m in set(frame["method"])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    sns.boxplot(frame, x="method", y="index_fraction", order=methods, hue="method", palette=PALETTE, ax=axes[0])
    sns.boxplot(frame, x="method", y="top_eigenvalue", order=methods, hue="method", palette=PALETTE, ax=axes[1])
    axes[0].set_ylabel("index (fraction of negative eigenvalues)")
    axes[1].set_ylabel(r"largest Hessian eigenvalue $\lambda_{\max}$")
    log_axis(axes[1], frame["top_eigenvalue"].to_numpy(), "y", ticks="round")
    save_figure(fig, out, "spectrum_by_method")
    return True


def table(members: pd.DataFrame) -> str:
    stats = members.groupby(["method", "width", "depth"]).agg(
        networks=("member", "size"), train_loss=("final_train_loss", "median"), test_loss=("final_test_loss", "median"),
        test_error=("test_error", "mean"), test_error_std=("test_error", "std"), diverged=("diverged", "sum"))
    return stats.reset_index().to_markdown(index=False, floatfmt=".4g", missingval="")


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="results files (results.h5 / sweep.h5) or sweep directories")
    parser.add_argument("--out", help="output directory (default FIRST_INPUT/analysis/training_methods)")
    args = parser.parse_args(argv)
    files = [results_path(item) for item in args.inputs]
    members, jobs = collect(files)
    out = output_dir(args.inputs[0], PROG, args.out)
    note = TP_DTP_NOTE if coincide_at_depth_one(members) else None
    plot_histograms(members, out, loss_label(files[0], "endpoint test loss"), note)
    plot_learning_curves(jobs, out, note)
    panels = ["endpoint_loss_histograms", "learning_curves"]
    if plot_cosines(jobs, out, note):
        panels.append("cosine_to_backprop")
    if plot_penalty(jobs, out):
        panels.append("penalty_objective")
    if plot_spectrum(jobs, out):
        panels.append("spectrum_by_method")
    text = ("# Training methods\n\n" + table(members) + "\n\n" + (f"Note: {note} (expected).\n\n" if note else "")
            + "Figures: " + ", ".join(panels) + " (PNG and PDF)\n")
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote figures and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
