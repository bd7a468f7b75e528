"""Certification cost against the spectrum task's, member by member, and finders on embedded saddles.

    python benchmarks/certify.py certify JOB [--members 5] [--threads 1]
    python benchmarks/certify.py embedded SWEEP [--widths 4 6 8] [--per-width 3] [--starts 3]

``certify``: for each of the first ``--members`` members of a training job (e.g. one width of
``experiment=choromanska_certified``), one after the other in this process: ``task=certify``'s
per-member computation (L-BFGS-B and trust-region Newton to ``||g||^2 <= 1e-12``, the index, lambda_min
and lambda_max) and ``task=spectrum``'s (top-5 and bottom-5 with certificates, the index, Hutchinson
trace, SLQ density), both with the tasks' default settings, on the trained objective in float64.
Prints seconds, gradients and HVPs per member, the ratio certify / spectrum, and the load average.

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
from surfacekit.tasks._analysis import member_objective

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
from index_vs_loss import certified_points, embedded_saddles  # noqa: E402


def settings(task: str) -> dict:
    return OmegaConf.to_container(OmegaConf.create(group_defaults("task", task))[task], resolve=True)


def cost_table(source: Path, members: int) -> pd.DataFrame:
    job = store.load_job(source)
    cfg = OmegaConf.create({"objective": "trained", "bn_mode": "batch", "chunk_size": None})
    cert_s, spec_s = settings("certify"), settings("spectrum")
    cert_s["store_theta"] = False
    rows = []
    for member in [int(m) for m in job.members["member"][:members]]:
        ctx = {"cfg": cfg, "info": store.job_objective(job, member)[2], "cache": {}}
        member_objective(job, member, ctx)  # the objective built outside the timings
        t0 = time.perf_counter()
        c = certify_task.compute(job, member, cert_s, ctx)
        t1 = time.perf_counter()
        s = spectrum_task.compute(job, member, spec_s, ctx)
        t2 = time.perf_counter()
        rows.append({"member": member, "P": int(sum(v[0].numel() for v in job.params.values())),
                     "class": str(c["classification"]), "certify_s": t1 - t0, "certify_grads": int(c["grads"]),
                     "certify_hvps": int(c["hvps"]), "spectrum_s": t2 - t1, "spectrum_hvps": int(s["hvps"]),
                     "ratio": (t1 - t0) / (t2 - t1), "load": os.getloadavg()[0]})
    return pd.DataFrame(rows)


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
    if args.what == "certify":
        print(f"median certify {table.certify_s.median():.2f} s, spectrum {table.spectrum_s.median():.2f} s per member; "
              f"ratio {table.ratio.median():.2f} (threads {args.threads}, load {os.getloadavg()})")


if __name__ == "__main__":
    main()
