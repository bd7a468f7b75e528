"""``task=critical``: critical-point finders started from stored training trajectories.

    surfacekit task=critical source=PATH [critical.starts=5 critical.finders=[newton_mr]]

``source`` is a job's results file (or run directory) trained with ``trainer.snapshots=true``, or a
sweep directory. For each chosen member, start points are drawn from ``/trajectory/theta``
uniformly in ``/curves/train_loss`` (each distinct trajectory point at most once: a warning says
when the trajectory has fewer distinct points than ``critical.starts``); diverged members are
skipped with a warning. Every configured finder runs from each start in float64 on the full
training set and the job's trained objective, and every endpoint is classified (critical,
asymptotic, gradient-flat or rejected) and indexed: while the index takes eigvalsh (P <= 4,000 and
the memory allows), the Hessians of a member's endpoints are assembled together through the affine
first layer (h + P - h d backward passes each instead of P products) and diagonalised one by one;
otherwise each endpoint by the inertia or the Lanczos count. A unit is one finder from every start
of one member, saved as it finishes (a rerun resumes).
Written to ``SOURCE/analyses/critical-HASH/critical.h5``, one group per finder and job::

    /jobs/<job>/critical/<finder>/{member, start_eval, start_step, start_loss, loss, start_grad_norm2, grad_norm2,
                        grad_norm2_relative, iterations, hvps, grads, accepted, accepted_absolute,
                        acceptance_ratio, step_ratio, newton_step, grad_norm_scaled, kernel_component,
                        gradient_flat, status,
                        flat_ratio, spectral_norm, index_count, index_fraction, index_threshold,
                        index_relative_threshold, index_method, index_at_least, stop, solve_residual, theta}

all [n] (``theta`` [n, P]; ``solve_residual``: the median relative solve residual ``||H d + g|| / ||g||``
of Newton-type finders, nan for others; ``kernel_component``: the part of g the last Newton-MR step
could not remove). ``accepted`` follows ``critical.criterion`` (scale-free by default:
``||g|| <= rtol ||g_start|| + htol ||H||_2``, ``acceptance_ratio`` <= 1, and the point test
``step_ratio = ||g|| / (||H||_2 max(||theta||, 1)) <= critical.stol``) and is false for
"asymptotic" endpoints (the gradient vanished on the way to an infimum at infinity: the finder ran
outward and the Newton step ``newton_step = ||H^+ g||`` stayed above ``stol max(||theta||, 1)``; nan
where that test did not need it); ``accepted_absolute`` is
``||g||^2 < critical.cutoff``. See docs/critical.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit.critical import find, sample_uniform_in_loss
from surfacekit.curvature import dense_index, index, index_method
from surfacekit.jobs import warn
from surfacekit.seeds import derive_seed
from surfacekit.store import ResultsError, _open
from surfacekit.tasks import _analysis

GROUP = "critical"


def plan(ref, members: pd.DataFrame, s: dict) -> dict[str, tuple[int, int, str]]:
    """Units (member, trajectory evaluation, finder), start points drawn uniformly in training loss."""
    f, g = _open(ref)
    with f:
        if "trajectory" not in g or "theta" not in g["trajectory"]:
            raise ResultsError(f"{ref.file}: job {ref.name!r} has no /trajectory to start from; "
                               "train it with trainer.snapshots=true")
        train_loss = g["curves"]["train_loss"][()]
    chosen = _analysis.select_members(members, s.get("members"), "critical.members", ref.name)
    positions = _analysis.member_positions(members)
    units = {}
    for m in chosen:
        drawn = sample_uniform_in_loss(train_loss[positions[m]], int(s["starts"]), seed=derive_seed(int(s["seed"]), m))
        # the finders are deterministic: a repeated start would repeat its run
        evals = drawn[np.sort(np.unique(drawn, return_index=True)[1])]
        if len(evals) < len(drawn):
            warn(f"critical: job {ref.name} member {m}: critical.starts={len(drawn)} but the draw met only "
                 f"{len(evals)} distinct points of its {train_loss.shape[-1]}-point trajectory; each is used once")
        if len(evals):
            for finder in s["finders"]:
                units[f"member-{m:06d}-{finder}"] = (m, [int(e) for e in evals], finder)
    return units


def compute(job, unit: tuple[int, list[int], str], s: dict, ctx: dict) -> dict[str, Any]:
    """One finder from every start of one member; the endpoints' indices together (:func:`endpoint_indices`).
    Rows stacked on a leading start axis."""
    member, evals, finder = unit
    loss_fn, _ = _analysis.member_objective(job, member, ctx)
    f, g = _open(job.ref)
    with f:
        steps = [int(g["trajectory"]["step"][e]) for e in evals]
        position = _analysis.member_positions(job.members)[member]
        starts = [np.asarray(g["trajectory"]["theta"][e, position], dtype=np.float64) for e in evals]
    points = [find(loss_fn, torch.from_numpy(start).to(job.data.x_train.device), finder, criterion=str(s["criterion"]),
                   rtol=float(s["rtol"]), htol=float(s["htol"]), cutoff=float(s["cutoff"]),
                   flat_threshold=float(s["flat_threshold"]), stol=float(s["stol"]), compute_index=False,
                   **(s.get("options", {}).get(finder) or {}))
              for start in starts]
    finite = [i for i, p in enumerate(points) if math.isfinite(p.loss) and math.isfinite(p.grad_norm2)]
    if s["compute_index"] and finite:
        for i, idx in zip(finite, endpoint_indices(job, member, torch.stack([points[i].theta for i in finite]),
                                                   s["index"], ctx)):
            points[i] = dataclasses.replace(points[i], index=idx)
    rows = [_row(p, member, e, step, bool(s.get("store_theta", True))) for p, e, step in zip(points, evals, steps)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def endpoint_indices(job, member: int, points: torch.Tensor, options: dict, ctx: dict) -> list:
    """The exact indices (:class:`~surfacekit.curvature.IndexResult`) of a member's endpoints ``points``
    [n, P]. While ``index.method`` (auto or dense) takes eigvalsh of the dense Hessian, the Hessians
    of as many endpoints as the memory allows are assembled together (through the affine first layer
    where the model has one) and diagonalised one by one (:func:`surfacekit.curvature.population_spectrum`;
    the same numbers as one :func:`surfacekit.curvature.index` call each). Otherwise one
    :func:`surfacekit.curvature.index` call per endpoint (inertia or Lanczos), its dense Hessian
    assembled through the same structure."""
    cfg = ctx["cfg"]
    limit = _analysis.memory_limit(cfg)
    opts = {key: options[key] for key in ("threshold", "relative_threshold", "method", "dense_limit", "cap")}
    n, size = points.shape
    method = index_method(size, str(cfg.device), opts["dense_limit"], limit) if opts["method"] == "auto" else opts["method"]
    if method != "dense":
        loss_fn, _ = _analysis.member_objective(job, member, ctx)
        structure = _analysis.population_objective(job, [member], ctx).affine_input
        return [index(loss_fn, theta, **{**opts, "structure": structure, "memory_limit": limit}) for theta in points]
    # row b: this member's objective (its own batch-norm statistics) at points[b]
    spectra = _analysis.dense_spectra(job, [member] * n, ctx, threshold=opts["threshold"],
                                      relative_threshold=float(opts["relative_threshold"]), points=points)
    return [dense_index(res.spectrum.eigenvalues[b], opts["threshold"], float(opts["relative_threshold"]), res.passes,
                        check=False) for res, b in spectra]


def _row(p, member: int, start_eval: int, start_step: int, keep_theta: bool) -> dict[str, Any]:
    idx = p.index
    row = {
        "member": member, "start_eval": start_eval, "start_step": start_step, "start_loss": p.start_loss,
        "loss": p.loss, "start_grad_norm2": p.start_grad_norm2, "grad_norm2": p.grad_norm2,
        "grad_norm2_relative": p.grad_norm2_relative, "iterations": p.iterations, "hvps": p.num_hvps,
        "grads": p.num_grads, "accepted": p.accepted, "accepted_absolute": p.accepted_absolute,
        "acceptance_ratio": p.acceptance_ratio, "step_ratio": p.step_ratio, "newton_step": p.newton_step,
        "grad_norm_scaled": p.grad_norm_scaled,
        "kernel_component": p.kernel_component, "gradient_flat": p.gradient_flat, "status": p.status,
        "flat_ratio": p.flat_ratio, "spectral_norm": p.spectral_norm,
        "index_count": -1 if idx is None else idx.count, "index_fraction": np.nan if idx is None else idx.fraction,
        "index_threshold": np.nan if idx is None else idx.threshold,
        "index_relative_threshold": np.nan if idx is None else idx.relative_threshold,
        "index_method": "" if idx is None else idx.method, "index_at_least": False if idx is None else idx.at_least,
        "stop": p.stop,
        "solve_residual": float(np.median(p.solve_residuals)) if p.solve_residuals else np.nan,
    }
    if keep_theta:
        row["theta"] = p.theta.cpu().numpy()
    return {k: np.asarray(v) for k, v in row.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    groups: dict[str, dict] = {}
    dims: dict[str, str] = {}
    for finder in s["finders"]:
        mine = [rows[key] for key in sorted(rows) if key.endswith(f"-{finder}")]
        if not mine:
            continue
        name = f"{GROUP}/{finder}"
        groups[name] = {key: np.concatenate([r[key] for r in mine]) for key in mine[0]}
        dims[name] = "start"
        dims[f"{name}/theta"] = "start,param"
    return groups, dims


def summary(groups: dict) -> str:
    """One line per finder: acceptance, ||g||^2 quantiles over rejected runs, asymptotic and gradient-flat counts."""
    lines = []
    for name, cols in groups.items():
        n = len(cols["accepted"])
        acc = cols["accepted"].astype(bool)
        rej = cols["grad_norm2"][~acc]
        flat = cols["gradient_flat"].astype(bool)
        asymptotic = cols["status"].astype(str) == "asymptotic"
        quant = (" ".join(f"q{int(q * 100)}={v:.2e}" for q, v in zip((0.1, 0.5, 0.9), np.quantile(rej, [0.1, 0.5, 0.9])))
                 if len(rej) else "none rejected")
        lines.append(f"  {name.split('/', 1)[1]:12s} accepted {acc.sum()}/{n} ({acc.mean():.1%}); ||g||^2 of rejected: "
                     f"{quant}; asymptotic {asymptotic.sum()}/{n}; gradient-flat {flat.sum()}/{n} ({flat.mean():.1%} of all, "
                     f"{flat.sum() / max(1, (~acc).sum()):.1%} of rejected)")
    return "\n".join(lines)


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Run the finders on every job of ``source``; write ``out_dir/critical.h5``."""
    return _analysis.run(TASK, cfg, out_dir)
