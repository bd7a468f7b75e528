"""Compare training methods (backprop, tp, dtp, penalty) across results files or sweep directories.

Writes into --out: endpoint loss histograms per method at equal width, learning curves, cosine-to-
backprop curves (dtp/tp), Hessian index / top eigenvalues when a /spectrum group is present, each as
PNG and PDF, plus ``summary.md`` (a table of endpoint statistics per method and width).

    python analyses/training_methods.py outputs/multirun/2024-01-01/12-00-00 other/results.h5 --out figs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from surfacekit.plots import save_figure
from surfacekit.store import ResultsError, list_jobs, load_config, load_curves, load_group, load_members


def result_files(inputs: list[str]) -> list[Path]:
    """Results files named directly, or found in directories (a merged sweep.h5, else every job's results.h5)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            merged = sorted(item.glob("sweep.h5"))
            files += merged or sorted(item.rglob("results.h5"))
        else:
            files.append(item)
    if not files:
        raise SystemExit(f"no results files found in {inputs}")
    return files


def method_of(config: dict) -> str:
    trainer = config.get("trainer", {})
    method = trainer.get("method", "backprop")
    if method == "dtp" and not trainer.get("difference_correction", True):
        return "tp"
    return method


def collect(files: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per network (members table + method) and one record per job (curves, spectrum)."""
    rows, jobs = [], []
    for path in files:
        members = load_members(path)
        for job in list_jobs(path):
            config = load_config(path, job or None)
            method = method_of(config)
            frame = members[members["job"] == job].copy()
            frame["method"] = method
            frame["file"] = str(path)
            rows.append(frame)
            record = {"method": method, "width": int(frame["width"].iloc[0]), "curves": load_curves(path, job or None)}
            try:
                record["spectrum"] = load_group(path, "spectrum", job or None)
            except ResultsError:
                record["spectrum"] = None
            jobs.append(record)
    return pd.concat(rows, ignore_index=True), jobs


def plot_histograms(members: pd.DataFrame, out: Path) -> None:
    widths = sorted(members["width"].unique())
    fig, axes = plt.subplots(1, len(widths), figsize=(4.5 * len(widths), 3.5), squeeze=False)
    for ax, width in zip(axes[0], widths):
        sub = members[members["width"] == width]
        sns.histplot(sub, x="final_test_loss", hue="method", element="step", stat="density", common_norm=False,
                     log_scale=True, ax=ax)
        ax.set_title(f"width {width}: endpoint test loss")
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
            parts.append(pd.DataFrame({"job": j, "method": job["method"], "width": job["width"], "curve": name,
                                       "member": np.repeat(np.arange(k), t), "epoch": np.tile(c["epoch"], k),
                                       "value": values.ravel()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_learning_curves(jobs: list[dict], out: Path) -> None:
    data = long_curves(jobs, ["train_loss", "test_error"])
    g = sns.relplot(data, x="epoch", y="value", hue="method", col="curve", row="width", kind="line",
                    errorbar=("pi", 50), facet_kws={"sharey": False}, height=3, aspect=1.3)
    g.set(yscale="log")
    g.figure.suptitle("learning curves (median, interquartile band)", y=1.02)
    save_figure(g.figure, out, "learning_curves")


def plot_cosines(jobs: list[dict], out: Path) -> bool:
    names = sorted({n for j in jobs for n in j["curves"] if n.startswith("cosine_layer")}, key=lambda n: int(n[12:]))
    data = long_curves([j for j in jobs if j["method"] in ("dtp", "tp")], names)
    if data.empty:
        return False
    g = sns.relplot(data, x="epoch", y="value", hue="curve", col="method", kind="line", errorbar=("pi", 50),
                    height=3, aspect=1.3)
    g.set_ylabels("cosine to backprop gradient")
    save_figure(g.figure, out, "cosine_to_backprop")
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
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    sns.boxplot(frame, x="method", y="index_fraction", ax=axes[0])
    sns.boxplot(frame, x="method", y="top_eigenvalue", ax=axes[1])
    axes[1].set_yscale("log")
    save_figure(fig, out, "spectrum_by_method")
    return True


def table(members: pd.DataFrame) -> str:
    stats = members.groupby(["method", "width"]).agg(
        networks=("member", "size"), train_loss=("final_train_loss", "median"), test_loss=("final_test_loss", "median"),
        test_error=("test_error", "mean"), test_error_std=("test_error", "std"), diverged=("diverged", "sum"))
    return stats.to_markdown(floatfmt=".4g")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="results files (results.h5 / sweep.h5) or sweep directories")
    parser.add_argument("--out", default="figures/training_methods", help="output directory (created)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    members, jobs = collect(result_files(args.inputs))
    sns.set_theme(style="whitegrid")
    plot_histograms(members, out)
    plot_learning_curves(jobs, out)
    panels = ["endpoint_loss_histograms", "learning_curves"]
    if plot_cosines(jobs, out):
        panels.append("cosine_to_backprop")
    if plot_spectrum(jobs, out):
        panels.append("spectrum_by_method")
    text = "# Training methods\n\n" + table(members) + "\n\nFigures: " + ", ".join(panels) + " (PNG and PDF)\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
