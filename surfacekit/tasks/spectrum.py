"""``task=spectrum``: Hessian spectrum of every network in a results file (or every job of a sweep).

For each member, in float64 on the full training set: top-k and bottom-k eigenvalues (Lanczos, with
residuals), the index (exact, with method and threshold), Hutchinson's trace and the SLQ density.
Results go into the source file with ``store.add_groups`` (copy, write, rename: a killed job leaves
the source intact) under ``/spectrum`` and as columns of ``/members``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from surfacekit import curvature
from surfacekit.config import ConfigError, resolve_device
from surfacekit.population import flatten, member_loss_fn
from surfacekit.store import add_groups, load_members
from surfacekit.tasks._common import load_job, source_files

GROUP = "spectrum"


def member_spectrum(loss_fn, theta: torch.Tensor, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Extreme eigenvalues, index, trace and density of one network at ``theta`` [P]."""
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
        "top": top.eigenvalues, "top_residual": top.residuals, "top_converged": top.converged,
        "bottom": bottom.eigenvalues, "bottom_residual": bottom.residuals, "bottom_converged": bottom.converged,
        "index_count": idx.count, "index_fraction": idx.fraction, "index_at_least": idx.at_least,
        "index_threshold": idx.threshold, "index_method": idx.method,
        "trace": trace.estimate, "trace_stderr": trace.stderr,
        "density_nodes": density.nodes, "density_weights": density.weights,
        "hvps": top.num_hvps + bottom.num_hvps + idx.num_hvps + trace.num_hvps + density.num_hvps,
    }


def _stack(rows: list[dict[str, Any]], key: str, k: int, selected: list[int]) -> np.ndarray:
    """Stack one field over the selected members into [K, ...]; others get NaN, False or -1."""
    values = [np.asarray(r[key].cpu() if torch.is_tensor(r[key]) else r[key]) for r in rows]
    first = values[0]
    if first.dtype == bool:
        out = np.zeros((k, *first.shape), dtype=bool)
    elif np.issubdtype(first.dtype, np.integer):
        out = np.full((k, *first.shape), -1, dtype=np.int64)
    else:
        out = np.full((k, *first.shape), np.nan)
    for member, value in zip(selected, values):
        out[member] = value
    return out


def spectrum_for_file(path: Path, cfg: Mapping[str, Any], device: str = "cpu", progress: bool = True) -> dict[str, np.ndarray]:
    """Compute the spectrum of the selected members of one job file and add it to the file."""
    job = load_job(path, resolve_device(device))
    members = load_members(path)
    k = len(members)
    wanted = cfg.get("members")
    if wanted is not None and any(not 0 <= m < k for m in wanted):
        raise ConfigError(f"spectrum.members={list(wanted)} is invalid: members of {path} are 0..{k - 1}")
    selected = [m for m in (range(k) if wanted is None else wanted) if not members["diverged"].iloc[m]]
    if not selected:
        raise ConfigError(f"spectrum: no members to analyse in {path} (all selected members diverged)")
    d = job.data
    loss_fn = member_loss_fn(job.spec, d.x_train, d.y_train, job.cfg.model.loss, job.cfg.get("chunk_size"))
    thetas = flatten(job.params)
    rows = [member_spectrum(loss_fn, thetas[m], cfg) for m in tqdm(selected, desc=f"spectrum {path.parent.name}",
                                                                   disable=not progress)]
    names = ["top", "top_residual", "top_converged", "bottom", "bottom_residual", "bottom_converged", "index_count",
             "index_fraction", "index_at_least", "index_threshold", "trace", "trace_stderr", "density_nodes",
             "density_weights", "hvps"]
    arrays = {name: _stack(rows, name, k, selected) for name in names}
    arrays["analysed"] = np.isin(np.arange(k), selected)
    columns = {"index_count": arrays["index_count"], "index_fraction": arrays["index_fraction"],
               "lambda_max": arrays["top"][:, 0], "lambda_min": arrays["bottom"][:, 0], "trace": arrays["trace"]}
    attrs = {"spectrum_index_method": sorted({r["index_method"] for r in rows}),
             "spectrum_relative_threshold": float(cfg["relative_threshold"]) if cfg.get("threshold") is None else float("nan"),
             "spectrum_config": dict(cfg)}  # plain values: JSON in the file
    dims = {GROUP: "member,...", f"{GROUP}/density_nodes": "member,probe,step",
            f"{GROUP}/density_weights": "member,probe,step", f"{GROUP}/top": "member,k", f"{GROUP}/bottom": "member,k"}
    add_groups(path, {GROUP: arrays, "members": columns}, attrs=attrs, dims={**dims, "members": "member"})
    return arrays


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Add ``/spectrum`` to ``source`` (a results file, or every job file of a sweep directory)."""
    files = source_files(cfg.get("source"))
    spec_cfg = OmegaConf.to_container(cfg.spectrum, resolve=True)
    for path in files:
        arrays = spectrum_for_file(path, spec_cfg, cfg.device, cfg.progress)
        ok = arrays["analysed"]
        print(f"[surfacekit] {path}: {int(ok.sum())} members; lambda_max mean {np.nanmean(arrays['top'][ok, 0]):.4g}, "
              f"index fraction mean {np.nanmean(arrays['index_fraction'][ok]):.4g} "
              f"(threshold {spec_cfg['relative_threshold']:g} x max|lambda|)")
    return files[0]
