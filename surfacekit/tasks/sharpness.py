"""``task=sharpness``: flatness measures of every network of a results file or sweep.

    surfacekit task=sharpness source=SWEEP_DIR [sharpness.keskar_epsilon=5e-4 ...]

Per member (a coupled population's centre included), in float64 on the full training set and the
job's trained objective (``objective``, ``bn_mode``): lambda_max (Lanczos) and Hutchinson's trace
of the Hessian, Keskar et al.'s epsilon-sharpness, the adaptive sharpness lambda_max(T H T) with
T = diag(|w| + eta) over every parameter, and the magnitude-aware PAC-Bayes sigma (bisection on the
training accuracy with ``bn_mode``'s batch-norm statistics); see ``surfacekit.flatness`` and
docs/sharpness.md. Written to ``SOURCE/analyses/sharpness-HASH/sharpness.h5`` as
``/jobs/<job>/sharpness/...`` [K] (members not analysed hold NaN, -1 or False and ``analysed`` False)
and ``/jobs/<job>/members`` columns that ``store.load_members`` joins: ``sharpness_loss``,
``sharpness_grad_norm``, ``sharpness_lambda_max``, ``sharpness_trace``, ``keskar_sharpness``,
``adaptive_sharpness``, ``pac_bayes_sigma``, ``pac_bayes_flatness`` (1 / sigma^2). The settings
(epsilon, iterations, eta, drop, draws) are the file's ``settings`` attribute; every member is saved
as it finishes, so a rerun resumes. A separate task from ``spectrum`` because its measures have
settings and costs of their own (Keskar's maximization, the perturbed evaluations) and the
flatness analysis wants one table of all measures per member; lambda_max is recomputed (tens of
products) so the table stands alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit import curvature, flatness
from surfacekit.objective import mode_statistics
from surfacekit.population import evaluate, unflatten
from surfacekit.seeds import derive_seed
from surfacekit.tasks import _analysis

GROUP = "sharpness"
FIELDS = ["loss", "grad_norm", "lambda_max", "lambda_max_residual", "lambda_max_converged", "trace", "trace_stderr",
          "keskar", "keskar_maximum", "keskar_iterations", "keskar_evaluations", "keskar_at_boundary", "adaptive",
          "adaptive_residual", "adaptive_converged", "pac_bayes_sigma", "pac_bayes_sigma_above", "pac_bayes_flatness",
          "pac_bayes_train_error", "pac_bayes_drop_at_sigma", "pac_bayes_evaluations", "hvps"]
COLUMNS = {"loss": "sharpness_loss", "grad_norm": "sharpness_grad_norm", "lambda_max": "sharpness_lambda_max",
           "trace": "sharpness_trace", "keskar": "keskar_sharpness", "adaptive": "adaptive_sharpness",
           "pac_bayes_sigma": "pac_bayes_sigma", "pac_bayes_flatness": "pac_bayes_flatness",
           "lambda_max_converged": "sharpness_lambda_max_converged", "adaptive_converged": "adaptive_sharpness_converged"}


def error_function(job, member: int, bn_mode: str):
    """Training error fractions [M] of parameter vectors [M, P] of ``job``'s network, with batch norm in
    ``bn_mode`` (evaluation mode: the member's stored statistics); None for regression targets (no
    classification error to perturb)."""
    if job.data.y_train.is_floating_point():
        return None
    position = _analysis.member_positions(job.members)[member]
    stored = {n: v[position : position + 1] for n, v in job.buffers.items()} if job.buffers else None
    d = job.data

    def errors(thetas: torch.Tensor) -> torch.Tensor:
        statistics = mode_statistics(job.spec, bn_mode, stored)
        if statistics is not None:
            statistics = {n: v.expand(len(thetas), -1) for n, v in statistics.items()}
        return evaluate(job.spec, unflatten(thetas, job.spec), d.x_train, d.y_train, str(job.cfg.model.loss),
                        statistics=statistics)[1]

    return errors


def member_sharpness(loss_fn, theta: torch.Tensor, errors, s: dict, seed: int) -> dict[str, Any]:
    """Every measure of one network at ``theta`` [P] (float64) with the task's settings ``s``; ``errors``
    (``error_function``) None gives NaN PAC-Bayes columns."""
    point = theta.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = loss_fn(point)
        (grad,) = torch.autograd.grad(value, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvature.ConvergenceWarning)
        top = curvature.extreme_eigenvalues(loss_fn, theta, k=1, which="largest", tol=float(s["tol"]),
                                            max_steps=int(s["max_steps"]), on_fail="warn")
        adaptive = flatness.adaptive_sharpness(loss_fn, theta, eta=float(s["adaptive_eta"]), tol=float(s["tol"]),
                                               max_steps=int(s["max_steps"]))
    trace = curvature.hutchinson_trace(loss_fn, theta, num_probes=int(s["trace_probes"]), seed=seed)
    keskar = flatness.keskar_sharpness(loss_fn, theta, epsilon=float(s["keskar_epsilon"]),
                                       iterations=int(s["keskar_iterations"]), seed=seed)
    row = {"loss": float(value.detach()), "grad_norm": float(grad.norm()),
           "lambda_max": float(top.eigenvalues[0]), "lambda_max_residual": float(top.residuals[0]),
           "lambda_max_converged": bool(top.converged), "trace": trace.estimate, "trace_stderr": trace.stderr,
           "keskar": keskar.sharpness, "keskar_maximum": keskar.maximum, "keskar_iterations": keskar.iterations,
           "keskar_evaluations": keskar.evaluations, "keskar_at_boundary": keskar.at_boundary,
           "adaptive": adaptive.lambda_max, "adaptive_residual": adaptive.residual,
           "adaptive_converged": adaptive.converged, "hvps": top.num_hvps + adaptive.num_hvps + trace.num_hvps}
    if errors is not None:
        pac = flatness.pac_bayes_sigma(errors, theta, drop=float(s["pac_bayes_drop"]),
                                       epsilon=float(s["pac_bayes_epsilon"]), draws=int(s["pac_bayes_draws"]),
                                       iterations=int(s["pac_bayes_iterations"]), seed=seed)
        row.update(pac_bayes_sigma=pac.sigma, pac_bayes_sigma_above=pac.sigma_above, pac_bayes_flatness=pac.flatness,
                   pac_bayes_train_error=pac.error, pac_bayes_drop_at_sigma=pac.drop_at_sigma,
                   pac_bayes_evaluations=pac.evaluations)
    else:  # regression targets: no accuracy to perturb
        row.update(pac_bayes_sigma=np.nan, pac_bayes_sigma_above=np.nan, pac_bayes_flatness=np.nan,
                   pac_bayes_train_error=np.nan, pac_bayes_drop_at_sigma=np.nan, pac_bayes_evaluations=0)
    return row


def plan(ref, members: pd.DataFrame, s: dict) -> dict[str, int]:
    return {f"member-{m:06d}": m for m in _analysis.select_members(members, s.get("members"), "sharpness.members", ref.name)}


def compute(job, member: int, s: dict, ctx: dict) -> dict[str, Any]:
    loss_fn, theta = _analysis.member_objective(job, member, ctx)
    errors = error_function(job, member, str(ctx["cfg"].bn_mode))
    row = member_sharpness(loss_fn, theta, errors, s, derive_seed(int(s["seed"]), member))
    return {k: _analysis.to_numpy(v) for k, v in row.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    k = len(members)
    by_pos = _analysis.rows_by_position(members, rows)
    arrays = _analysis.member_arrays(by_pos, FIELDS, k)
    arrays["analysed"] = np.isin(np.arange(k), list(by_pos))
    # "analysed" lets load_members fill the other members from older analyses (it drops the column)
    columns = {"member": members["member"].to_numpy(), "analysed": arrays["analysed"],
               **{column: arrays[name] for name, column in COLUMNS.items()}}
    return {GROUP: arrays, "members": columns}, {GROUP: "member", "members": "member"}


def summary(groups: dict) -> str:
    a = groups[GROUP]
    ok = a["analysed"]
    sigma = a["pac_bayes_sigma"][ok]
    pac = f"{np.nanmean(sigma):.4g}" if np.isfinite(sigma).any() else "none (regression targets)"
    line = (f"  {int(ok.sum())} members; means: lambda_max {np.nanmean(a['lambda_max'][ok]):.4g}, trace "
            f"{np.nanmean(a['trace'][ok]):.4g}, Keskar {np.nanmean(a['keskar'][ok]):.4g} %, adaptive "
            f"{np.nanmean(a['adaptive'][ok]):.4g}, PAC-Bayes sigma {pac}")
    for name, what in (("lambda_max", "lambda_max"), ("adaptive", "the adaptive sharpness")):
        short = np.flatnonzero(ok & ~np.asarray(a[f"{name}_converged"], dtype=bool))
        if len(short):
            line += (f"\n  {what} of members {short.tolist()} did not converge within sharpness.max_steps (Ritz "
                     f"residual up to {np.max(a[f'{name}_residual'][short]):.2g}): an estimate from below, flagged in "
                     f"{name}_converged; raise sharpness.max_steps")
    unbounded = np.flatnonzero(ok & np.isposinf(a["pac_bayes_sigma_above"]))
    if len(unbounded):
        line += (f"\n  PAC-Bayes sigma of members {unbounded.tolist()} is only a lower bound: the training error never "
                 f"rose by pac_bayes_drop up to sigma {np.max(a['pac_bayes_sigma'][unbounded]):.4g} (training error "
                 f"{np.max(a['pac_bayes_train_error'][unbounded]):.3g}: near chance?); pac_bayes_sigma_above is inf")
    return line


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Write the flatness measures of every member of ``source`` to ``out_dir/sharpness.h5``."""
    return _analysis.run(TASK, cfg, out_dir)
