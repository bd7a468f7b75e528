"""``task=landscape``: interpolation paths and random-direction slices of finished training jobs.

    surfacekit task=landscape source=PATH [landscape.kind=[interpolation,slice1d,slice2d] ...]

``source`` is a job's results file or run directory, or a sweep directory. Each unit (one member's
init-to-solution path, one pair's solution-to-solution path, one member's 1D or 2D slice) is saved
as it finishes; diverged members are skipped with a warning. Written to
``SOURCE/analyses/landscape-HASH/landscape.h5`` under ``/jobs/<job>/landscape/...`` (docs/landscape.md).
Losses are the data loss of each split; with ``objective=trained`` and an L2 term in training, the
training objective along the path or slice (``train_objective``, the data loss plus the L2 term the
method applied) is stored beside it. Batch-norm networks are evaluated at every point with the
training set's full-data statistics at that point (``bn_mode=batch``; ``bn_mode=eval`` is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from surfacekit import landscape as ls
from surfacekit.config import ConfigError
from surfacekit.objective import l2_penalty
from surfacekit.population import flatten, unflatten
from surfacekit.seeds import derive_seed
from surfacekit.tasks import _analysis

GROUP = "landscape"
KINDS = ("interpolation", "slice1d", "slice2d")


def _kinds(s: dict) -> list[str]:
    return [s["kind"]] if isinstance(s["kind"], str) else list(s["kind"])


def _pairs(spec: Any, ids: list[int]) -> list[tuple[int, int]]:
    if spec in ("none", None):
        return []
    if spec == "adjacent":
        return list(zip(ids[:-1], ids[1:]))
    if spec == "all":
        return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    return [(int(a), int(b)) for a, b in spec]


def plan(ref, members: pd.DataFrame, s: dict) -> dict[str, tuple]:
    chosen = _analysis.select_members(members, s.get("members"), "landscape.members", ref.name)
    kinds = _kinds(s)
    units: dict[str, tuple] = {}
    if "interpolation" in kinds:
        if s["interpolation"]["init"]:
            units.update({f"init-{m:06d}": ("init", m) for m in chosen})
        pairs = _pairs(s["interpolation"]["pairs"], chosen)
        bad = [p for p in pairs if p[0] not in chosen or p[1] not in chosen or p[0] == p[1]]
        if bad:
            raise ConfigError(f"landscape.interpolation.pairs={bad} is invalid: a pair needs two different "
                                        f"analysed members of {chosen}")
        units.update({f"pair-{a:06d}-{b:06d}": ("pair", a, b) for a, b in pairs})
    for kind in ("slice1d", "slice2d"):
        if kind in kinds:
            units.update({f"{kind}-{m:06d}": (kind, m) for m in chosen})
    return units


def _l2(job, l2: dict, points: torch.Tensor) -> torch.Tensor:
    """The trained objective's L2 term at every point of ``points`` [..., P] (shape [...])."""
    flat = points.reshape(-1, points.shape[-1])
    return torch.as_tensor(l2_penalty(unflatten(flat, job.spec), l2), dtype=flat.dtype).expand(len(flat)).reshape(points.shape[:-1])


def compute(job, unit: tuple, s: dict, ctx: dict) -> dict[str, Any]:
    cache = ctx["cache"]
    if "thetas" not in cache:
        cache["thetas"] = flatten(job.params)
        cache["init"] = flatten(job.init_params)
    pos = _analysis.member_positions(job.members)
    theta, init = cache["thetas"], cache["init"]
    l2 = ctx["info"]["l2_coefficients"]
    ip, sl = s["interpolation"], s["slice"]
    common = dict(splits=s["splits"], chunk_size=ctx["cfg"].get("chunk_size"), batch_points=s["batch_points"])
    loss = job.cfg.model.loss
    kind = unit[0]
    if kind in ("init", "pair"):
        a, b = (init[pos[unit[1]]], theta[pos[unit[1]]]) if kind == "init" else (theta[pos[unit[1]]], theta[pos[unit[2]]])
        alphas = ls.interpolation_alphas(ip["num"], ip["lo"], ip["hi"])
        out = ls.interpolate(job.spec, a, b, job.data, loss, alphas, **common)
        if kind == "init":
            for sp in s["splits"]:
                out[f"{sp}_monotone"] = torch.tensor(ls.is_monotone(alphas, out[f"{sp}_loss"]))
        if l2 and "train" in s["splits"]:
            path = (1 - alphas)[:, None] * a[None] + alphas[:, None] * b[None]
            objective = out["train_loss"] + _l2(job, l2, path)
            ends = (float(out["train_loss0"] + _l2(job, l2, a)), float(out["train_loss1"] + _l2(job, l2, b)))
            out["train_objective"] = objective
            out["train_objective_barrier"] = torch.tensor(ls.barrier_height(alphas, objective, *ends, "max"))
        return {k: _analysis.to_numpy(v) for k, v in out.items()}
    count = 1 if kind == "slice1d" else 2
    m = unit[1]
    seed = derive_seed(sl["seed"], m) if sl.get("seed") is not None else None
    d, seed = ls.random_directions(job.spec, theta[pos[m]], count, seed=seed, orthogonalize=bool(sl["orthogonalize"]),
                                   normalization=sl["normalization"], bias_bn=sl["bias_bn"], return_seed=True)
    grid = ls.slice_grid(sl["num"], sl["lo"], sl["hi"])
    if count == 1:
        out = ls.slice_1d(job.spec, theta[pos[m]], d[0], job.data, loss, grid, **common)
        points = theta[pos[m]][None] + grid[:, None] * d[0][None]
    else:
        out = ls.slice_2d(job.spec, theta[pos[m]], d, job.data, loss, grid, grid, **common)
        points = (theta[pos[m]][None, None] + grid[:, None, None] * d[0][None, None] + grid[None, :, None] * d[1][None, None])
    if l2 and "train" in s["splits"]:
        out["train_objective"] = out["train_loss"] + _l2(job, l2, points)
    if sl["store_directions"]:
        out["directions"] = d[0] if count == 1 else d
    out["seed"] = np.int64(seed)
    return {k: _analysis.to_numpy(v) for k, v in out.items()}


