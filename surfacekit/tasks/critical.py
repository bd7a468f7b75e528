"""``task=critical``: critical-point finders from stored training trajectories, results into the source.

    surfacekit task=critical source=PATH [critical.starts=50 critical.finders=[newton_mr]]

``source`` is a job's ``results.h5`` trained with ``trainer.snapshots=true``, or a sweep directory
(every job's file is processed). For each chosen member, start points are drawn from
``/trajectory/theta`` uniformly in ``/curves/train_loss``; every configured finder runs from each in
float64 on the full training loss, and every endpoint is classified (critical, gradient-flat or
rejected) and indexed. Written with ``store.add_groups`` into the source file, one group per finder::

    /critical/<finder>/{member, start_eval, start_step, start_loss, loss, start_grad_norm2, grad_norm2,
                        grad_norm2_relative, iterations, hvps, grads, accepted, gradient_flat, status,
                        flat_ratio, spectral_norm, index_count, index_fraction, index_threshold,
                        index_relative_threshold, index_method, index_at_least, stop, solve_residual, theta}

all [n] (``theta`` [n, P]; ``solve_residual``: Newton-MR's median relative MINRES residual ``||H d + g|| / ||g||``,
nan for other finders), with the settings as JSON in the root attribute ``critical``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from surfacekit.config import ConfigError, resolve_device
from surfacekit.critical import FINDERS, find, sample_uniform_in_loss
from surfacekit.population import member_loss_fn
from surfacekit.store import ResultsError, add_groups, load_curves, load_group, now_iso
from surfacekit.tasks._common import load_job, source_files

DIMS = {"theta": "start,param"}


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The validated ``critical`` config group as a plain dict."""
    c = OmegaConf.to_container(cfg.critical, resolve=True)
    finders = c.get("finders")
    if not finders or any(f not in FINDERS for f in finders):
        raise ConfigError(f"critical.finders={finders!r} is invalid: expected a list from {list(FINDERS)}")
    if not (isinstance(c.get("starts"), int) and c["starts"] >= 1):
        raise ConfigError(f"critical.starts={c.get('starts')!r} is invalid: expected an integer >= 1")
    if not (isinstance(c.get("cutoff"), (int, float)) and c["cutoff"] > 0):
        raise ConfigError(f"critical.cutoff={c.get('cutoff')!r} is invalid: expected a number > 0")
    members = c.get("members")
    if members is not None and not (isinstance(members, list) and all(isinstance(m, int) and m >= 0 for m in members)):
        raise ConfigError(f"critical.members={members!r} is invalid: expected null or a list of integers >= 0")
    return c


def check_trajectory(path: Path) -> None:
    with h5py.File(path, "r") as f:
        if "trajectory" not in f or "theta" not in f["trajectory"]:
            raise ResultsError(f"{path}: no /trajectory to start from; train the source with trainer.snapshots=true")


def run_file(path: Path, c: dict[str, Any], device: torch.device, progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Run every finder from start points of every chosen member of one job; return the /critical groups."""
    check_trajectory(path)
    job = load_job(path, device)
    trajectory = load_group(path, "trajectory")
    thetas = trajectory["theta"]  # [T, K, P]
    steps = trajectory["step"]
    train_loss = load_curves(path)["train_loss"]  # [K, T]
    k = thetas.shape[1]
    members = list(range(k)) if c.get("members") is None else c["members"]
    if any(m >= k for m in members):
        raise ConfigError(f"critical.members={members} is invalid: {path} has {k} members (0..{k - 1})")
    loss_fn = member_loss_fn(job.spec, job.data.x_train, job.data.y_train, job.cfg.model.loss, job.cfg.get("chunk_size"))
    index_options = {key: c["index"][key] for key in ("threshold", "relative_threshold", "method", "dense_limit", "cap")
                     if key in c["index"]}
    first = int(OmegaConf.select(job.cfg, "population.first_member", default=0) or 0)
    plan = []
    for m in members:
        evals = sample_uniform_in_loss(train_loss[m], int(c["starts"]), seed=int(c["seed"]) + m)
        plan += [(m, int(e)) for e in evals]
    rows: dict[str, list[dict[str, Any]]] = {f: [] for f in c["finders"]}
    bar = tqdm(total=len(plan) * len(c["finders"]), desc=f"critical {path.parent.name}", disable=not progress, leave=False)
    for m, e in plan:
        start = torch.from_numpy(np.asarray(thetas[e, m], dtype=np.float64)).to(device)
        for finder in c["finders"]:
            point = find(loss_fn, start, finder, cutoff=float(c["cutoff"]), flat_threshold=float(c["flat_threshold"]),
                         compute_index=bool(c["compute_index"]), index_options=index_options,
                         **(c.get("options", {}).get(finder) or {}))
            rows[finder].append(_row(point, first + m, e, int(steps[e]), bool(c.get("store_theta", True))))
            bar.update(1)
    bar.close()
    return {f"critical/{f}": _columns(r) for f, r in rows.items()}


def _row(p, member: int, start_eval: int, start_step: int, keep_theta: bool) -> dict[str, Any]:
    idx = p.index
    row = {
        "member": member, "start_eval": start_eval, "start_step": start_step, "start_loss": p.start_loss,
        "loss": p.loss, "start_grad_norm2": p.start_grad_norm2, "grad_norm2": p.grad_norm2,
        "grad_norm2_relative": p.grad_norm2_relative, "iterations": p.iterations, "hvps": p.num_hvps,
        "grads": p.num_grads, "accepted": p.accepted, "gradient_flat": p.gradient_flat, "status": p.status,
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
    return row


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {key: np.asarray([r[key] for r in rows]) for key in rows[0]}


def summary(finder: str, cols: dict[str, np.ndarray]) -> str:
    """One finder's line: acceptance, ||g||^2 quantiles over rejected runs, gradient-flat fraction."""
    n = len(cols["accepted"])
    acc = cols["accepted"].astype(bool)
    rej = cols["grad_norm2"][~acc]
    flat = cols["gradient_flat"].astype(bool)
    quant = (" ".join(f"q{int(q * 100)}={v:.2e}" for q, v in zip((0.1, 0.5, 0.9), np.quantile(rej, [0.1, 0.5, 0.9])))
             if len(rej) else "none rejected")
    return (f"{finder:12s} accepted {acc.sum()}/{n} ({acc.mean():.1%}); ||g||^2 of rejected: {quant}; "
            f"gradient-flat {flat.sum()}/{n} ({flat.mean():.1%} of all, "
            f"{flat.sum() / max(1, (~acc).sum()):.1%} of rejected)")


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Run the finders on every file named by ``source`` and add ``/critical`` to each; return the last path."""
    c = settings(cfg)
    files = source_files(cfg.get("source"))
    device = resolve_device(cfg.device)
    last = files[-1]
    for path in files:
        started = now_iso()
        groups = run_file(path, c, device, bool(cfg.progress))
        dims = {g: "start" for g in groups}
        dims.update({f"{g}/theta": DIMS["theta"] for g in groups})
        record = {"settings": c, "started": started, "finished": now_iso()}
        add_groups(path, groups, attrs={"critical": json.dumps(record)}, dims=dims)
        print(f"[surfacekit] critical points of {path}")
        for g, cols in groups.items():
            print("  " + summary(g.split("/", 1)[1], cols))
    return last
