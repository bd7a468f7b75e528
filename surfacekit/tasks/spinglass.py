"""``task=spinglass``: endpoints of gradient descent in the spherical p-spin glass, one disorder sample.

Draws the couplings and ``spinglass.starts`` random start points from one seed, descends them in
batches of ``spinglass.chunk_starts`` (``surfacekit.spinglass.simulate``; each saved as it finishes,
so a killed job resumes), and writes ``results.h5`` with one ``/members`` row per start (energy per
site, gradient norm, steps, index...) and the theory thresholds as root attributes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from surfacekit import spinglass as sg
from surfacekit.config import ConfigError, format_gib, machine_memory_gb, resolve_device
from surfacekit.jobs import finished_results, job_attributes
from surfacekit.progress import bar
from surfacekit.store import PARTS_DIR, RESULTS_NAME, Parts, now_iso, write_results

BAND = (-1.75, -1.25)  # the range of H/N the references read off their histograms (p = 3)


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``spinglass`` settings (validated by surfacekit.config) as ``simulate``'s arguments."""
    s = cfg.spinglass
    out = {
        "n": int(s.N), "p": int(s.p), "num_starts": int(s.starts),
        "seed": int(cfg.seed if s.get("disorder_seed") is None else s.disorder_seed),
        "method": str(s.method), "lr": float(s.lr), "lr_decay": float(s.lr_decay), "tol": float(s.tol),
        "max_steps": int(s.max_steps), "sgd_tensors": int(s.sgd.tensors), "sgd_steps": int(s.sgd.steps),
        "sgd_lr": float(s.sgd.lr), "sgd_lr_decay": float(s.sgd.lr_decay), "index_max_n": int(s.index_max_n),
        "index_rel_threshold": float(s.index_rel_threshold),
    }
    limit = cfg.get("memory_limit_gb") or machine_memory_gb()
    tensors = 3 + (out["sgd_tensors"] if out["method"] == "sgd" else 0)  # raw, symmetrized, accumulator (+ pieces)
    need_gb = tensors * float(out["n"]) ** out["p"] * 8 / 2**30
    if need_gb > float(limit):
        raise ConfigError(f"spinglass.N={out['n']} with p={out['p']} needs about {format_gib(need_gb)} of couplings, "
                          f"more than the {format_gib(limit)} available (memory_limit_gb)")
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
    """Descend ``spinglass.starts`` starts on one disorder sample and write ``out_dir/results.h5``.

    Starts are descended in chunks of ``spinglass.chunk_starts``, each saved as it finishes
    (``parts/``); a rerun into the same directory (``resume=true``) continues from them.
    """
    path = out_dir / RESULTS_NAME
    if finished_results(cfg, path):
        return path
    started = now_iso()
    opts = settings(cfg)
    device = resolve_device(cfg.device)
    e_0, e_inf = sg.thresholds(opts["p"])
    chunk = int(cfg.spinglass.chunk_starts)
    parts = Parts(out_dir / PARTS_DIR, signature=json.dumps({**opts, "chunk_starts": chunk}, sort_keys=True))
    chunks = [(lo, min(lo + chunk, opts["num_starts"])) for lo in range(0, opts["num_starts"], chunk)]
    todo = [c for c in chunks if not parts.done(f"starts-{c[0]:07d}")]
    print(f"[surfacekit] spin glass N={opts['n']} p={opts['p']}: {opts['num_starts']} starts in {len(chunks)} chunk(s), "
          f"{len(chunks) - len(todo)} finished earlier")
    progress = bar(total=opts["num_starts"], desc=f"spinglass N={opts['n']} converged starts", unit="start",
                   enabled=bool(cfg.progress))
    progress.update(sum(hi - lo for lo, hi in chunks) - sum(hi - lo for lo, hi in todo))
    t0 = time.perf_counter()
    try:
        for lo, hi in todo:
            base = progress.n

            def report(step: int, finished: int) -> None:
                progress.set_postfix(step=step, refresh=False)
                progress.update(base + finished - progress.n)

            res = sg.simulate(device=device, callback=report, select=slice(lo, hi), **opts)
            parts.save(f"starts-{lo:07d}", res)
            progress.update(base + (hi - lo) - progress.n)
    finally:
        progress.close()
    wall_s = time.perf_counter() - t0
    pieces = [parts.load(f"starts-{lo:07d}") for lo, _ in chunks]
    res = {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}
    columns = member_columns(res, opts)
    attrs = {
        **job_attributes(cfg, started),
        "E_0": e_0, "E_inf": e_inf, "N": opts["n"], "p": opts["p"], "method": opts["method"],
        "disorder_seed": opts["seed"], "index_computed": "index" in res,
        "index_rel_threshold": opts["index_rel_threshold"], "wall_s": wall_s,
    }
    path = write_results(path, {"members": columns}, attrs, {"members": "member"})
    parts.remove()
    print(summary(columns, e_0, e_inf, wall_s))
    print(f"[surfacekit] spin glass N={opts['n']}, p={opts['p']}, {opts['num_starts']} starts -> {path}")
    return path
