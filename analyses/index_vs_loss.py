"""Dauphin et al. (2014) Fig. 1 on accepted critical points: index against loss, and the spectra.

    surfacekit -m experiment=dauphin_index
    surfacekit task=certify source=SWEEP              # certified minima
    surfacekit task=critical source=SWEEP ...         # finder runs along the trajectories (optional)
    python analyses/index_vs_loss.py SWEEP [--out DIR] [--bray-dean] [--embed-members 4]

Reads a job or a sweep and gathers critical points from three stated sources:

1. **certified minima** (and any certified saddles): ``task=certify`` points of every member; accepted
   = certified (the gradient tests and the exact index, see docs/certify.md);
2. **embedded saddles**: the first ``--embed-members`` certified minima of every width, embedded into
   every wider network of the sweep by adding zero units (``transforms.add_zero_units``: a critical
   point of the narrow network stays critical, with the same objective value, and each missing unit
   typically adds negative curvature), then certified in the wide network's objective (no
   optimization: the certificate judges the embedded point itself);
3. **finder runs**: ``task=critical`` endpoints, one source per finder; accepted by the finder
   package's scale-free acceptance test.

The loss axis is the objective each source analysed (``objective`` and ``bn_mode`` of its
certify or critical analysis; by default the trained objective, data loss plus the L2 term) at the
point, the function whose critical points these are; the index is the fraction of Hessian
eigenvalues below the threshold of each source (default ``-1e-5 max|lambda|``). Accepted points that
coincide (equal loss to 1e-8 relative and equal index, e.g. several starts ending at one saddle) are
labelled with their count. Writes into --out (default SOURCE/analysis/index_vs_loss):

* ``index_vs_loss``: index fraction against loss, accepted points filled and coloured by source,
  rejected finder endpoints grey (gradient-flat: crosses), never fitted; with --bray-dean the curve
  alpha = F((eps - eps_c) / w), F(t) = 1/2 + [x sqrt(1 - x^2) + arcsin x] / pi, x = t - 1 (clipped
  to [0, 1]), fitted to the accepted points;
* ``eigenvalue_histograms``: the dense Hessian spectrum (of the analysed objective) at the accepted
  points of lowest, median and highest distinct critical value (Dauphin et al. Fig. 1 b/c);
* ``index_vs_loss.md/.csv``: per source and for all accepted points together: points, accepted,
  acceptance rate, saddles, distinct indices, gradient-flat fraction of the rejected, Spearman rho
  (loss, index) over accepted points with its permutation p-value, the fitted Bray-Dean parameters;
* ``critical_points.csv``: every point (source, job, width, member, loss, index, accepted, ...).
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
from scipy.optimize import curve_fit

from surfacekit import store, transforms
from surfacekit.critical import METHODS
from surfacekit.critical.certify import certify
from surfacekit.curvature import dense_hessian
from surfacekit.plots import (AnalysisError, analysis_with, histogram_edges, log_axis, loss_label, one_line_errors,
                              output_dir, results_path, save_figure, save_table)
from surfacekit.population import flatten, unflatten
from surfacekit.stats import spearman_permutation

PROG = "index_vs_loss"
MINIMA, EMBEDDED = "certified minima", "embedded saddles"
MARKERS = {MINIMA: ("o", "tab:blue"), EMBEDDED: ("^", "tab:orange")}
FINDER_COLORS = ["tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink"]


def bray_dean(eps: np.ndarray, eps_c: float, w: float) -> np.ndarray:
    """alpha(eps) = F((eps - eps_c) / w), F(t) = 1/2 + [x sqrt(1 - x^2) + arcsin x] / pi, x = t - 1 in [-1, 1]."""
    x = np.clip((np.asarray(eps, dtype=float) - eps_c) / w - 1.0, -1.0, 1.0)
    return np.clip(0.5 + (x * np.sqrt(1.0 - x**2) + np.arcsin(x)) / np.pi, 0.0, 1.0)


def fit_bray_dean(loss: np.ndarray, alpha: np.ndarray) -> tuple[float, float]:
    """Least-squares (eps_c, w) of :func:`bray_dean` on accepted points; (nan, nan) if it fails or the data
    cannot determine them (fewer than 3 points, one loss, or one index: all minima, say)."""
    if len(loss) < 3 or np.ptp(loss) == 0 or np.ptp(alpha) == 0:
        return float("nan"), float("nan")
    span = float(np.ptp(loss))
    try:
        (eps_c, w), _ = curve_fit(bray_dean, loss, alpha, p0=(float(loss.min()) - 0.1 * span, 2 * span),
                                  bounds=([-np.inf, 1e-12], [np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError):
        return float("nan"), float("nan")
    return float(eps_c), float(w)


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


def analysed_objective(source: Path, job: str, task: str, group: str) -> tuple[str, str]:
    """(objective, bn_mode) that the analysis the points of ``group`` came from used (the newest ``task``
    analysis of ``job`` holding ``group``, the one ``store.load_group`` reads; its root attributes);
    the tasks' defaults (trained, batch) for a schema-1 file whose group sits in the training file."""
    found = analysis_with(source, job, task, group)
    if found is None:
        return "trained", "batch"
    with h5py.File(found.file, "r") as f:
        attrs = (f[found.group] if found.group else f).attrs
        return str(attrs.get("objective", "trained")), str(attrs.get("bn_mode", "batch"))


