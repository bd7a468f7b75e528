"""``task=certify``: from every member's training endpoint to a certified critical point.

    surfacekit task=certify source=SWEEP_DIR [certify.members=[0,1] certify.cutoff=1e-10 ...]

Per member, in float64 on the full training set and the job's trained objective (``objective``,
``bn_mode``): :func:`surfacekit.critical.certify.converge` (scipy L-BFGS-B, then trust-region Newton
with exact Hessian-vector products where L-BFGS-B stops short) drives the endpoint until ``||g||^2
<= margin min(cutoff, relative_cutoff ||g_0||^2)``, and :func:`surfacekit.critical.certify.certify`
certifies the point reached: the gradient tests (``||g||^2 < cutoff`` and ``||g||^2 <=
relative_cutoff ||g_0||^2``), the exact index at the stated threshold with its certificate,
``lambda_min`` and ``lambda_max``, and the class ``minimum``, ``saddle`` or ``not certified`` with
the reason (budget, gradient-flat, diverged, non-smooth, index). For ReLU networks the smallest
``|pre-activation|`` over the training set and all hidden units (``kink_margin``) is measured at the
point: where it is 0 the objective is not twice differentiable there and the point is never
certified; where the gradient stalls on a ReLU network the reason is ``non-smooth``.

Written to ``SOURCE/analyses/certify-HASH/certify.h5`` as ``/jobs/<job>/certify/...`` [K, ...]
(members in the source's order; members not analysed hold NaN, -1, "" or False and ``analysed``
False; ``theta`` [K, P] the certified points) and ``/jobs/<job>/members`` columns that
``store.load_members`` joins: ``certified``, ``cert_class``, ``cert_reason``, ``cert_index``,
``cert_index_fraction``, ``cert_lambda_min``, ``cert_lambda_max``, ``cert_objective`` (the trained
objective), ``cert_loss`` and ``cert_test_loss`` (data losses on the train and test split),
``cert_train_error``, ``cert_test_error``, ``cert_grad_norm2``, ``cert_grad_norm2_relative``,
``cert_distance`` (``||theta - theta_endpoint||``), ``cert_seconds``; with ``certify_objective``,
``certify_weight_decay`` and ``certify_bn_mode`` from the file's provenance. Every member is saved
as it finishes: a rerun resumes.
"""

from __future__ import annotations

import dataclasses
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
from surfacekit.critical.certify import certify, converge
from surfacekit.models import layer
from surfacekit.population import dataset_statistics, evaluate, unflatten
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


def plan(ref, members: pd.DataFrame, s: dict) -> dict[str, int]:
    target = _analysis.job_model(ref).get("_target_")
    if target:  # the kink margin and the transforms read the MLP's layers
        raise ConfigError(f"task=certify supports MLP jobs (model=mlp); job {ref.name} is a module population "
                          f"(model._target_={target})")
    return {f"member-{m:06d}": m for m in _analysis.select_members(members, s.get("members"), "certify.members")}


def compute(job, member: int, s: dict, ctx: dict) -> dict[str, Any]:
    t0 = time.perf_counter()
    loss_fn, theta0 = _analysis.member_objective(job, member, ctx)
    cfg = ctx["cfg"]
    if job.cfg.model.loss != "mse" and not ctx["info"]["weight_decay"] and not ctx["cache"].get("warned"):
        ctx["cache"]["warned"] = True
        jobs.warn(f"certify: job {job.name} trained {job.cfg.model.loss} without weight decay: on separable data its "
                  "loss falls towards 0 as the weights grow and minima need not exist; a run that wanders off is "
                  f"classified diverged only past certify.max_distance={s['max_distance']} times ||theta_endpoint||")
    target = float(s["margin"])
    run = converge(loss_fn, theta0, tol=target * float(s["cutoff"]), rtol=target * float(s["relative_cutoff"]),
                   max_iter=int(s["max_iter"]), memory=int(s["memory"]), newton=str(s["newton"]),
                   newton_max_iter=int(s["newton_max_iter"]))
    spec = job.spec
    params = unflatten(run.theta, spec)
    k = _analysis.member_positions(job.members)[member]
    statistics = {n: v[k:k + 1] for n, v in job.buffers.items()} if job.buffers else None
    margin = math.inf if spec.activation in SMOOTH else kink_margin(spec, params, job.data.x_train)
    index = {key: s["index"][key] for key in ("threshold", "relative_threshold", "method", "dense_limit", "cap", "tol")}
    cert = certify(loss_fn, run.theta, start_grad_norm2=run.start_grad_norm2, distance=run.distance,
                   start_norm=float(theta0.norm()), cutoff=float(s["cutoff"]), relative_cutoff=float(s["relative_cutoff"]),
                   max_distance=float(s["max_distance"]), smooth=margin > 0, flat_threshold=float(s["flat_threshold"]),
                   index_options=index)
    if spec.activation not in SMOOTH and cert.reason in ("budget", "gradient-flat"):
        cert = dataclasses.replace(cert, reason="non-smooth")  # a ReLU objective whose gradient stalled: on kinks
    losses = member_losses(job, run.theta, str(cfg.bn_mode), statistics)
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
        "seconds": time.perf_counter() - t0,
    }
    if s["store_theta"]:
        row["theta"] = run.theta
    return {key: _analysis.to_numpy(value) for key, value in row.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    k = len(members)
    by_pos = _analysis.rows_by_position(members, rows)
    fields = next(iter(by_pos.values())).keys() if by_pos else []
    arrays = _analysis.member_arrays(by_pos, fields, k, strings=STRINGS)
    arrays["analysed"] = np.isin(np.arange(k), list(by_pos))
    columns = {"member": members["member"].to_numpy(), **{col: arrays[f] for col, f in COLUMNS.items() if f in arrays}}
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
    return _analysis.run(TASK, cfg, out_dir)
