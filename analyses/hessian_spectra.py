"""Hessian spectra per width: spectral densities, index and top eigenvalues.

    surfacekit -m model.width=5,10,25 ...                   # a training sweep
    surfacekit task=spectrum source=outputs/multirun/DATE/TIME
    python analyses/hessian_spectra.py outputs/multirun/DATE/TIME [--out DIR]

Reads the ``/spectrum`` group of every job (a sweep directory, a sweep.h5
or one results.h5). Writes into --out (default SOURCE/analysis/hessian_spectra): the SLQ density
per width (averaged over members, log y), the index fraction against width (every member, with its
threshold stated), the top eigenvalues against width (log axes ticked at the swept widths), and a
table per width (PNG + PDF + CSV + markdown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from surfacekit import store
from surfacekit.curvature import SpectralDensity, density_on_grid
from surfacekit.plots import (AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table,
                              sequential_colors, tex_number)

PROG = "hessian_spectra"


def load_spectra(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """width -> spectrum arrays of the analysed members of all jobs with that width."""
    out: dict[int, dict[str, list[np.ndarray]]] = {}
    for job in store.list_jobs(path):
        try:
            spectrum = store.load_group(path, "spectrum", job or None)
        except store.ResultsError:
            continue
        members = store.load_group(path, "members", job or None)
        if "width" not in members:
            raise AnalysisError(f"{path}: job {job!r} has no width column in /members; this analysis compares widths")
        width = int(members["width"][0])
        ok = spectrum["analysed"]
        for key, value in spectrum.items():
            out.setdefault(width, {}).setdefault(key, []).append(value[ok])
    return {w: {k: np.concatenate(v) for k, v in d.items()} for w, d in sorted(out.items())}


def index_threshold_label(path: Path) -> str:
    """The relative index thresholds the spectra were computed with, as mathtext."""
    col = store.collect(path)
    values = set()
    for job in col.jobs.values():
        found = store.analyses_of(col, job, "spectrum")
        if found and isinstance(found[0].settings, dict) and found[0].settings.get("threshold") is None:
            values.add(float(found[0].settings["relative_threshold"]))
        elif not found:  # schema 1: the spectrum lives in the training file
            attrs = store.load_attrs(path, job.name)
            if "spectrum_relative_threshold" in attrs:
                values.add(float(attrs["spectrum_relative_threshold"]))
    return ", ".join(rf"$\lambda < -{tex_number(v)}\,\max|\lambda|$" for v in sorted(values)) or "absolute threshold"


def objectives_used(path: Path) -> str:
    """Which objective and batch-norm mode the spectra describe (the newest spectrum analysis per job),
    e.g. 'trained objective, bn_mode batch (analysis spectrum-1a2b3c4d)'; several when jobs differ."""
    col = store.collect(path)
    used = set()
    for job in col.jobs.values():
        found = store.analyses_of(col, job, "spectrum")
        if found:
            with h5py.File(found[0].file, "r") as f:
                attrs = f[f"{found[0].group}/jobs/{job.name}".lstrip("/")].attrs
                used.add(f"{attrs.get('objective', '?')} objective, bn_mode {attrs.get('bn_mode', '?')} "
                         f"(analysis {found[0].name})")
    return "; ".join(sorted(used)) or "the training files' own spectra (schema 1)"


def density_figure(spectra: dict[int, dict[str, np.ndarray]]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, (width, s) in zip(sequential_colors(len(spectra)), spectra.items()):
        nodes = s["density_nodes"].reshape(-1, s["density_nodes"].shape[-1])
        weights = s["density_weights"].reshape(nodes.shape) / len(s["density_nodes"])
        density = SpectralDensity(torch.from_numpy(nodes), torch.from_numpy(weights), 0)
        grid, values = density_on_grid(density, num_points=2000)
        ax.semilogy(grid.numpy(), np.maximum(values.numpy(), 1e-8), color=color,
                    label=f"{width} ({len(s['density_nodes'])} networks)")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$ (loss per squared parameter unit)")
    ax.set_ylabel("spectral density (SLQ, mean over networks)")
    ax.set_ylim(bottom=1e-6)
    ax.legend(title="hidden units")
    return fig


def per_width_table(spectra: dict[int, dict[str, np.ndarray]]) -> pd.DataFrame:
    rows = []
    for width, s in spectra.items():
        rows.append({
            "width": width, "networks": len(s["top"]),
            "lambda_max_mean": s["top"][:, 0].mean(), "lambda_max_std": s["top"][:, 0].std(ddof=1) if len(s["top"]) > 1 else np.nan,
            "lambda_min_mean": s["bottom"][:, 0].mean(), "trace_mean": s["trace"].mean(),
            "index_fraction_mean": s["index_fraction"].mean(), "index_count_mean": s["index_count"].mean(),
            "fraction_minima": float((s["index_count"] == 0).mean()),
            "index_lower_bounds": int(s["index_at_least"].sum()),
        })
    return pd.DataFrame(rows)


def scatter_figure(spectra, key: str, column: int | None, ylabel: str, log_y: bool = False) -> plt.Figure:
    """Every network's value against width (jittered on the log axis), the mean as a bar."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    values_all = []
    for color, (width, s) in zip(sequential_colors(len(spectra)), spectra.items()):
        values = s[key] if column is None else s[key][:, column]
        jitter = width * np.exp(np.random.default_rng(width).normal(0, 0.04, len(values)))
        ax.scatter(jitter, values, s=10, alpha=0.6, color=color)
        ax.plot([width], [np.mean(values)], "k_", markersize=16, mew=2)
        values_all.append(values)
    log_axis(ax, list(spectra), "x")
    if log_y:
        log_axis(ax, np.concatenate(values_all), "y", ticks="round")
    ax.set_xlabel("hidden units")
    ax.set_ylabel(ylabel)
    ax.plot([], [], "k_", markersize=12, mew=2, ls="none", label="mean")
    ax.legend(loc="best")
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="sweep directory, sweep.h5 or results.h5 (after task=spectrum)")
    parser.add_argument("--out", type=Path, help="output directory (default SOURCE/analysis/hessian_spectra)")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    spectra = load_spectra(path)
    if not spectra:
        raise AnalysisError(f"{path} has no /spectrum group; run surfacekit task=spectrum source={args.source} first")
    out = output_dir(args.source, PROG, args.out)
    table = per_width_table(spectra)
    save_table(table, out, "spectra_by_width")
    save_figure(density_figure(spectra), out, "density_per_width")
    save_figure(scatter_figure(spectra, "index_fraction", None, f"index fraction\n({index_threshold_label(path)})"),
                out, "index_vs_width")
    save_figure(scatter_figure(spectra, "top", 0, r"largest Hessian eigenvalue $\lambda_{\max}$", log_y=True),
                out, "top_eigenvalue_vs_width")
    print(f"spectra of: {objectives_used(path)}")
    print(table.to_string(index=False, float_format="%.4g"))
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