def point_objective(source: Path, job: str, member: int, objective: str, bn_mode: str):
    """``loss_fn`` of ``job``'s ``objective`` in ``bn_mode`` (member ``member`` where the job has it, for
    batch-norm statistics in eval mode; else its first member)."""
    rebuilt = store.load_job(source, job or None)
    ids = [int(m) for m in rebuilt.members["member"]]
    return store.job_objective(rebuilt, member if member in ids else ids[0], objective, bn_mode)[0]


def _width(source: Path, job: str) -> int:
    model = store.load_config(source, job or None).get("model", {})
    return int(model["width"]) if model.get("widths") is None and "width" in model else -1


def certified_points(source: Path, members: pd.DataFrame) -> pd.DataFrame:
    """Source 1: every member task=certify analysed (accepted = certified), with its point."""
    rows = []
    if "cert_class" not in members:
        return pd.DataFrame(rows)
    for job, group in members.groupby("job", sort=False):
        analysed = group[group["cert_class"].notna() & (group["cert_class"].astype(str) != "")]  # NaN: job not certified
        if not len(analysed):
            continue
        arrays = store.load_group(source, "certify", job or None)
        positions = {int(m): i for i, m in enumerate(group["member"])}
        objective = str(group["certify_objective"].iloc[0]) if "certify_objective" in group else "trained"
        bn_mode = str(group["certify_bn_mode"].iloc[0]) if "certify_bn_mode" in group else "batch"
        for _, row in analysed.iterrows():
            theta = arrays["theta"][positions[int(row.member)]] if "theta" in arrays else None
            rows.append({"source": MINIMA, "job": job, "width": _width(source, job), "member": int(row.member),
                         "loss": row.cert_objective, "index_count": int(row.cert_index),
                         "index_fraction": row.cert_index_fraction, "accepted": bool(row.certified),
                         "gradient_flat": row.cert_reason == "gradient-flat", "grad_norm2": row.cert_grad_norm2,
                         "classification": row.cert_class, "objective": objective, "bn_mode": bn_mode,
                         "theta": theta})
    return pd.DataFrame(rows)


