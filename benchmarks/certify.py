"""Certification cost against the spectrum task's, member by member, and finders on embedded saddles.

    python benchmarks/certify.py certify JOB [--members 5] [--threads 1]
    python benchmarks/certify.py embedded SWEEP [--widths 4 6 8] [--per-width 3] [--starts 3]

``certify``: the first ``--members`` members of a training job (e.g. one width of
``experiment=choromanska_certified``) certified side by side in this process, with ``task=certify``'s
settings (L-BFGS-B and trust-region Newton to ``||g||^2 <= 1e-12``, the index, lambda_min and
lambda_max) on the trained objective in float64: one member per unit with the Lanczos index (the
path before batching), all in one unit (lockstep L-BFGS-B and the dense Hessians' eigenvalues of the
batch: the default), and ``task=spectrum``'s dense batch for reference. Prints seconds per member,
gradients, HVPs, the speed-up over the per-member path, whether classes and indices agree, and the load.

``embedded``: for each width in ``--widths`` of a sweep certified by ``task=certify`` (one hidden
layer, e.g. ``experiment=dauphin_index``), the first ``--per-width`` certified minima of every
narrower width embedded by zero units (a critical point, typically a saddle), certified with its
dense index; then every finder of ``--finders`` from ``--starts`` points 1e-3 away (uniform
direction). Prints per width and finder: runs, accepted (scale-free criterion), the fraction whose
index equals the dense index of the embedded point and whose loss is within 1e-8 of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from surfacekit import store
from surfacekit.config import group_defaults
from surfacekit.critical import find
from surfacekit.tasks import certify as certify_task
from surfacekit.tasks import spectrum as spectrum_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
from index_vs_loss import certified_points, embedded_saddles  # noqa: E402


def settings(task: str) -> dict:
    return OmegaConf.to_container(OmegaConf.create(group_defaults("task", task))[task], resolve=True)


def cost_table(source: Path, members: int) -> pd.DataFrame:
    """Certify the first ``members`` members three ways, side by side in this process: one member per
    unit with the Lanczos index (the path before batching: ``index.dense_limit`` was 1,000), one unit of
    all of them (lockstep L-BFGS-B, dense batched curvature: the default), and the spectrum task's
    dense batch for reference."""
    job = store.load_job(source)
    ids = [int(m) for m in job.members["member"][:members]]
    cfg = OmegaConf.create({"objective": "trained", "bn_mode": "batch", "chunk_size": None, "device": "cpu"})
    info = store.job_objective(job, ids[0])[2]
    base = settings("certify")
    base["store_theta"] = False
    member = {**base, "batch_size": 1, "index": {**base["index"], "method": "lanczos"}}
    variants = {"member units, Lanczos index (before)": (certify_task, member, [[m] for m in ids], "member"),
                "one batch, lockstep + dense (now)": (certify_task, base, [ids], "dense"),
                "spectrum task, dense batch": (spectrum_task, settings("spectrum"), [ids], "dense")}
    rows, outputs = [], {}
    for name, (task, s, units, path) in variants.items():
        t0 = time.perf_counter()
        outs = [task.compute(job, {"path": path, "members": u}, s, {"cfg": cfg, "info": info, "cache": {}})
                for u in units]
        seconds = time.perf_counter() - t0
        out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        outputs[name] = out
        rows.append({"variant": name, "members": len(ids), "s_per_member": seconds / len(ids),
                     "grads": int(out["grads"].sum()) if "grads" in out else 0, "hvps": int(out["hvps"].sum()),
                     "load": os.getloadavg()[0]})
    table = pd.DataFrame(rows)
    table["speedup"] = table.s_per_member.iloc[0] / table.s_per_member
    before, now = (outputs[k] for k in list(variants)[:2])
    same = (before["classification"] == now["classification"]).all() and (before["index_count"] == now["index_count"]).all()
    drift = max(float(np.nanmax(np.abs(before[c] - now[c]) / np.abs(now[c]))) for c in ("lambda_min", "lambda_max"))
    print(f"classes and indices equal: {bool(same)}; largest relative difference of lambda_min/lambda_max: {drift:.2g}")
    return table


def embedded_table(source: Path, widths: list[int], per_width: int, starts: int, finders: list[str]) -> pd.DataFrame:
    members = store.load_members(source)
    points = certified_points(source, members)
    saddles = embedded_saddles(source, points, per_width)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for width in widths:
        chosen = saddles[(saddles.width == width) & saddles.accepted.astype(bool)]
        if not len(chosen):
            continue
        job = store.load_job(source, chosen.job.iloc[0] or None)
        loss_fn, _, _ = store.job_objective(job, int(job.members["member"].iloc[0]))
        for finder in finders:
            ok = same = n = 0
            t0 = time.perf_counter()
            for _, s in chosen.iterrows():
                theta = torch.from_numpy(np.asarray(s.theta, dtype=np.float64))
                for _ in range(starts):
                    u = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
                    point = find(loss_fn, theta + 1e-3 * u / u.norm(), finder, max_iter=100)
                    n += 1
                    ok += point.accepted
                    same += point.accepted and point.index.count == s.index_count and abs(point.loss - s.loss) < 1e-8
            rows.append({"width": width, "saddles": len(chosen), "indices": " ".join(map(str, sorted(set(chosen.index_count)))),
                         "finder": finder, "runs": n, "accepted": ok, "accepted_rate": ok / n,
                         "same_index_and_loss": same / n, "seconds": time.perf_counter() - t0, "load": os.getloadavg()[0]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["certify", "embedded"])
    parser.add_argument("source", type=Path)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--per-width", type=int, default=3)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--finders", nargs="+", default=["newton_mr", "levenberg_marquardt", "newton", "gradnorm"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    table = (cost_table(args.source, args.members) if args.what == "certify"
             else embedded_table(args.source, args.widths, args.per_width, args.starts, args.finders))
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"threads {args.threads}, load {os.getloadavg()}")


if __name__ == "__main__":
    main()
