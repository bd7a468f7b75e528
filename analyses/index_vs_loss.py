"""Dauphin et al. (2014) Fig. 1 style: index against loss at critical points, and their spectra.

    surfacekit task=critical source=RUN/results.h5
    python analyses/index_vs_loss.py RUN/results.h5 [--job NAME] [--out DIR] [--bray-dean] [--finders newton_mr ...]

Reads ``/critical/<finder>`` of one job (a results file, run directory, or a sweep with ``--job``)
from the newest critical analysis of that job that holds it (``SOURCE/analyses/critical-HASH/``).
Writes into --out (default RUN/analysis/index_vs_loss):

* ``index_vs_loss``: index fraction against loss per finder. Accepted critical points
  (``accepted``: the task's criterion, see docs/critical.md) are filled dots; rejected endpoints
  (asymptotic, gradient-flat or rejected) are grey crosses (gradient-flat) or grey circles,
  shown for honesty and never fitted. With --bray-dean, the Bray-Dean curve
  alpha = F((eps - eps_c) / w), F(t) = 1/2 + [x sqrt(1 - x^2) + arcsin x] / pi, x = t - 1
  (clipped to [0, 1]) is fitted to the accepted points (eps_c, w) and overlaid.
* ``eigenvalue_histograms``: Hessian eigenvalues (dense eigvalsh, log y) at three accepted critical
  points of increasing loss (lowest, median, highest), recomputed from the stored endpoints.
* ``index_vs_loss.md/.csv``: per finder, starts, acceptance rate, gradient-flat fraction of the
  rejected, Spearman rho(loss, index) over accepted points with a permutation p-value, the fitted
  Bray-Dean parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import h5py
import numpy as np
import pandas as pd
import torch
from scipy.optimize import curve_fit

from surfacekit import store
from surfacekit.critical import METHODS
from surfacekit.curvature import dense_hessian
from surfacekit.plots import (AnalysisError, analysis_with, has_group, histogram_edges, log_axis, loss_label, one_job, one_line_errors,
                              output_dir, results_path, save_figure, save_table)
from surfacekit.stats import spearman_permutation
from surfacekit.store import load_job

PROG = "index_vs_loss"


def bray_dean(eps: np.ndarray, eps_c: float, w: float) -> np.ndarray:
    """alpha(eps) = F((eps - eps_c) / w), F(t) = 1/2 + [x sqrt(1 - x^2) + arcsin x] / pi, x = t - 1 in [-1, 1]."""
    x = np.clip((np.asarray(eps, dtype=float) - eps_c) / w - 1.0, -1.0, 1.0)
    return np.clip(0.5 + (x * np.sqrt(1.0 - x**2) + np.arcsin(x)) / np.pi, 0.0, 1.0)


def fit_bray_dean(loss: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """Least-squares (eps_c, w) of :func:`bray_dean` on accepted points; (nan, nan) if it fails."""
    if len(loss) < 3 or np.ptp(loss) == 0:
        return float("nan"), float("nan")
    span = float(np.ptp(loss))
    try:
        (eps_c, w), _ = curve_fit(bray_dean, loss, alpha, p0=(float(loss.min()) - 0.1 * span, 2 * span),
                                  bounds=([-np.inf, 1e-12], [np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError):
        return float("nan"), float("nan")
    return float(eps_c), float(w)


def load_critical(path: Path, job: str, finders: list[str] | None) -> dict[str, pd.DataFrame]:
    """One frame per finder from ``/critical/<finder>`` of job ``job``'s newest critical analysis that
    holds it (or of the training file itself, schema 1), theta kept as a column of arrays."""
    stored = {}
    for name in METHODS:
        if has_group(path, f"critical/{name}", job):
            stored[name] = store.load_group(path, f"critical/{name}", job)
    if not stored:
        raise AnalysisError(f"{path}: job {job!r} has no /critical/<finder> group in its file or its analyses; "
                            f"run surfacekit task=critical source={path} first")
    names = finders or sorted(stored)
    unknown = sorted(set(names) - set(stored))
    if unknown:
        raise AnalysisError(f"{path}: no finder(s) {unknown} in /critical (stored: {sorted(stored)})")
    frames = {}
    for name in names:
        g = dict(stored[name])
        theta = g.pop("theta", None)
        frame = pd.DataFrame({k: v.astype(str) if v.dtype.kind in "OS" else v for k, v in g.items()})
        if theta is not None:
            frame["theta"] = list(theta)
        frames[name] = frame
    return frames


def summary_row(name: str, frame: pd.DataFrame, n_perm: int, fit: bool) -> dict:
    acc, rej = frame[frame.accepted], frame[~frame.accepted]
    rho, p = spearman_permutation(acc.loss.to_numpy(), acc.index_fraction.to_numpy(), n_perm) if len(acc) > 2 else (np.nan, np.nan)
    eps_c, w = fit_bray_dean(acc.loss.to_numpy(), acc.index_fraction.to_numpy()) if fit else (np.nan, np.nan)
    return {"finder": name, "starts": len(frame), "accepted": len(acc), "acceptance_rate": len(acc) / max(1, len(frame)),
            "flat_of_rejected": rej.gradient_flat.mean() if len(rej) else np.nan,
            "median_g2_rejected": rej.grad_norm2.median() if len(rej) else np.nan,
            "spearman_rho_accepted": rho, "permutation_p": p, "bray_dean_eps_c": eps_c, "bray_dean_w": w}


def distinct_levels(loss: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """An integer label per loss value, equal for values within ``rtol`` (relative to the largest |loss|) of
    each other: critical points reached from several starts share one label."""
    loss = np.asarray(loss, dtype=float)
    if not len(loss):
        return np.zeros(0, dtype=int)
    scale = rtol * max(np.abs(loss).max(), np.finfo(float).tiny)
    order = np.argsort(loss)
    labels = np.empty(len(loss), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(loss[order]) > scale)])
    return labels


def plot_index(frames: dict[str, pd.DataFrame], table: pd.DataFrame, fit: bool, loss_axis: str):
    fig, axes = plt.subplots(1, len(frames), figsize=(4.4 * len(frames), 3.8), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        acc, rej = frame[frame.accepted], frame[~frame.accepted]
        flat = rej[rej.gradient_flat]
        other = rej[~rej.gradient_flat]
        ax.scatter(other.loss, other.index_fraction, s=16, facecolors="none", edgecolors="0.55",
                   label=f"rejected ({len(other)})")
        ax.scatter(flat.loss, flat.index_fraction, s=16, marker="x", color="0.55", label=f"gradient-flat, rejected ({len(flat)})")
        ax.scatter(acc.loss, acc.index_fraction, s=22, color="tab:blue", edgecolors="k", linewidths=0.4,
                   label=f"critical, accepted ({len(acc)})")
        for (_, index), group in acc.groupby([distinct_levels(acc.loss.to_numpy()), acc.index_fraction]):
            if len(group) > 1:  # coinciding critical points: say how many
                ax.annotate(f"x{len(group)}", (group.loss.iloc[0], index), xytext=(5, -9), textcoords="offset points",
                            fontsize=7, color="tab:blue")
        row = table.set_index("finder").loc[name]
        if fit and np.isfinite(row.bray_dean_w) and len(acc):
            grid = np.linspace(acc.loss.min(), acc.loss.max(), 200)
            ax.plot(grid, bray_dean(grid, row.bray_dean_eps_c, row.bray_dean_w), color="tab:orange",
                    label=rf"Bray–Dean fit ($\epsilon_c$ = {row.bray_dean_eps_c:.3g}, $w$ = {row.bray_dean_w:.3g})")
        ax.set(xlabel=loss_axis, title=f"{name}: {len(acc)}/{len(frame)} accepted")
        ax.legend(loc="best")
    axes[0][0].set_ylabel(r"index $\alpha$ (fraction of negative eigenvalues)")
    return fig


def analysed_objective(path: Path, job: str, finder: str) -> tuple[str, str]:
    """(objective, bn_mode) that the critical analysis the frames came from used (the newest one of
    the job holding ``/critical/<finder>``; its root attributes); the task's defaults (trained,
    batch) for a schema-1 file whose critical group sits in the training file."""
    found = analysis_with(path, job, "critical", f"critical/{finder}")
    if found is None:
        return "trained", "batch"
    with h5py.File(found.file, "r") as f:
        attrs = (f[found.group] if found.group else f).attrs
        return str(attrs.get("objective", "trained")), str(attrs.get("bn_mode", "batch"))


def plot_spectra(path: Path, job_name: str, frames: dict[str, pd.DataFrame], dense_limit: int):
    accepted = pd.concat([f[f.accepted] for f in frames.values()], ignore_index=True) if frames else pd.DataFrame()
    if len(accepted) == 0 or "theta" not in accepted:
        print("eigenvalue histograms: no accepted critical point with a stored endpoint; skipped", file=sys.stderr)
        return None
    # one point per distinct critical value (many starts often end at the same point), then the lowest,
    # median and highest of those
    accepted = accepted.assign(level=distinct_levels(accepted.loss.to_numpy()))
    accepted = accepted.drop_duplicates("level").sort_values("loss").reset_index(drop=True)
    picks = sorted(set([0, len(accepted) // 2, len(accepted) - 1]))
    p = len(accepted.theta[0])
    if p > dense_limit:
        print(f"eigenvalue histograms: P = {p} > --dense-limit {dense_limit}; skipped", file=sys.stderr)
        return None
    job = load_job(path, job_name)
    objective, bn_mode = analysed_objective(path, job_name, next(iter(frames)))
    fig, axes = plt.subplots(1, len(picks), figsize=(4.4 * len(picks), 3.6), squeeze=False, sharex=True, sharey=True)
    for ax, i in zip(axes[0], picks):
        theta = torch.from_numpy(np.asarray(accepted.theta[i], dtype=np.float64))
        member = int(accepted.member[i]) if "member" in accepted else int(job.members["member"][0])
        loss_fn = store.job_objective(job, member, objective, bn_mode)[0]
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta)).numpy()
        counts, edges = np.histogram(eig, bins=histogram_edges(eig))
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
        log_axis(ax, counts, "y", ticks="round")
        ax.axvline(0, color="k", lw=0.6)
        negative = int(np.sum(eig < -1e-5 * np.abs(eig).max()))
        ax.set(xlabel=r"Hessian eigenvalue $\lambda$",
               title=f"loss {accepted.loss[i]:.4g}: {negative} of {len(eig)} below "
                     + r"$-10^{-5}\max|\lambda|$")
    axes[0][0].set_ylabel("eigenvalues per bin (numpy 'auto' bins)")
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a job's results.h5 or run directory analysed by task=critical, or a sweep")
    parser.add_argument("--job", help="the job to read when SOURCE is a sweep (e.g. 0)")
    parser.add_argument("--out", type=Path, help="output folder (default SOURCE_DIR/analysis/index_vs_loss)")
    parser.add_argument("--finders", nargs="+", help="finders to show (default: all in the file)")
    parser.add_argument("--bray-dean", action="store_true", help="fit and overlay the Bray-Dean curve (accepted points)")
    parser.add_argument("--permutations", type=int, default=10000, help="permutations for the Spearman p-value")
    parser.add_argument("--dense-limit", type=int, default=3000, help="largest P for the eigenvalue histograms")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    job = one_job(path, args.job)
    frames = load_critical(path, job, args.finders)
    out = output_dir(path, PROG, args.out)
    table = pd.DataFrame([summary_row(n, f, args.permutations, args.bray_dean) for n, f in frames.items()])
    written = save_table(table, out, "index_vs_loss")
    written += save_figure(plot_index(frames, table, args.bray_dean, loss_label(path, "training loss")), out, "index_vs_loss")
    spectra = plot_spectra(path, job, frames, args.dense_limit)
    if spectra is not None:
        written += save_figure(spectra, out, "eigenvalue_histograms")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
