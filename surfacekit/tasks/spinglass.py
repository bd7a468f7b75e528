"""``task=spinglass``: endpoints of gradient descent in the spherical p-spin glass, one disorder sample.

Draws the couplings and ``spinglass.starts`` random start points from one seed, descends them all as
one batch (``surfacekit.spinglass.simulate``), and writes ``results.h5`` with one ``/members`` row per
start (energy per site, gradient norm, steps, index...) and the theory thresholds as root attributes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from surfacekit import spinglass as sg
from surfacekit.config import ConfigError, resolve_device
from surfacekit.store import RESULTS_NAME, now_iso, write_results
from surfacekit.tasks._common import completed_results, job_attributes

BAND = (-1.75, -1.25)  # the range of H/N the references read off their histograms (p = 3)


def settings(cfg: DictConfig) -> dict[str, Any]:
    """Validated ``spinglass`` settings as plain Python values (one-line ConfigError otherwise)."""
    s = cfg.spinglass

    def integer(name: str, value: Any, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"spinglass.{name}={value!r} is invalid: expected an integer >= {low}")
        return int(value)

    def positive(name: str, value: Any, allow_zero: bool = False) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = float("nan")
        if not (v >= 0 if allow_zero else v > 0) or not np.isfinite(v):
            raise ConfigError(f"spinglass.{name}={value!r} is invalid: expected a {'non-negative' if allow_zero else 'positive'} number")
        return v

    if s.method not in ("gd", "sgd"):
        raise ConfigError(f"spinglass.method={s.method!r} is invalid: expected gd or sgd")
    seed = cfg.seed if s.get("disorder_seed") is None else s.disorder_seed
    out = {
        "n": integer("N", s.N, 2),
        "p": integer("p", s.p, 3),
        "num_starts": integer("starts", s.starts, 1),
        "seed": integer("disorder_seed", seed, 0),
        "method": str(s.method),
        "lr": positive("lr", s.lr),
        "lr_decay": positive("lr_decay", s.lr_decay, allow_zero=True),
        "tol": positive("tol", s.tol),
        "max_steps": integer("max_steps", s.max_steps, 1),
        "sgd_tensors": integer("sgd.tensors", s.sgd.tensors, 1),
        "sgd_steps": integer("sgd.steps", s.sgd.steps, 0),
        "sgd_lr": positive("sgd.lr", s.sgd.lr),
        "sgd_lr_decay": positive("sgd.lr_decay", s.sgd.lr_decay, allow_zero=True),
        "index_max_n": integer("index_max_n", s.index_max_n, 0),
        "index_rel_threshold": positive("index_rel_threshold", s.index_rel_threshold),
    }
    limit = cfg.get("memory_limit_gb")
    tensors = 3 + (out["sgd_tensors"] if out["method"] == "sgd" else 0)  # raw, symmetrized, accumulator (+ pieces)
    need_gb = tensors * float(out["n"]) ** out["p"] * 8 / 2**30
    if limit is not None and need_gb > float(limit):
        raise ConfigError(f"spinglass.N={out['n']}, p={out['p']} needs about {need_gb:.1f} GB of couplings, "
                          f"above memory_limit_gb={limit}")
    return out


def member_columns(res: dict[str, np.ndarray], opts: dict[str, Any]) -> dict[str, np.ndarray]:
    """``/members`` columns, one row per start, from ``simulate``'s arrays."""
    k = len(res["energy_per_n"])
    columns: dict[str, np.ndarray] = {
        "member": np.arange(k),
        "energy_per_n": res["energy_per_n"],
        "grad_norm": res["grad_norm"],
        "steps": res["steps"].astype(np.int64),
        "converged": res["converged"].astype(bool),
    }
    for key in ("sgd_steps", "index", "index_fraction", "index_threshold", "index_method", "index_at_least",
                "index_certificate", "lambda_min", "lambda_max"):
        if key in res:
            columns[key] = res[key]
    columns["N"] = np.full(k, opts["n"], dtype=np.int64)
    columns["p"] = np.full(k, opts["p"], dtype=np.int64)
    columns["disorder_seed"] = np.full(k, opts["seed"], dtype=np.int64)
    columns["method"] = np.array([opts["method"]] * k)
    return columns


def summary(columns: dict[str, np.ndarray], e_0: float, e_inf: float, wall_s: float) -> str:
    """A few lines: energy statistics, gradient norms, index-0 fraction, thresholds, time."""
    e = columns["energy_per_n"]
    std = e.std(ddof=1) if e.size > 1 else float("nan")
    in_band = np.mean((e >= BAND[0]) & (e <= BAND[1]))
    lines = [
        f"N={int(columns['N'][0])} p={int(columns['p'][0])} method={columns['method'][0]} "
        f"starts={e.size}: H/N mean {e.mean():.4f} std {std:.4f} min {e.min():.4f} max {e.max():.4f}; "
        f"in [{BAND[0]}, {BAND[1]}]: {in_band:.3f}",
        f"median Riemannian grad norm {np.median(columns['grad_norm']):.2e}; converged {columns['converged'].mean():.3f}; "
        f"median steps {np.median(columns['steps']):.0f} (max {columns['steps'].max()})",
    ]
    if "index" in columns:
        lines.append(f"index 0 (minima): {np.mean(columns['index'] == 0):.3f}; mean index fraction "
                     f"{columns['index_fraction'].mean():.3g}")
    else:
        lines.append("index not computed (N > spinglass.index_max_n)")
    lines.append(f"theory: -E_0 = {-e_0:.6f}, -E_inf = {-e_inf:.6f}; wall {wall_s:.1f} s")
    return "\n".join(lines)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Descend ``spinglass.starts`` starts on one disorder sample and write ``out_dir/results.h5``."""
    done = completed_results(cfg, out_dir)
    if done:
        return done
    started = now_iso()
    opts = settings(cfg)
    device = resolve_device(cfg.device)
    e_0, e_inf = sg.thresholds(opts["p"])
    bar = tqdm(total=opts["num_starts"], desc=f"spinglass N={opts['n']} converged starts", unit="start",
               disable=not cfg.progress)

    def progress(step: int, finished: int) -> None:
        bar.set_postfix(step=step, refresh=False)
        bar.update(finished - bar.n)

    t0 = time.perf_counter()
    try:
        res = sg.simulate(device=device, callback=progress, **opts)
    finally:
        bar.close()
    wall_s = time.perf_counter() - t0
    columns = member_columns(res, opts)
    attrs = {
        **job_attributes(cfg, started),
        "E_0": e_0, "E_inf": e_inf, "N": opts["n"], "p": opts["p"], "method": opts["method"],
        "disorder_seed": opts["seed"], "index_computed": "index" in res,
        "index_rel_threshold": opts["index_rel_threshold"], "wall_s": wall_s,
    }
    path = write_results(out_dir / RESULTS_NAME, {"members": columns}, attrs, {"members": "member"})
    print(summary(columns, e_0, e_inf, wall_s))
    print(f"[surfacekit] spin glass N={opts['n']}, p={opts['p']}, {opts['num_starts']} starts -> {path}")
    return path
