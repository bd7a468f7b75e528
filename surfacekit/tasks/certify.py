"""``task=certify``: from every member's training endpoint to a certified critical point.

    surfacekit task=certify source=SWEEP_DIR [certify.members=[0,1] certify.cutoff=1e-10 ...]

Per member, in float64 on the full training set and the job's trained objective (``objective``,
``bn_mode``): :func:`surfacekit.critical.certify.converge` (scipy L-BFGS-B, then trust-region Newton
with exact Hessian-vector products where L-BFGS-B stops short) drives the endpoint until ``||g||^2
<= margin min(cutoff, relative_cutoff ||g_0||^2)``, and the point reached is certified as
:func:`surfacekit.critical.certify.certify` does: the gradient tests (``||g||^2 < cutoff`` and
``||g||^2 <= relative_cutoff ||g_0||^2``), the exact index at the stated threshold with its
certificate, ``lambda_min`` and ``lambda_max``, and the class ``minimum``, ``saddle`` or ``not
certified`` with the reason (budget, gradient-flat, diverged, non-smooth, index). For ReLU networks the smallest
``|pre-activation|`` over the training set and all hidden units (``kink_margin``) is measured at the
point: where it is 0 the objective is not twice differentiable there and the point is never
certified; where the gradient stalls on a ReLU network the reason is ``non-smooth``.

Members go in units of ``batch_size``: their runs in lockstep (:mod:`surfacekit.critical.lockstep`:
one batched pass of the population loss serves every member's evaluation), and, on the **dense**
path (``index.method`` auto while P <= ``index.dense_limit``, 2,500, and the Hessians fit, or dense),
the index, lambda_min and lambda_max of all that passed the gradient tests from the eigenvalues of their dense Hessians,
assembled together through the affine first layer (:mod:`surfacekit.curvature.population`; exact,
``index_method`` "dense"). Otherwise (**member** path), per member: the certified Lanczos count
(auto, or lanczos) or the inertia of the dense Hessian assembled through the same structure
(inertia), and lambda_max (and after an inertia count lambda_min) by Lanczos. ``cert_seconds`` is the unit's time per member.

Written to ``SOURCE/analyses/certify-HASH/certify.h5`` as ``/jobs/<job>/certify/...`` [K, ...]
(members in the source's order; members not analysed hold NaN, -1, "" or False and ``analysed``
False; ``theta`` [K, P] the certified points) and ``/jobs/<job>/members`` columns that
``store.load_members`` joins: ``certified``, ``cert_class``, ``cert_reason``, ``cert_index``,
``cert_index_fraction``, ``cert_lambda_min``, ``cert_lambda_max``, ``cert_objective`` (the trained
objective), ``cert_loss`` and ``cert_test_loss`` (data losses on the train and test split),
``cert_train_error``, ``cert_test_error``, ``cert_grad_norm2``, ``cert_grad_norm2_relative``,
``cert_distance`` (``||theta - theta_endpoint||``), ``cert_seconds``; with ``certify_objective``,
``certify_weight_decay`` and ``certify_bn_mode`` from the file's provenance. Every unit is saved as it
finishes: a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit import jobs
from surfacekit.config import ConfigError
from surfacekit.critical.certify import classify_curvature, curvature_certificate, screen
from surfacekit.critical.lockstep import converge_population
from surfacekit.curvature import dense_index, index_method, lanczos_workspace
from surfacekit.curvature.index import DENSE_EIG_LIMIT
from surfacekit.curvature.memory import available_bytes, dense_bytes, gib, require_memory
from surfacekit.models import layer
from surfacekit.population import dataset_statistics, evaluate, unflatten
from surfacekit.store import job_objective
from surfacekit.tasks import _analysis

GROUP = "certify"
SMOOTH = ("tanh", "sigmoid", "linear")
STRINGS = ("classification", "reason", "stop", "index_method")
COLUMNS = {  # members column -> field of the group
    "certified": "certified", "cert_class": "classification", "cert_reason": "reason", "cert_index": "index_count",
    "cert_index_fraction": "index_fraction", "cert_lambda_min": "lambda_min", "cert_lambda_max": "lambda_max",
    "cert_objective": "objective", "cert_loss": "train_loss", "cert_test_loss": "test_loss",
    "cert_train_error": "train_error", "cert_test_error": "test_error", "cert_grad_norm2": "grad_norm2",
    "cert_grad_norm2_relative": "grad_norm2_relative", "cert_distance": "distance", "cert_seconds": "seconds",
}


def kink_margin(spec, params: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    """min |z| over examples x [N, in] and every hidden unit's pre-activation z (after batch norm in
    batch mode): the distance to the nearest ReLU kink (0 means the point lies on one)."""
    linear = dataclasses.replace(spec, activation="linear", residual=False)
    h, margin = x, math.inf
    with torch.no_grad():
        for i in range(spec.num_layers - 1):
            margin = min(margin, float(layer(linear, params, i, h).abs().min()))
            h = layer(spec, params, i, h)
    return margin


def member_losses(job, theta: torch.Tensor, bn_mode: str, statistics: dict | None) -> dict[str, float]:
    """Train and test data loss and error of one member's parameters ``theta`` [P] (batch norm: the
    training set's statistics at theta in batch mode, the stored ones in evaluation mode)."""
    spec, d = job.spec, job.data
    params = unflatten(theta, spec)
    stats = None
    if spec.batch_norm:
        stats = dataset_statistics(spec, params, d.x_train) if bn_mode == "batch" else statistics
    out = {}
    for split, x, y in (("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test)):
        loss, error = evaluate(spec, params, x, y, job.cfg.model.loss, job.cfg.get("chunk_size"), stats)
        out[f"{split}_loss"], out[f"{split}_error"] = float(loss[0]), float(error[0])
    return out


def plan(ref, members: pd.DataFrame, s: dict, cfg: DictConfig) -> dict[str, dict]:
    """Units of a job: batches of ``batch_size`` members (converged in lockstep; on the dense path their
    curvature from one batched pass). The curvature path is part of the key."""
    target = _analysis.job_model(ref).get("_target_")
    if target:  # the kink margin and the transforms read the MLP's layers
        raise ConfigError(f"task=certify supports MLP jobs (model=mlp); job {ref.name} is a module population "
                          f"(model._target_={target})")
    ids = _analysis.select_members(members, s.get("members"), "certify.members", ref.name)
    size, limit = _analysis.parameter_count(ref), _analysis.memory_limit(cfg)
    path = curvature_path(size, s["index"], str(cfg.device), limit)
    if path == "member":  # refuse a count that cannot fit before converging anything
        if s["index"]["method"] == "inertia":
            require_memory(dense_bytes(size), f"certify index (inertia): a {size:,} x {size:,} float64 Hessian and "
                           "its LDL^T working copy (16 P^2 bytes)", str(cfg.device), limit)
        else:
            lanczos_workspace(size, int(s["index"]["cap"]), device=str(cfg.device), memory_limit=limit)
    size = int(s["batch_size"])
    return {f"{path}-{b[0]:06d}-{b[-1]:06d}": {"path": path, "members": b}
            for b in (ids[i : i + size] for i in range(0, len(ids), size))}


def curvature_path(size: int, options: dict, device: str, limit: int | None) -> str:
    """"dense": the index, lambda_min and lambda_max of a batch from the eigenvalues of its dense Hessians
    (``index.method`` dense, or auto while P <= ``index.dense_limit`` (default 2,500) and the Hessians
    fit); "member": per member by :func:`surfacekit.curvature.index` (auto: the certified Lanczos
    count, which at a minimum needs a few hundred products and beats the dense paths beyond the
    limit: measured at P = 7,510, one thread, 15 s against 50 s for the inertia and 63 s for eigvalsh)
    and Lanczos for lambda_max.

    Raises:
        ConfigError: index.method=dense and the dense Hessian does not fit.
    """
    method = options["method"]
    fits = index_method(size, device, None, limit) != "lanczos"
    if method == "dense" and not fits:
        free = available_bytes(device) if limit is None else limit
        raise ConfigError(f"certify.index.method=dense is invalid here: P = {size:,} needs about "
                          f"{gib(dense_bytes(size))} for the dense Hessian and its working copy, more than the "
                          f"{gib(free)} {'free' if limit is None else 'of memory_limit_gb'}; use index.method=auto "
                          "or lanczos")
    small = size <= min(options.get("dense_limit") or DENSE_EIG_LIMIT, DENSE_EIG_LIMIT)
    return "dense" if method == "dense" or (method == "auto" and fits and small) else "member"


def compute(job, unit: dict, s: dict, ctx: dict) -> dict[str, Any]:
    """The rows of the unit's members, stacked on a leading member axis (``member`` holds their ids)."""
    t0 = time.perf_counter()
    members = list(unit["members"])
    cfg = ctx["cfg"]
    if job.cfg.model.loss != "mse" and not ctx["info"]["weight_decay"] and not ctx["cache"].get("warned"):
        ctx["cache"]["warned"] = True
        jobs.warn(f"certify: job {job.name} trained {job.cfg.model.loss} without weight decay: on separable data its "
                  "loss falls towards 0 as the weights grow and minima need not exist; a run that wanders off is "
                  f"classified diverged only past certify.max_distance={s['max_distance']} times ||theta_endpoint||")
    objective = functools.partial(_analysis.population_objective, job, ctx=ctx)
    start = objective(members)
    loss_fns = [job_objective(job, m, str(cfg.objective), str(cfg.bn_mode), cfg.get("chunk_size"))[0] for m in members]
    running: dict[tuple[int, ...], Any] = {}  # the members still running change rarely: build each loss once

    def losses_for(rows: tuple[int, ...]):
        if rows not in running:
            running.clear()
            running[rows] = objective([members[r] for r in rows]).losses_fn
        return running[rows]

    target = float(s["margin"])
    runs, _ = converge_population(losses_for, loss_fns, start.thetas,
                                  tol=target * float(s["cutoff"]), rtol=target * float(s["relative_cutoff"]),
                                  max_iter=int(s["max_iter"]), memory=int(s["memory"]), newton=str(s["newton"]),
                                  newton_max_iter=int(s["newton_max_iter"]))
    spec = job.spec
    margins = [math.inf if spec.activation in SMOOTH else kink_margin(spec, unflatten(r.theta, spec), job.data.x_train)
               for r in runs]
    screened = [screen(fn, r.theta, start_grad_norm2=r.start_grad_norm2, distance=r.distance,
                       start_norm=float(theta0.norm()), cutoff=float(s["cutoff"]),
                       relative_cutoff=float(s["relative_cutoff"]), max_distance=float(s["max_distance"]),
                       smooth=m > 0, flat_threshold=float(s["flat_threshold"]))
                for fn, r, theta0, m in zip(loss_fns, runs, start.thetas, margins)]
    certs = [refused for refused, _ in screened]
    passed = [i for i, (refused, _) in enumerate(screened) if refused is None]
    options = {key: s["index"][key] for key in ("threshold", "relative_threshold", "method", "dense_limit", "cap", "tol")}
    if options["method"] == "auto":  # beyond the batched dense path (curvature_path)
        options["method"] = "lanczos"
    if unit["path"] == "dense":
        for i, cert in zip(passed, dense_certificates(job, [members[i] for i in passed],
                                                      torch.stack([runs[i].theta for i in passed]) if passed else None,
                                                      [screened[i][1] for i in passed], options, ctx)):
            certs[i] = cert
    else:
        for i in passed:
            structure = objective([members[i]]).affine_input
            certs[i] = curvature_certificate(loss_fns[i], runs[i].theta, screened[i][1],
                                             {**options, "structure": structure,
                                              "memory_limit": _analysis.memory_limit(cfg)})
    seconds = (time.perf_counter() - t0) / len(members)
    rows = [member_row(job, member, run, cert, margin, s, str(cfg.bn_mode), seconds)
            for member, run, cert, margin in zip(members, runs, certs, margins)]
    out = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    out["member"] = np.asarray(members, dtype=np.int64)
    return out


def dense_certificates(job, members: list[int], points: torch.Tensor | None, common: list[dict],
                       options: dict, ctx: dict) -> list:
    """Certificates of ``points`` [n, P] (members that passed the gradient tests) from the eigenvalues of
    their dense Hessians, assembled together (through the affine first layer) in as few batches as the
    memory allows: the index (:func:`surfacekit.curvature.dense_index`), lambda_min and lambda_max,
    all exact up to eigvalsh rounding."""
    if points is None:
        return []
    certs = []
    spectra = _analysis.dense_spectra(job, members, ctx, threshold=options["threshold"],
                                      relative_threshold=float(options["relative_threshold"]), points=points)
    for shared, (res, b) in zip(common, spectra):
        eig = res.spectrum.eigenvalues[b]
        idx = dense_index(eig, options["threshold"], float(options["relative_threshold"]), res.passes,
                          check=False)  # population_spectrum checked it
        certs.append(classify_curvature(shared, idx, float(eig[-1]), float(eig[0])))
    return certs


def member_row(job, member: int, run, cert, margin: float, s: dict, bn_mode: str, seconds: float) -> dict[str, Any]:
    """One member's row of the certify group (numpy values)."""
    spec = job.spec
    if spec.activation not in SMOOTH and cert.reason in ("budget", "gradient-flat"):
        cert = dataclasses.replace(cert, reason="non-smooth")  # a ReLU objective whose gradient stalled: on kinks
    k = _analysis.member_positions(job.members)[member]
    statistics = {n: v[k:k + 1] for n, v in job.buffers.items()} if job.buffers else None
    losses = member_losses(job, run.theta, bn_mode, statistics)
    idx = cert.index
    row = {
        "certified": cert.certified, "classification": cert.classification, "reason": cert.reason,
        "objective": cert.loss, **losses, "start_objective": run.start_loss, "grad_norm2": cert.grad_norm2,
        "start_grad_norm2": run.start_grad_norm2, "grad_norm2_relative": cert.grad_norm2_relative,
        "distance": run.distance, "index_count": cert.index_count, "index_fraction": cert.index_fraction,
        "index_threshold": cert.index_threshold,
        "index_relative_threshold": math.nan if idx is None else idx.relative_threshold,
        "index_method": "" if idx is None else idx.method,
        "index_certificate": math.nan if idx is None else idx.certificate,
        "index_certificate_residual": math.nan if idx is None else idx.certificate_residual,
        "lambda_min": cert.lambda_min, "lambda_max": cert.lambda_max, "flat_ratio": cert.flat_ratio,
        "kink_margin": margin, "lbfgs_iterations": run.lbfgs_iterations, "newton_iterations": run.newton_iterations,
        "grads": run.num_grads, "hvps": run.num_hvps + cert.num_hvps, "stop": run.stop, "target": run.target,
        "seconds": seconds,
    }
    if s["store_theta"]:
        row["theta"] = run.theta
    return {key: _analysis.to_numpy(value) for key, value in row.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    k = len(members)
    by_pos = _analysis.batch_rows_by_position(members, rows)
    fields = next(iter(by_pos.values())).keys() if by_pos else []
    arrays = _analysis.member_arrays(by_pos, fields, k, strings=STRINGS)
    arrays["analysed"] = np.isin(np.arange(k), list(by_pos))
    # "analysed" lets load_members fill the other members from older analyses (it drops the column)
    columns = {"member": members["member"].to_numpy(), "analysed": arrays["analysed"],
               **{col: arrays[f] for col, f in COLUMNS.items() if f in arrays}}
    dims = {GROUP: "member", "members": "member", f"{GROUP}/theta": "member,param"}
    return {GROUP: arrays, "members": columns}, dims


def summary(groups: dict) -> str:
    a = groups[GROUP]
    ok = a["analysed"]
    n = int(ok.sum())
    classes = pd.Series(a["classification"][ok]).value_counts().to_dict()
    reasons = pd.Series(a["reason"][ok & ~a["certified"]]).value_counts().to_dict()
    saddles = a["index_count"][ok & (a["classification"] == "saddle")]
    return (f"  {n} members: {int(a['certified'][ok].sum())} certified ({classes.get('minimum', 0)} minima, "
            f"{classes.get('saddle', 0)} saddles{', indices ' + str(sorted(set(saddles.tolist()))) if len(saddles) else ''}), "
            f"{classes.get('not certified', 0)} not certified{' ' + str(reasons) if reasons else ''}; "
            f"median {np.nanmedian(a['seconds'][ok]):.2f} s per member")


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Certify every member of ``source``; write ``out_dir/certify.h5``."""
    return _analysis.run(dataclasses.replace(TASK, plan=functools.partial(TASK.plan, cfg=cfg)), cfg, out_dir)