def embedded_saddles(source: Path, minima: pd.DataFrame, per_width: int, index_options: dict | None = None,
                     cutoff: float = 1e-10) -> pd.DataFrame:
    """Source 2: the first ``per_width`` certified minima of every width of a one-hidden-layer sweep,
    each embedded by zero units into every wider job and certified there (:func:`certify`, no
    relative test: the point was not driven) in the objective and batch-norm mode the narrow point was
    certified in. Jobs must share data and objective."""
    rows = []
    chosen = minima[(minima.source == MINIMA) & (minima.classification == "minimum") & (minima.width > 0)]
    widths = sorted(set(chosen.width))
    wide_jobs = {int(w): j for j, w in minima.groupby("job").width.first().items() if w > 0}
    loaded: dict[str, tuple] = {}

    def objective(job: str, objective: str, bn_mode: str):
        key = (job, objective, bn_mode)
        if key not in loaded:
            rebuilt = store.load_job(source, job or None)
            loss_fn, _, info = store.job_objective(rebuilt, int(rebuilt.members["member"].iloc[0]), objective, bn_mode)
            loaded[key] = (rebuilt, loss_fn, {k: info[k] for k in ("objective", "weight_decay", "data", "num_examples")})
        return loaded[key]

    for width in widths:
        narrow = chosen[chosen.width == width].head(per_width)
        for wide_width in [w for w in sorted(wide_jobs) if w > width]:
            wide_job = wide_jobs[wide_width]
            for _, point in narrow.iterrows():
                _, wide_loss, wide_info = objective(wide_job, point.objective, point.bn_mode)
                small, _, info = objective(point.job, point.objective, point.bn_mode)
                if info != wide_info:
                    raise AnalysisError(f"jobs {point.job!r} and {wide_job!r} differ in data or objective ({info} vs "
                                        f"{wide_info}); embedded saddles need one objective")
                params = unflatten(torch.from_numpy(np.asarray(point.theta, dtype=np.float64)), small.spec)
                new = transforms.add_zero_units(small.spec, params, 0, wide_width - width)
                theta = flatten(new.params)[0]
                cert = certify(wide_loss, theta, start_grad_norm2=None, cutoff=cutoff, relative_cutoff=None,
                               index_options=index_options or {"method": "dense"})
                rows.append({"source": EMBEDDED, "job": wide_job, "width": wide_width, "member": int(point.member),
                             "narrow_job": point.job, "narrow_width": width, "units_added": wide_width - width,
                             "loss": cert.loss, "index_count": cert.index_count, "index_fraction": cert.index_fraction,
                             "accepted": cert.certified, "gradient_flat": cert.reason == "gradient-flat",
                             "grad_norm2": cert.grad_norm2, "classification": cert.classification,
                             "lambda_min": cert.lambda_min, "objective": point.objective, "bn_mode": point.bn_mode,
                             "theta": theta.numpy()})
                print(f"embedded {width} -> {wide_width} (member {int(point.member)}): {cert.classification}, index "
                      f"{cert.index_count}, loss {cert.loss:.5g}", file=sys.stderr)
    return pd.DataFrame(rows)


def finder_points(source: Path, jobs: list[str], finders: list[str] | None) -> pd.DataFrame:
    """Source 3: task=critical endpoints of every job, one source per finder."""
    frames = []
    for job in jobs:
        for name in finders or METHODS:
            try:
                g = store.load_group(source, f"critical/{name}", job or None)
            except store.ResultsError:
                continue
            theta = g.pop("theta", None)
            frame = pd.DataFrame({k: v.astype(str) if v.dtype.kind in "OSU" else v for k, v in g.items() if v.ndim == 1})
            frame["source"], frame["job"], frame["width"] = f"finder runs ({name})", job, _width(source, job)
            frame["objective"], frame["bn_mode"] = analysed_objective(source, job, "critical", f"critical/{name}")
            frame["theta"] = list(theta) if theta is not None else None
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def source_row(name: str, frame: pd.DataFrame, n_perm: int, fit: bool) -> dict:
    acc, rej = frame[frame.accepted.astype(bool)], frame[~frame.accepted.astype(bool)]
    rho, p = (spearman_permutation(acc.loss.to_numpy(), acc.index_fraction.to_numpy(), n_perm) if len(acc) > 2
              else (np.nan, np.nan))
    eps_c, w = fit_bray_dean(acc.loss.to_numpy(), acc.index_fraction.to_numpy()) if fit else (np.nan, np.nan)
    saddles = acc[acc.index_count > 0]
    return {"source": name, "points": len(frame), "accepted": len(acc), "acceptance_rate": len(acc) / max(1, len(frame)),
            "saddles": len(saddles), "distinct_indices": int(saddles.index_count.nunique()),
            "flat_of_rejected": rej.gradient_flat.astype(bool).mean() if len(rej) else np.nan,
            "median_g2_rejected": rej.grad_norm2.median() if len(rej) else np.nan,
            "spearman_rho_accepted": rho, "permutation_p": p, "bray_dean_eps_c": eps_c, "bray_dean_w": w}