def assemble(ref, members: pd.DataFrame, rows: dict[str, dict], s: dict) -> tuple[dict, dict]:
    groups: dict[str, dict] = {}
    dims: dict[str, str] = {}
    scalar = lambda r: {k: v for k, v in r.items() if k not in ("alpha", "x", "y")}  # noqa: E731
    init = sorted(k for k in rows if k.startswith("init-"))
    if init:
        g = f"{GROUP}/interpolation_init"
        groups[g] = {"alpha": rows[init[0]]["alpha"], "member": np.array([int(k.split("-")[1]) for k in init]),
                     **{k: np.stack([rows[u][k] for u in init]) for k in scalar(rows[init[0]])}}
        dims.update({g: "member,alpha", f"{g}/alpha": "alpha", f"{g}/member": "member"})
        dims.update({f"{g}/{k}": "member" for k, v in groups[g].items() if np.ndim(v) == 1 and k not in ("alpha",)})
    pairs = sorted(k for k in rows if k.startswith("pair-"))
    if pairs:
        g = f"{GROUP}/interpolation_pairs"
        groups[g] = {"alpha": rows[pairs[0]]["alpha"], "pair_a": np.array([int(k.split("-")[1]) for k in pairs]),
                     "pair_b": np.array([int(k.split("-")[2]) for k in pairs]),
                     **{k: np.stack([rows[u][k] for u in pairs]) for k in scalar(rows[pairs[0]])}}
        dims.update({g: "pair,alpha", f"{g}/alpha": "alpha"})
        dims.update({f"{g}/{k}": "pair" for k, v in groups[g].items() if np.ndim(v) == 1 and k != "alpha"})
    for kind in ("slice1d", "slice2d"):
        keys = sorted(k for k in rows if k.startswith(f"{kind}-"))
        if not keys:
            continue
        g = f"{GROUP}/{kind}"
        first = rows[keys[0]]
        groups[g] = {"member": np.array([int(k.split("-")[1]) for k in keys]),
                     **{k: first[k] for k in ("x", "y") if k in first},
                     **{k: np.stack([rows[u][k] for u in keys]) for k in scalar(first)}}
        axes = "member,x" if kind == "slice1d" else "member,x,y"
        dims.update({g: axes, f"{g}/member": "member", f"{g}/seed": "member", f"{g}/x": "x", f"{g}/y": "y"})
        if "directions" in first:
            dims[f"{g}/directions"] = "member,param" if kind == "slice1d" else "member,direction,param"
    return groups, dims


def summary(groups: dict) -> str:
    """Barrier tables (init -> solution per member, solution -> solution per pair), slice ranges."""
    parts = []
    init = groups.get(f"{GROUP}/interpolation_init")
    if init is not None:
        cols = {c: init[c] for c in init if c.endswith(("_loss0", "_loss1", "_barrier", "_monotone"))}
        parts.append("init -> solution\n" + pd.DataFrame({"member": init["member"], **cols}).set_index("member")
                     .to_string(float_format="%.4g"))
    pairs = groups.get(f"{GROUP}/interpolation_pairs")
    if pairs is not None:
        cols = {c: pairs[c] for c in pairs if c.endswith(("_barrier", "_barrier_linear"))}
        parts.append("solution -> solution\n" + pd.DataFrame({"a": pairs["pair_a"], "b": pairs["pair_b"], **cols})
                     .to_string(index=False, float_format="%.4g"))
    for kind in ("slice1d", "slice2d"):
        g = groups.get(f"{GROUP}/{kind}")
        if g is None:
            continue
        # the grid point nearest the trained point (0 itself when the grid holds it: odd num, lo = -hi)
        near = [int(np.abs(g[axis]).argmin()) for axis in ("x", "y")[:1 if kind == "slice1d" else 2]]
        at = ", ".join(f"{axis}={g[axis][i]:.4g}" for axis, i in zip(("x", "y"), near))
        losses = {k: v for k, v in g.items() if k.endswith("_loss")}
        table = pd.DataFrame({"member": g["member"], **{f"{k}_min": v.reshape(len(v), -1).min(1) for k, v in losses.items()},
                              **{f"{k}_center": v[(slice(None), *near)] for k, v in losses.items()},
                              **{f"{k}_max": v.reshape(len(v), -1).max(1) for k, v in losses.items()}}).set_index("member")
        exact = all(g[axis][i] == 0 for axis, i in zip(("x", "y"), near))
        centre = f"center at {at}" + ("" if exact else " (the grid holds no 0: the point nearest the solution)")
        parts.append(f"{kind}: {g['train_loss'].shape[1:] if 'train_loss' in g else ''} grid per member; {centre}\n"
                     + table.to_string(float_format="%.4g"))
    return "\n".join(parts)


TASK = _analysis.Task(GROUP, plan, compute, assemble, summary)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Compute the landscape quantities of every job of ``source``; write ``out_dir/landscape.h5``."""
    if cfg.bn_mode != "batch":
        raise ConfigError("bn_mode=eval is not available for task=landscape: batch-norm networks are evaluated with "
                          "the training set's statistics at every point of a path or slice (bn_mode=batch)")
    return _analysis.run(TASK, cfg, out_dir)
