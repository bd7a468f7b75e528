"""``task=landscape``: interpolation paths and random-direction slices of finished training jobs.

    surfacekit task=landscape source=PATH [landscape.kind=[interpolation,slice1d,slice2d] ...]

``source`` is a job's ``results.h5`` or a sweep directory (each ``*/results.h5`` in it is processed).
The results go back into each source file (``store.add_groups``: copy, write, rename) under
``/landscape``; see docs/landscape.md for the layout. Config: ``conf/landscape/default.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from surfacekit import landscape as ls
from surfacekit.config import ConfigError, resolve_device
from surfacekit.population import flatten
from surfacekit.store import add_groups, load_group, now_iso
from surfacekit.tasks._common import load_job, source_files

KINDS = ("interpolation", "slice1d", "slice2d")
GROUP = "landscape"


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The validated ``landscape`` config as plain Python values."""
    s = OmegaConf.to_container(cfg.landscape, resolve=True)
    kinds = s.get("kind")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if not kinds or any(k not in KINDS for k in kinds):
        _fail("landscape.kind", s.get("kind"), f"one or a list of {list(KINDS)}")
    s["kind"] = kinds
    splits = s.get("splits") or []
    if not splits or any(v not in ("train", "test") for v in splits):
        _fail("landscape.splits", splits, "a non-empty list of train and test")
    members = s.get("members")
    if isinstance(members, int) and not isinstance(members, bool):
        members = s["members"] = [members]
    if members is not None and not (isinstance(members, list) and members
                                    and all(isinstance(m, int) and not isinstance(m, bool) for m in members)):
        _fail("landscape.members", members, "null or a non-empty list of member ids")
    bp = s.get("batch_points")
    if bp is not None and not (isinstance(bp, int) and bp >= 1):
        _fail("landscape.batch_points", bp, "null or an integer >= 1")
    ip, sl = s["interpolation"], s["slice"]
    if not (isinstance(ip["num"], int) and ip["num"] >= 2 and ip["hi"] > ip["lo"] and ip["lo"] <= 0 and ip["hi"] >= 1):
        _fail("landscape.interpolation", ip, "num >= 2 and lo <= 0 < 1 <= hi")
    pairs = ip.get("pairs")
    if not (pairs in ("adjacent", "all", "none", None) or (isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in pairs))):
        _fail("landscape.interpolation.pairs", pairs, "adjacent, all, none or a list of [a, b] member-id pairs")
    if not (isinstance(sl["num"], int) and sl["num"] >= 1 and sl["hi"] >= sl["lo"]):
        _fail("landscape.slice", {k: sl[k] for k in ("num", "lo", "hi")}, "num >= 1 and hi >= lo")
    if sl["normalization"] not in ls.NORMALIZATIONS:
        _fail("landscape.slice.normalization", sl["normalization"], f"one of {list(ls.NORMALIZATIONS)}")
    if sl["bias_bn"] not in ls.BIAS_BN:
        _fail("landscape.slice.bias_bn", sl["bias_bn"], f"one of {list(ls.BIAS_BN)}")
    return s


def _pairs(spec: Any, ids: list[int]) -> list[tuple[int, int]]:
    if spec in ("none", None):
        return []
    if spec == "adjacent":
        return list(zip(ids[:-1], ids[1:]))
    if spec == "all":
        return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
    return [(int(a), int(b)) for a, b in spec]