def style(name: str, finders: list[str]) -> tuple[str, str]:
    if name in MARKERS:
        return MARKERS[name]
    return "s", FINDER_COLORS[finders.index(name) % len(FINDER_COLORS)]


def plot_index(points: pd.DataFrame, table: pd.DataFrame, fit: bool, loss_axis: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    finders = sorted(s for s in points.source.unique() if s not in MARKERS)
    rej = points[~points.accepted.astype(bool) & points.index_fraction.notna()]
    flat = rej[rej.gradient_flat.astype(bool)]
    other = rej[~rej.gradient_flat.astype(bool)]
    if len(other):
        ax.scatter(other.loss, other.index_fraction, s=16, facecolors="none", edgecolors="0.6", label=f"rejected ({len(other)})")
    if len(flat):
        ax.scatter(flat.loss, flat.index_fraction, s=16, marker="x", color="0.6", label=f"gradient-flat, rejected ({len(flat)})")
    for name, frame in points[points.accepted.astype(bool)].groupby("source", sort=False):
        marker, color = style(name, finders)
        ax.scatter(frame.loss, frame.index_fraction, s=26, marker=marker, color=color, edgecolors="k", linewidths=0.4,
                   label=f"{name}, accepted ({len(frame)} of {int((points.source == name).sum())})")
        for (_, index), group in frame.groupby([distinct_levels(frame.loss.to_numpy()), frame.index_fraction]):
            if len(group) > 1:  # coinciding critical points: say how many
                ax.annotate(f"x{len(group)}", (group.loss.iloc[0], index), xytext=(5, -9), textcoords="offset points",
                            fontsize=7, color=color)
    row = table.set_index("source").loc["all accepted"]
    acc = points[points.accepted.astype(bool)]
    if fit and np.isfinite(row.bray_dean_w) and len(acc):
        grid = np.linspace(acc.loss.min(), acc.loss.max(), 200)
        ax.plot(grid, bray_dean(grid, row.bray_dean_eps_c, row.bray_dean_w), color="k", lw=1,
                label=rf"Bray–Dean fit ($\epsilon_c$ = {row.bray_dean_eps_c:.3g}, $w$ = {row.bray_dean_w:.3g})")
    ax.set(xlabel=loss_axis,
           ylabel=r"index $\alpha$ (fraction of eigenvalues below the threshold)",
           title=rf"accepted critical points: Spearman $\rho$ = {row.spearman_rho_accepted:.3g} (p = {row.permutation_p:.2g})")
    ax.legend(loc="best", fontsize=7)
    return fig


def plot_spectra(source: Path, points: pd.DataFrame, dense_limit: int):
    accepted = points[points.accepted.astype(bool) & points.theta.notna()] if "theta" in points else points.iloc[:0]
    if len(accepted) == 0:
        print("eigenvalue histograms: no accepted critical point with a stored endpoint; skipped", file=sys.stderr)
        return None
    # one point per distinct critical value (many starts often end at the same point), then the lowest,
    # median and highest of those
    accepted = accepted.assign(level=distinct_levels(accepted.loss.to_numpy()))
    accepted = accepted.drop_duplicates("level").sort_values("loss").reset_index(drop=True)
    picks = sorted(set([0, len(accepted) // 2, len(accepted) - 1]))
    if max(len(accepted.theta[i]) for i in picks) > dense_limit:
        print(f"eigenvalue histograms: P > --dense-limit {dense_limit}; skipped", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, len(picks), figsize=(4.4 * len(picks), 3.6), squeeze=False, sharex=True, sharey=True)
    for ax, i in zip(axes[0], picks):
        point = accepted.iloc[i]
        member = int(point.member) if "member" in accepted and np.isfinite(point.member) else -1
        loss_fn = point_objective(source, point.job, member, str(point.objective), str(point.bn_mode))
        theta = torch.from_numpy(np.asarray(accepted.theta[i], dtype=np.float64))
        eig = torch.linalg.eigvalsh(dense_hessian(loss_fn, theta)).numpy()
        counts, edges = np.histogram(eig, bins=histogram_edges(eig))
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
        log_axis(ax, counts, "y", ticks="round")
        ax.axvline(0, color="k", lw=0.6)
        negative = int(np.sum(eig < -1e-5 * np.abs(eig).max()))
        ax.set(xlabel=r"Hessian eigenvalue $\lambda$",
               title=f"{accepted.source[i]}, loss {accepted.loss[i]:.4g}:\n{negative} of {len(eig)} below "
                     + r"$-10^{-5}\max|\lambda|$")
    axes[0][0].set_ylabel("eigenvalues per bin (numpy 'auto' bins)")
    return fig


def gather(source: Path, args) -> pd.DataFrame:
    members = store.load_members(source)
    jobs = list(dict.fromkeys(members["job"]))
    minima = certified_points(source, members)
    parts = [minima]
    if len(minima) and args.embed_members > 0:
        parts.append(embedded_saddles(source, minima, args.embed_members))
    parts.append(finder_points(source, jobs, args.finders))
    parts = [p for p in parts if len(p)]
    if not parts:
        raise AnalysisError(f"{source}: no certified points (run surfacekit task=certify source={source}) and no finder "
                            f"runs (task=critical) to show")
    return pd.concat(parts, ignore_index=True)


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a job or sweep with task=certify and/or task=critical results")
    parser.add_argument("--out", type=Path, help="output folder (default SOURCE/analysis/index_vs_loss)")
    parser.add_argument("--finders", nargs="+", help=f"finders to show (default: all stored; of {list(METHODS)})")
    parser.add_argument("--embed-members", type=int, default=4,
                        help="certified minima per width embedded into every wider network (0: none; default 4)")
    parser.add_argument("--bray-dean", action="store_true", help="fit and overlay the Bray-Dean curve (accepted points)")
    parser.add_argument("--permutations", type=int, default=10000, help="permutations for the Spearman p-value")
    parser.add_argument("--dense-limit", type=int, default=3000, help="largest P for the eigenvalue histograms")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    if args.finders and (unknown := sorted(set(args.finders) - set(METHODS))):
        raise AnalysisError(f"no finder(s) {unknown}; finders are {list(METHODS)}")
    points = gather(path, args)
    out = output_dir(path, PROG, args.out)
    rows = [source_row(name, frame, args.permutations, args.bray_dean) for name, frame in points.groupby("source", sort=False)]
    rows.append(source_row("all accepted", points[points.accepted.astype(bool)], args.permutations, args.bray_dean))
    table = pd.DataFrame(rows)
    written = save_table(table, out, "index_vs_loss")
    written += save_table(points.drop(columns=["theta"], errors="ignore"), out, "critical_points")
    objectives = set(points.objective.astype(str))
    what = "trained objective at the point (data loss + L2)" if objectives == {"trained"} else \
        f"objective at the point ({', '.join(sorted(objectives))})"
    written += save_figure(plot_index(points, table, args.bray_dean, loss_label(path, what)), out, "index_vs_loss")
    spectra = plot_spectra(path, points, args.dense_limit)
    if spectra is not None:
        written += save_figure(spectra, out, "eigenvalue_histograms")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
