"""Net2Net (Chen, Goodfellow and Shlens 2016): continued training of a transformed network against
training the wide network from scratch, and the Hessian spectrum before and after the transform.

ROOT holds the jobs of docs/net2net.md (each a run directory or a one-job sweep directory):

* ``narrow``: the small network; ``continued``: started from it with ``population.init_from`` through
  ``population.transform=widen`` (or ``deepen``) and trained on; ``scratch``: the wide network from a
  random initialization, trained for the epochs of both others together (the same budget);
* optional, for the spectrum: ``before`` and ``after``, 0-epoch jobs holding the starting point before
  and after the transform (``population.init_point=certify``: the narrow network's certified points),
  each with a ``task=spectrum`` analysis (the index at its stated threshold).

Writes into --out (default ROOT/analysis/net2net):

* ``net2net_curves.png/.pdf``: train and test loss (mean over members, band min to max) against epochs;
  the continued job's epochs start where the narrow job's end;
* ``net2net_spectrum.png/.pdf`` (with before/after): every member's Hessian eigenvalues in increasing
  order, dense (P Hessian-vector products, float64, the trained objective of each job), symlog axis;
* ``net2net.csv/.md``: per job and member: the function change at the transform (the continued job's
  first recorded train and test losses minus the narrow job's last: 0 to rounding when the transform
  preserves the function), final train and test losses and squared gradient norms, and for
  before/after ``grad_norm2``, ``index_count`` (``task=spectrum``: the count below ``index_threshold``,
  by ``index_method``), ``lambda_min``, ``lambda_max``, and from the dense eigenvalues
  ``dense_index_count`` (the same count: a cross-check), ``dense_lambda_min`` and ``near_zero`` (the
  eigenvalues with |lambda| <= 1e-8 max|lambda|).

The narrow job's SGD endpoint is not a critical point (its gradient norm is in the table): only the
certified points of ``before`` (and their widening in ``after``: the replicated units' gradients are
the narrow ones mapped, so they vanish with them; no L2 term, see docs/net2net.md) have a meaningful index.

    python analyses/net2net.py ROOT [--out DIR] [--dense-limit 3000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from surfacekit import store
from surfacekit.curvature import dense_hessian
from surfacekit.plots import AnalysisError, loss_label, one_line_errors, output_dir, results_path, save_figure, save_table

PROG = "net2net"
CURVES = ("narrow", "continued", "scratch")
POINTS = ("before", "after")
COLORS = {"narrow": "tab:blue", "continued": "tab:orange", "scratch": "tab:green", "before": "tab:blue",
          "after": "tab:red"}
NEAR_ZERO = 1e-8


def jobs(root: Path) -> dict[str, Path]:
    """The jobs of ROOT by role; AnalysisError when a required one is missing."""
    found = {}
    for name in CURVES + POINTS:
        path = root / name
        if path.exists():
            found[name] = results_path(path)
        elif name in CURVES:
            raise AnalysisError(f"{path}: missing; ROOT needs the jobs {list(CURVES)} (docs/net2net.md)")
    return found


def curves(found: dict[str, Path]) -> dict[str, dict[str, np.ndarray]]:
    """Learning curves by role; the continued job's epochs shifted by the narrow job's last epoch."""
    out = {name: store.load_curves(found[name]) for name in CURVES}
    out["continued"] = {**out["continued"], "epoch": out["continued"]["epoch"] + out["narrow"]["epoch"][-1]}
    return out


def eigenvalues(path: Path, member: int) -> np.ndarray:
    """All Hessian eigenvalues [P] (increasing) of one member's trained objective, dense, float64."""
    job = store.load_job(path)
    loss_fn, theta, _ = store.job_objective(job, member)
    return torch.linalg.eigvalsh(dense_hessian(loss_fn, theta)).numpy()


def point_rows(name: str, path: Path, dense_limit: int) -> tuple[list[dict], dict[int, np.ndarray]]:
    """Table rows of a 0-epoch job (its task=spectrum results) and its members' dense spectra."""
    members = store.load_members(path, analyses="none")
    try:
        spectrum = store.load_group(path, "spectrum")
    except store.ResultsError:
        raise AnalysisError(f"{path}: no task=spectrum analysis; run surfacekit task=spectrum source={path}") from None
    rows, spectra = [], {}
    for k, m in enumerate(members.member):
        if not bool(spectrum["analysed"][k]):
            continue
        row = {"job": name, "member": int(m), "num_params": int(members.num_params.iloc[k]),
               "final_train_loss": float(members.final_train_loss.iloc[k]),
               "grad_norm2": float(spectrum["grad_norm"][k]) ** 2, "index_count": int(spectrum["index_count"][k]),
               "index_fraction": float(spectrum["index_fraction"][k]), "index_method": str(spectrum["index_method"][k]),
               "index_threshold": float(spectrum["index_threshold"][k]), "lambda_max": float(spectrum["top"][k, 0]),
               "lambda_min": float(spectrum["bottom"][k, 0])}
        if row["num_params"] <= dense_limit:
            eig = eigenvalues(path, int(m))
            spectra[int(m)] = eig
            row.update(dense_index_count=int((eig < row["index_threshold"]).sum()), dense_lambda_min=float(eig[0]),
                       near_zero=int((np.abs(eig) <= NEAR_ZERO * float(np.abs(eig).max())).sum()))
        rows.append(row)
    return rows, spectra


