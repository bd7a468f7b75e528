"""``task=spectrum``: the Hessian spectrum of every network of a results file or sweep.

    surfacekit task=spectrum source=SWEEP_DIR [spectrum.members=[0,1] spectrum.top_k=10 ...]

Per member, in float64 on the full training set and the job's trained objective (``objective``,
``bn_mode``): top-k and bottom-k eigenvalues (with residuals, multiplicities and a completion
certificate: the extreme eigenvalue of H without the returned ones), the index (exact, with method,
threshold and certificate), the trace and the spectral density. Two paths, chosen per job:

* **dense** (``index_method`` auto while the dense Hessian fits and P <= 4,000, or ``dense``): the
  Hessians of ``batch_size`` members at once (``surfacekit.curvature.population``: assembled through
  the structure of the affine first layer, or from batched products), one ``eigvalsh`` each; every
  number is exact and read off the eigenvalues: top-k, bottom-k, the index, the trace (the sum of
  the eigenvalues) and the density (every eigenvalue, weight 1/P). No Lanczos at all.
* **per member** (larger P, or ``index_method`` inertia, lanczos or estimate): certified block
  Lanczos for the extreme eigenvalues, Hutchinson's trace, the SLQ density, and the index by the
  inertia of the dense Hessian (while it fits), by the certified Lanczos count, or, with
  ``index_method=estimate`` or where the Lanczos count stopped at ``index_cap``, an estimate with its
  interval (``index_estimate*``, never stored as ``index_count``).

The method behind every number is stored beside it (``top_method``, ``bottom_method``,
``index_method``, ``trace_method``, ``density_method``, ``dense_assembly``). Written to
``SOURCE/analyses/spectrum-HASH/spectrum.h5`` as ``/jobs/<job>/spectrum/...`` [K, ...] (members in
the source's order; members not analysed hold NaN, -1, "" or False and ``analysed`` False) and
``/jobs/<job>/members`` columns (``spectrum_loss`` and ``spectrum_grad_norm`` of the analysed
objective, ``index_count``, ``index_fraction``, ``lambda_max``, ``lambda_min``, ``trace``) that
``store.load_members`` joins. Every unit (a batch of members on the dense path, one member
otherwise) is saved as it finishes: a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit import curvature
from surfacekit.config import ConfigError
from surfacekit.curvature.estimate import count_estimate
from surfacekit.curvature.memory import available_bytes, dense_bytes, gib
from surfacekit.jobs import warn
from surfacekit.store import ResultsError
from surfacekit.tasks import _analysis

GROUP = "spectrum"
FIELDS = ["loss", "grad_norm", "top", "top_residual", "top_converged", "top_multiplicity", "top_certificate",
          "bottom", "bottom_residual", "bottom_converged", "bottom_multiplicity", "bottom_certificate", "index_count",
          "index_fraction", "index_at_least", "index_threshold", "index_certificate", "index_certificate_hvps",
          "index_estimate", "index_estimate_low", "index_estimate_high", "index_estimate_resolution", "trace",
          "trace_stderr", "density_nodes", "density_weights", "hvps"]
METHODS = ["top_method", "bottom_method", "index_method", "trace_method", "density_method", "dense_assembly"]
ESTIMATE_CONFIDENCE = 0.95
NOT_FINITE = "the loss or gradient at the stored parameters is not finite (NaN or inf)"


def job_path(size: int, s: Mapping[str, Any], device: str, limit: int | None) -> str:
    """How a job of P = ``size`` is analysed: "dense" (batched exact spectra) or "member" (one member at a
    time; the index by ``index_method``). Raises ConfigError when ``index_method`` is dense or inertia
    and P is above ``dense_limit`` or the dense Hessian does not fit (with the estimate)."""
    method = s["index_method"]
    if method in ("dense", "inertia"):
        largest = s.get("dense_limit")
        if largest is not None and size > int(largest):
            raise ConfigError(f"spectrum.index_method={method} is invalid here: P = {size:,} is above "
                              f"spectrum.dense_limit={largest}; raise the limit or use index_method=auto or lanczos")
        free = available_bytes(device) if limit is None else limit
        if dense_bytes(size) > free:
            raise ConfigError(f"spectrum.index_method={method} is invalid here: P = {size:,} needs about "
                              f"{gib(dense_bytes(size))} for the dense Hessian and its working copy (16 P^2 bytes), "
                              f"more than the {gib(free)} {'free' if limit is None else 'of memory_limit_gb'}; use "
                              "index_method=auto or lanczos")
        return "dense" if method == "dense" else "member"
    if method == "auto":
        return "dense" if curvature.index_method(size, device, s.get("dense_limit"), limit) == "dense" else "member"
    return "member"


def plan(ref, members: pd.DataFrame, s: dict, cfg: DictConfig) -> dict[str, dict]:
    """Units of a job: batches of ``batch_size`` members on the dense path, single members otherwise
    (the path is part of the unit's key, so a rerun that decides otherwise recomputes)."""
    ids = _analysis.select_members(members, s.get("members"), "spectrum.members", ref.name)
    size = _analysis.parameter_count(ref)
    for key in ("top_k", "bottom_k"):
        if int(s[key]) > size:
            raise ConfigError(f"spectrum.{key}={s[key]} is invalid: job {ref.name} has P={size} parameters")
    path = job_path(size, s, str(cfg.device), _analysis.memory_limit(cfg))
    size = int(s["batch_size"]) if path == "dense" else 1
    batches = [ids[i : i + size] for i in range(0, len(ids), size)]
    return {f"{path}-{b[0]:06d}-{b[-1]:06d}": {"path": path, "members": b} for b in batches}


def compute(job, unit: dict, s: dict, ctx: dict) -> dict[str, Any]:
    """The rows of the unit's members, stacked on a leading member axis (``member`` holds their ids).
    Members whose loss or gradient is not finite at their parameters get no row (warned, stored)."""
    members = finite_members(job, unit["members"], ctx)
    lost = [m for m in unit["members"] if m not in members]
    if lost:
        warn(f"spectrum: job {job.name}: member(s) {lost} not analysed (analysed=False): {NOT_FINITE}")
    if not members:
        return {"member": np.zeros(0, dtype=np.int64)}
    if unit["path"] == "dense":
        rows = dense_rows(job, members, s, ctx)
    else:
        rows = []
        for member in members:
            loss_fn, theta = _analysis.member_objective(job, member, ctx)
            structure = None
            if s["index_method"] in ("auto", "inertia"):
                structure = _analysis.population_objective(job, [member], ctx).affine_input
            rows.append(member_spectrum(loss_fn, theta, s, structure, _analysis.memory_limit(ctx["cfg"])))
    out = {name: np.stack([_analysis.to_numpy(r[name]) for r in rows]) for name in FIELDS + METHODS}
    out["member"] = np.asarray(members, dtype=np.int64)
    return out


def finite_members(job, members: list[int], ctx: dict) -> list[int]:
    """The ``members`` whose loss and gradient are finite at their parameters (one population gradient):
    a spectrum exists only there (a NaN parameter of a member not flagged diverged, or an overflow)."""
    pop = _analysis.population_objective(job, members, ctx)
    point = pop.thetas.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        losses = pop.losses_fn(point)
        (grad,) = torch.autograd.grad(losses.sum(), point, allow_unused=True)
    ok = losses.detach().isfinite()
    if grad is not None:
        ok &= grad.isfinite().all(dim=1)
    return [m for m, good in zip(members, ok.tolist()) if good]


def dense_rows(job, members: list[int], s: Mapping[str, Any], ctx: dict) -> list[dict[str, Any]]:
    """Exact spectra of ``members`` from their dense Hessians, as many at once as the memory allows."""
    return [_dense_row(res, b) for res, b in _analysis.dense_spectra(
        job, members, ctx, int(s["top_k"]), int(s["bottom_k"]), s.get("threshold"), float(s["relative_threshold"]))]


def _dense_row(res, b: int) -> dict[str, Any]:
    sp, idx = res.spectrum, res.spectrum.index
    p = sp.eigenvalues.shape[1]
    k_top, k_bottom = sp.top.shape[1], sp.bottom.shape[1]
    count = int(idx.count[b])
    nan = float("nan")
    return {
        "loss": float(res.loss[b]), "grad_norm": float(res.grad_norm[b]),
        "top": sp.top[b], "top_residual": np.zeros(k_top), "top_converged": True,
        "top_multiplicity": sp.top_multiplicity[b], "top_certificate": float(sp.top_certificate[b]),
        "bottom": sp.bottom[b], "bottom_residual": np.zeros(k_bottom), "bottom_converged": True,
        "bottom_multiplicity": sp.bottom_multiplicity[b], "bottom_certificate": float(sp.bottom_certificate[b]),
        "index_count": count, "index_fraction": count / p, "index_at_least": False,
        "index_threshold": float(idx.threshold[b]), "index_certificate": float(idx.certificate[b]),
        "index_certificate_hvps": 0, "index_estimate": nan, "index_estimate_low": nan, "index_estimate_high": nan,
        "index_estimate_resolution": nan, "trace": float(sp.trace[b]), "trace_stderr": 0.0,
        "density_nodes": sp.eigenvalues[b][None], "density_weights": torch.full((1, p), 1.0 / p, dtype=torch.float64),
        "hvps": res.passes, "top_method": "dense", "bottom_method": "dense", "index_method": "dense",
        "trace_method": "dense", "density_method": "dense", "dense_assembly": res.assembly,
    }


def member_spectrum(loss_fn, theta: torch.Tensor, cfg: Mapping[str, Any], structure=None,
                    memory_limit: int | None = None) -> dict[str, Any]:
    """Loss, gradient norm, extreme eigenvalues, index (or its estimate), trace and density of one
    network at ``theta`` [P] by Lanczos, Hutchinson and SLQ (the index as ``index_method`` says;
    ``structure``: the loss's AffineInput, for a cheaper dense Hessian on the inertia path)."""
    point = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss_fn(point)
        (grad,) = torch.autograd.grad(value, point)
    kw = dict(tol=float(cfg["tol"]), max_steps=int(cfg["max_steps"]), on_fail="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvature.ConvergenceWarning)
        top = curvature.extreme_eigenvalues(loss_fn, theta, int(cfg["top_k"]), "largest", **kw)
        bottom = curvature.extreme_eigenvalues(loss_fn, theta, int(cfg["bottom_k"]), "smallest", **kw)
    trace = curvature.hutchinson_trace(loss_fn, theta, num_probes=int(cfg["trace_probes"]))
    density = curvature.spectral_density(loss_fn, theta, int(cfg["density_probes"]), int(cfg["density_steps"]))
    p = theta.numel()
    nan = float("nan")
    row = {"index_count": -1, "index_fraction": nan, "index_at_least": False, "index_certificate": nan,
           "index_certificate_hvps": 0, "dense_assembly": "", "index_method": "estimate"}
    hvps = top.num_hvps + bottom.num_hvps + trace.num_hvps + density.num_hvps
    if cfg["index_method"] == "estimate":
        scale = max(abs(float(top.eigenvalues[0])), abs(float(bottom.eigenvalues[0])))
        tau = float(cfg["threshold"]) if cfg.get("threshold") is not None else -float(cfg["relative_threshold"]) * scale
    else:
        idx = curvature.index(loss_fn, theta, cfg.get("threshold"), relative_threshold=float(cfg["relative_threshold"]),
                              method=cfg["index_method"], dense_limit=cfg.get("dense_limit"), cap=int(cfg["index_cap"]),
                              structure=structure, memory_limit=memory_limit)
        tau = idx.threshold
        hvps += idx.num_hvps
        row.update(index_count=idx.count, index_fraction=idx.fraction, index_at_least=idx.at_least,
                   index_certificate=idx.certificate, index_certificate_hvps=idx.certificate_hvps,
                   index_method=idx.method,
                   dense_assembly=("affine_input" if structure is not None else "hvp") if idx.method != "lanczos" else "")
    estimate = None
    if cfg["index_method"] == "estimate" or row["index_at_least"]:
        estimate = count_estimate(density, p, tau, ESTIMATE_CONFIDENCE) if density.nodes.shape[0] >= 2 else None
    row.update(
        index_threshold=tau,
        index_estimate=nan if estimate is None else estimate.estimate,
        index_estimate_low=nan if estimate is None else estimate.low,
        index_estimate_high=nan if estimate is None else estimate.high,
        index_estimate_resolution=nan if estimate is None else estimate.resolution,
    )
    return {
        "loss": float(value.detach()), "grad_norm": float(grad.norm()),
        "top": top.eigenvalues, "top_residual": top.residuals, "top_converged": top.converged,
        "top_multiplicity": top.multiplicity, "top_certificate": top.certificate,
        "bottom": bottom.eigenvalues, "bottom_residual": bottom.residuals, "bottom_converged": bottom.converged,
        "bottom_multiplicity": bottom.multiplicity, "bottom_certificate": bottom.certificate,
        **row,
        "trace": trace.estimate, "trace_stderr": trace.stderr,
        "density_nodes": density.nodes, "density_weights": density.weights,
        "hvps": hvps, "top_method": "lanczos", "bottom_method": "lanczos", "trace_method": "hutchinson",
        "density_method": "slq",
    }


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    """The job's groups from its units' rows (members without a row: ``analysed`` False).

    Raises:
        ResultsError: no selected member could be analysed (none finite: :func:`finite_members`).
    """
    k = len(members)
    by_pos = _analysis.batch_rows_by_position(members, rows)
    if not by_pos:
        raise ResultsError(f"spectrum: job {ref.name}: no member could be analysed: {NOT_FINITE}")
    arrays = _analysis.member_arrays(by_pos, FIELDS, k)
    arrays["analysed"] = np.isin(np.arange(k), list(by_pos))
    arrays.update(_analysis.member_arrays(by_pos, METHODS, k, strings=METHODS))
    arrays["index_estimate_confidence"] = np.full(k, ESTIMATE_CONFIDENCE)
    converged = arrays["top_converged"] & arrays["bottom_converged"]
    _warn_flagged(ref.name, members["member"].to_numpy(), arrays, converged)
    columns = {"member": members["member"].to_numpy(), "analysed": arrays["analysed"], "spectrum_loss": arrays["loss"],
               "spectrum_grad_norm": arrays["grad_norm"], "index_count": arrays["index_count"],
               "index_fraction": arrays["index_fraction"], "index_at_least": arrays["index_at_least"],
               "index_threshold": arrays["index_threshold"], "index_method": arrays["index_method"],
               "lambda_max": arrays["top"][:, 0], "lambda_min": arrays["bottom"][:, 0],
               "spectrum_converged": converged, "trace": arrays["trace"]}
    dims = {GROUP: "member", "members": "member", f"{GROUP}/density_nodes": "member,probe,step",
            f"{GROUP}/density_weights": "member,probe,step",
            **{f"{GROUP}/{name}": "member,k" for name in ("top", "bottom", "top_residual", "bottom_residual",
                                                             "top_multiplicity", "bottom_multiplicity")}}
    return {GROUP: arrays, "members": columns}, dims


def _warn_flagged(job: str, ids: np.ndarray, a: dict, converged: np.ndarray) -> None:
    """Stored warnings for numbers that are not what their column names say: extreme eigenvalues whose
    Lanczos run did not converge (approximate) and index counts that hit ``index_cap`` (lower bounds)."""
    ok = a["analysed"]
    loose = ids[ok & ~converged]
    if len(loose):
        worst = np.nanmax(np.concatenate([a["top_residual"][ok & ~converged].ravel(),
                                          a["bottom_residual"][ok & ~converged].ravel()]))
        warn(f"spectrum: job {job}: the extreme eigenvalues of member(s) {loose.tolist()} did not converge "
             f"(largest residual {worst:.3g}): approximate, flagged spectrum_converged=False; raise spectrum.max_steps")
    capped = ids[ok & a["index_at_least"]]
    if len(capped):
        warn(f"spectrum: job {job}: the index of member(s) {capped.tolist()} reached spectrum.index_cap: a lower bound "
             f"(index_at_least=True; index_estimate holds the density estimate)")


def summary(groups: dict) -> str:
    a = groups[GROUP]
    ok = a["analysed"]
    methods = ", ".join(f"{m}: {int(n)}" for m, n in zip(*np.unique(a["index_method"][ok], return_counts=True)))
    exact = ok & (a["index_count"] >= 0) & ~a["index_at_least"]
    fraction = f"{np.nanmean(a['index_fraction'][exact]):.4g}" if exact.any() else "n/a"
    flags = []
    if (ok & a["index_at_least"]).any():
        flags.append(f"{int((ok & a['index_at_least']).sum())} index lower bounds left out of the mean")
    loose = ok & ~(a["top_converged"] & a["bottom_converged"])
    if loose.any():
        flags.append(f"{int(loose.sum())} with unconverged extreme eigenvalues")
    return (f"  {int(ok.sum())} members; lambda_max mean {np.nanmean(a['top'][ok, 0]):.4g}, lambda_min mean "
            f"{np.nanmean(a['bottom'][ok, 0]):.4g}, index fraction mean {fraction} (index by {methods})"
            + (f"; {'; '.join(flags)}" if flags else ""))


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Write the spectra of every member of ``source`` to ``out_dir/spectrum.h5``."""
    return _analysis.run(dataclasses.replace(TASK, plan=functools.partial(TASK.plan, cfg=cfg)), cfg, out_dir)
