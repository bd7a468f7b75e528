"""``task=spectrum``: the Hessian spectrum of every network of a results file or sweep.

    surfacekit task=spectrum source=SWEEP_DIR [spectrum.members=[0,1] spectrum.top_k=10 ...]

Per member, in float64 on the full training set and the job's trained objective (``objective``,
``bn_mode``): top-k and bottom-k eigenvalues (block Lanczos, with residuals, multiplicities and a
completion certificate: the extreme eigenvalue of H without the returned vectors), the index
(exact, with method, threshold and certificate), Hutchinson's trace and the SLQ density. Written to
``SOURCE/analyses/spectrum-HASH/spectrum.h5`` as ``/jobs/<job>/spectrum/...`` [K, ...] (members in
the source's order; members not analysed hold NaN, -1 or False and ``analysed`` False) and
``/jobs/<job>/members`` columns (``spectrum_loss`` and ``spectrum_grad_norm`` of the analysed
objective, ``index_count``, ``index_fraction``, ``lambda_max``, ``lambda_min``, ``trace``) that
``store.load_members`` joins. Every member is saved as it finishes: a rerun resumes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit import curvature
from surfacekit.tasks import _analysis

GROUP = "spectrum"
FIELDS = ["loss", "grad_norm", "top", "top_residual", "top_converged", "top_multiplicity", "top_certificate",
          "bottom", "bottom_residual", "bottom_converged", "bottom_multiplicity", "bottom_certificate", "index_count",
          "index_fraction", "index_at_least", "index_threshold", "index_certificate", "index_certificate_hvps", "trace",
          "trace_stderr", "density_nodes", "density_weights", "hvps"]


def member_spectrum(loss_fn, theta: torch.Tensor, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Loss, gradient norm, extreme eigenvalues, index, trace and density of one network at ``theta`` [P]."""
    point = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss_fn(point)
        (grad,) = torch.autograd.grad(value, point)
    kw = dict(tol=float(cfg["tol"]), max_steps=int(cfg["max_steps"]), on_fail="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvature.ConvergenceWarning)
        top = curvature.extreme_eigenvalues(loss_fn, theta, int(cfg["top_k"]), "largest", **kw)
        bottom = curvature.extreme_eigenvalues(loss_fn, theta, int(cfg["bottom_k"]), "smallest", **kw)
    idx = curvature.index(loss_fn, theta, cfg.get("threshold"), relative_threshold=float(cfg["relative_threshold"]),
                          method=cfg["index_method"], dense_limit=int(cfg["dense_limit"]), cap=int(cfg["index_cap"]))
    trace = curvature.hutchinson_trace(loss_fn, theta, num_probes=int(cfg["trace_probes"]))
    density = curvature.spectral_density(loss_fn, theta, int(cfg["density_probes"]), int(cfg["density_steps"]))
    return {
        "loss": float(value.detach()), "grad_norm": float(grad.norm()),
        "top": top.eigenvalues, "top_residual": top.residuals, "top_converged": top.converged,
        "top_multiplicity": top.multiplicity, "top_certificate": top.certificate,
        "bottom": bottom.eigenvalues, "bottom_residual": bottom.residuals, "bottom_converged": bottom.converged,
        "bottom_multiplicity": bottom.multiplicity, "bottom_certificate": bottom.certificate,
        "index_count": idx.count, "index_fraction": idx.fraction, "index_at_least": idx.at_least,
        "index_threshold": idx.threshold, "index_method": idx.method, "index_certificate": idx.certificate,
        "index_certificate_hvps": idx.certificate_hvps,
        "trace": trace.estimate, "trace_stderr": trace.stderr,
        "density_nodes": density.nodes, "density_weights": density.weights,
        "hvps": top.num_hvps + bottom.num_hvps + idx.num_hvps + trace.num_hvps + density.num_hvps,
    }


def plan(ref, members: pd.DataFrame, s: dict) -> dict[str, int]:
    return {f"member-{m:06d}": m for m in _analysis.select_members(members, s.get("members"), "spectrum.members")}


def compute(job, member: int, s: dict, ctx: dict) -> dict[str, Any]:
    loss_fn, theta = _analysis.member_objective(job, member, ctx)
    row = member_spectrum(loss_fn, theta, s)
    return {k: _analysis.to_numpy(v) for k, v in row.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    k = len(members)
    positions = _analysis.member_positions(members)
    by_pos = {positions[int(key.split("-")[1])]: row for key, row in rows.items()}
    arrays: dict[str, np.ndarray] = {}
    for name in FIELDS:
        first = np.asarray(next(iter(by_pos.values()))[name]) if by_pos else np.zeros(0)
        if first.dtype == bool:
            out = np.zeros((k, *first.shape), dtype=bool)
        elif np.issubdtype(first.dtype, np.integer):
            out = np.full((k, *first.shape), -1, dtype=np.int64)
        else:
            out = np.full((k, *first.shape), np.nan)
        for p, row in by_pos.items():
            out[p] = row[name]
        arrays[name] = out
    arrays["analysed"] = np.isin(np.arange(k), list(by_pos))
    arrays["index_method"] = np.array([str(by_pos[p]["index_method"]) if p in by_pos else "" for p in range(k)])
    columns = {"member": members["member"].to_numpy(), "analysed": arrays["analysed"], "spectrum_loss": arrays["loss"],
               "spectrum_grad_norm": arrays["grad_norm"], "index_count": arrays["index_count"],
               "index_fraction": arrays["index_fraction"], "lambda_max": arrays["top"][:, 0],
               "lambda_min": arrays["bottom"][:, 0], "trace": arrays["trace"]}
    dims = {GROUP: "member", "members": "member", f"{GROUP}/density_nodes": "member,probe,step",
            f"{GROUP}/density_weights": "member,probe,step",
            **{f"{GROUP}/{name}": "member,k" for name in ("top", "bottom", "top_residual", "bottom_residual",
                                                             "top_multiplicity", "bottom_multiplicity")}}
    return {GROUP: arrays, "members": columns}, dims


def summary(groups: dict) -> str:
    a = groups[GROUP]
    ok = a["analysed"]
    return (f"  {int(ok.sum())} members; lambda_max mean {np.nanmean(a['top'][ok, 0]):.4g}, lambda_min mean "
            f"{np.nanmean(a['bottom'][ok, 0]):.4g}, index fraction mean {np.nanmean(a['index_fraction'][ok]):.4g}")


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Write the spectra of every member of ``source`` to ``out_dir/spectrum.h5``."""
    return _analysis.run(TASK, cfg, out_dir)