def curve_rows(found: dict[str, Path], data: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Table rows of the narrow, continued and scratch jobs (the continued job's change at the transform)."""
    rows = []
    narrow, cont = data["narrow"], data["continued"]
    narrow_ids = [int(m) for m in store.load_members(found["narrow"], analyses="none").member]
    for name in CURVES:
        members = store.load_members(found[name], analyses="none")
        for k, m in enumerate(members.member):
            row = {"job": name, "member": int(m), "num_params": int(members.num_params.iloc[k]),
                   "epochs": float(data[name]["epoch"][-1]), "final_train_loss": float(data[name]["train_loss"][k, -1]),
                   "final_test_loss": float(data[name]["test_loss"][k, -1]),
                   "final_grad_norm2": float(data[name]["grad_norm"][k, -1]) ** 2}
            if name == "continued":
                source = int(members.source_member.iloc[k]) if "source_member" in members else int(m)
                j = narrow_ids.index(source)
                row["train_change_at_transform"] = float(cont["train_loss"][k, 0] - narrow["train_loss"][j, -1])
                row["test_change_at_transform"] = float(cont["test_loss"][k, 0] - narrow["test_loss"][j, -1])
            rows.append(row)
    return rows


def draw_curves(data: dict[str, dict[str, np.ndarray]], found: dict[str, Path]) -> plt.Figure:
    """Train and test loss against epochs: mean over members, band from min to max."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    models = {name: store.load_config(found[name])["model"] for name in CURVES}
    for ax, split in zip(axes, ("train_loss", "test_loss")):
        for name in CURVES:
            c = data[name]
            values = c[split]
            widths = models[name].get("widths") or [models[name]["width"]] * int(models[name]["depth"])
            ax.plot(c["epoch"], np.nanmean(values, axis=0), color=COLORS[name], label=f"{name} (widths {list(widths)})")
            ax.fill_between(c["epoch"], np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=COLORS[name], alpha=0.2)
        ax.axvline(data["narrow"]["epoch"][-1], color="0.5", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (continued: after the narrow job's)")
        ax.set_title(split.replace("_", " "))
    axes[0].set_ylabel(loss_label(found["narrow"], "loss"))
    axes[0].legend()
    return fig


def draw_spectra(spectra: dict[str, dict[int, np.ndarray]]) -> plt.Figure:
    """Every member's eigenvalues in increasing order against rank / P, symlog axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_member in spectra.items():
        for i, eig in enumerate(by_member.values()):
            ax.plot(np.arange(len(eig)) / len(eig), eig, color=COLORS[name], lw=1, alpha=0.8,
                    label=f"{name} (P = {len(eig)})" if i == 0 else None)
    scale = max(float(np.abs(e).max()) for by in spectra.values() for e in by.values())
    ax.set_yscale("symlog", linthresh=1e-6 * scale)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("eigenvalue rank / P")
    ax.set_ylabel("Hessian eigenvalue (trained objective)")
    ax.legend()
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="folder with the jobs narrow, continued, scratch (and before, after)")
    parser.add_argument("--out", help="output directory (default ROOT/analysis/net2net)")
    parser.add_argument("--dense-limit", type=int, default=3000,
                        help="largest P whose dense Hessian spectrum is drawn (P HVPs each; default 3000)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise AnalysisError(f"{args.root}: not a directory")
    found = jobs(args.root)
    data = curves(found)
    out = output_dir(args.root, PROG, args.out)
    written = save_figure(draw_curves(data, found), out, "net2net_curves")
    rows = curve_rows(found, data)
    spectra = {}
    for name in POINTS:
        if name in found:
            more, spectra[name] = point_rows(name, found[name], args.dense_limit)
            rows += more
    if any(spectra.values()):
        written += save_figure(draw_spectra({k: v for k, v in spectra.items() if v}), out, "net2net_spectrum")
    table = pd.DataFrame(rows)
    written += save_table(table, out, "net2net")
    print(table.to_string(index=False, float_format="%.4g"))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