def _stack(results: list[dict[str, torch.Tensor]], skip: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {k: torch.stack([r[k] for r in results]).cpu().numpy() for k in results[0] if k not in skip}


def analyse(path: Path, s: dict[str, Any], device: torch.device, chunk_size: int | None, progress: bool) -> tuple[dict, dict, dict]:
    """Compute the configured landscape quantities of one job: (groups, dims, seconds per kind)."""
    job = load_job(path, device)
    loss = job.cfg.model.loss
    ids = [int(m) for m in load_group(path, "members")["member"]]
    chosen = ids if s["members"] is None else list(s["members"])
    unknown = sorted(set(chosen) - set(ids))
    if unknown:
        raise ConfigError(f"landscape.members={chosen} is invalid: {path} has no member(s) {unknown}; its members are {ids}")
    pos = {m: i for i, m in enumerate(ids)}
    theta = flatten(job.params)
    theta_init = flatten(job.init_params)
    ip, sl = s["interpolation"], s["slice"]
    common = dict(splits=s["splits"], chunk_size=chunk_size, batch_points=s["batch_points"])
    pairs = _pairs(ip["pairs"], chosen) if "interpolation" in s["kind"] else []
    bad = [p for p in pairs if p[0] not in pos or p[1] not in pos or p[0] == p[1]]
    if bad:
        raise ConfigError(f"landscape.interpolation.pairs={bad} is invalid: members are {ids} and a pair needs two different ones")
    work = len(chosen) * (int("interpolation" in s["kind"] and ip["init"]) + int("slice1d" in s["kind"])
                          + int("slice2d" in s["kind"])) + len(pairs)
    bar = tqdm(total=work, desc=f"landscape {path.parent.name}", unit="member", disable=not progress)
    groups: dict[str, dict[str, Any]] = {}
    dims: dict[str, str] = {}
    seconds: dict[str, float] = {}
    splits = s["splits"]
    scalar_names = [f"{sp}_{q}" for sp in splits for q in ("loss0", "loss1", "barrier", "barrier_linear")]

    if "interpolation" in s["kind"]:
        alphas = ls.interpolation_alphas(ip["num"], ip["lo"], ip["hi"])
        if ip["init"]:
            t0 = time.perf_counter()
            rows = []
            for m in chosen:
                rows.append(ls.interpolate(job.spec, theta_init[pos[m]], theta[pos[m]], job.data, loss, alphas, **common))
                bar.update()
            g = f"{GROUP}/interpolation_init"
            groups[g] = {"alpha": alphas.numpy(), "member": np.asarray(chosen), **_stack(rows, ("alpha",))}
            for sp in splits:
                groups[g][f"{sp}_monotone"] = np.asarray([ls.is_monotone(alphas, r[f"{sp}_loss"]) for r in rows])
            dims.update({g: "member,alpha", f"{g}/alpha": "alpha", f"{g}/member": "member",
                         **{f"{g}/{n}": "member" for n in scalar_names + [f"{sp}_monotone" for sp in splits]}})
            seconds["interpolation_init"] = time.perf_counter() - t0
        if pairs:
            t0 = time.perf_counter()
            rows = []
            for a, b in pairs:
                rows.append(ls.interpolate(job.spec, theta[pos[a]], theta[pos[b]], job.data, loss, alphas, **common))
                bar.update()
            g = f"{GROUP}/interpolation_pairs"
            groups[g] = {"alpha": alphas.numpy(), "pair_a": np.asarray([p[0] for p in pairs]),
                         "pair_b": np.asarray([p[1] for p in pairs]), **_stack(rows, ("alpha",))}
            dims.update({g: "pair,alpha", f"{g}/alpha": "alpha", f"{g}/pair_a": "pair", f"{g}/pair_b": "pair",
                         **{f"{g}/{n}": "pair" for n in scalar_names}})
            seconds["interpolation_pairs"] = time.perf_counter() - t0

    grid = ls.slice_grid(sl["num"], sl["lo"], sl["hi"])
    direction_args = dict(normalization=sl["normalization"], bias_bn=sl["bias_bn"])
    for kind, count in (("slice1d", 1), ("slice2d", 2)):
        if kind not in s["kind"]:
            continue
        t0 = time.perf_counter()
        rows, directions = [], []
        for m in chosen:
            d = ls.random_directions(job.spec, theta[pos[m]], count, seed=int(sl["seed"]) + m,
                                     orthogonalize=bool(sl["orthogonalize"]), **direction_args)
            if count == 1:
                rows.append(ls.slice_1d(job.spec, theta[pos[m]], d[0], job.data, loss, grid, **common))
            else:
                rows.append(ls.slice_2d(job.spec, theta[pos[m]], d, job.data, loss, grid, grid, **common))
            directions.append(d[0] if count == 1 else d)
            bar.update()
        g = f"{GROUP}/{kind}"
        axes = "member,x" if count == 1 else "member,x,y"
        groups[g] = {"member": np.asarray(chosen), **{k: v.numpy() for k, v in rows[0].items() if k in ("x", "y")},
                     **_stack(rows, ("x", "y"))}
        dims.update({g: axes, f"{g}/member": "member", f"{g}/x": "x", f"{g}/y": "y"})
        if sl["store_directions"]:
            groups[g]["directions"] = torch.stack(directions).cpu().numpy()
            dims[f"{g}/directions"] = "member,param" if count == 1 else "member,direction,param"
        seconds[kind] = time.perf_counter() - t0
    bar.close()
    return groups, dims, seconds


def summary(groups: dict[str, dict[str, Any]]) -> str:
    """Barrier tables (init -> solution per member, solution -> solution per pair)."""
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
        if g is not None:
            center = {k: v.reshape(len(v), -1)[:, v.reshape(len(v), -1).shape[1] // 2] for k, v in g.items() if k.endswith("_loss")}
            parts.append(f"{kind}: {g['train_loss'].shape[1:]} grid per member; loss min/center/max per member\n"
                         + pd.DataFrame({"member": g["member"],
                                         **{f"{k}_min": v.reshape(len(v), -1).min(1) for k, v in g.items() if k.endswith("_loss")},
                                         **{f"{k}_center": c for k, c in center.items()},
                                         **{f"{k}_max": v.reshape(len(v), -1).max(1) for k, v in g.items() if k.endswith("_loss")}})
                         .set_index("member").to_string(float_format="%.4g"))
    return "\n".join(parts)


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """Compute the landscape quantities of every source job and add them to its results file."""
    s = settings(cfg)
    files = source_files(cfg.get("source"))
    device = resolve_device(cfg.device)
    for path in files:
        started = now_iso()
        groups, dims, seconds = analyse(path, s, device, cfg.chunk_size, bool(cfg.progress))
        attrs = {"landscape_config": s, "landscape_seconds": seconds, "landscape_time": started,
                 "landscape_threads": torch.get_num_threads()}
        add_groups(path, groups, attrs, dims)
        print(f"[surfacekit] {path}: " + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()))
        print(summary(groups))
    print(f"[surfacekit] landscape added to {len(files)} results file(s) under /{GROUP}")
    return files[0] if len(files) == 1 else Path(cfg.source)
