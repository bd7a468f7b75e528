"""Spectra at population scale (run by hand): the batched dense path against the per-member path, the
exact index at P = 17,560, and the full Choromanska spectra extrapolated from a sample.

    python benchmarks/spectra.py [--members 100] [--sample 4] [--threads 2] [--widths 5 10 25 50 100 250]
                                 [--width-sample 2] [--skip-index] [--skip-choromanska] [--out /tmp/surfacekit_spectra]

1. ``task=spectrum`` (top-5, bottom-5, exact index, trace, density; the preset's settings) on
   ``--members`` members of a trained 64-25-10 ReLU population (``experiment=choromanska``, P = 1,885).
   The per-member path is what the task did before: certified block Lanczos for the extreme
   eigenvalues, the dense index from P Hessian-vector products and eigvalsh, Hutchinson's trace, the
   SLQ density, member after member; it is timed on ``--sample`` members (alternating with the
   batched path, so that machine noise hits both) and scaled to ``--members``. The batched path
   (the task now) runs on all members: dense Hessians of 16 members per pass through the structure
   of the affine first layer, one eigvalsh each. Their numbers are compared on the sample.
2. The exact index of the trained digits 64-234-10 tanh MLP of benchmarks/curvature.py (P = 17,560;
   all 1,797 digits): the Hessian assembled through the affine first layer's structure, then the
   inertia of its LDL^T factorization, timed together and in parts, with eigvalsh of the same matrix
   for comparison (the count and the first eigenvalue not counted must agree).
3. The full ``experiment=choromanska`` spectra (6 widths x 100 networks): each width trained with
   ``--width-sample`` members, its spectra timed per member with the task's default path, and the
   total for 100 members per width extrapolated.

Every timing is wall-clock seconds on ``--threads`` threads with the load average printed beside it
(the machine is shared), and for the first table also the process's CPU seconds, which a busy
machine inflates far less (with ``--threads 1`` they stand for the time on a quiet machine). Both
sides of every ratio are measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from surfacekit import store
from surfacekit.config import group_defaults
from surfacekit.tasks import spectrum

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def train(out: Path, width: int, members: int, threads: int) -> Path:
    """A trained ``experiment=choromanska`` population of ``members`` networks of ``width`` hidden units."""
    run = out / f"w{width}-k{members}"
    if not (run / "results.h5").exists():
        subprocess.run([sys.executable, "-m", "surfacekit", "experiment=choromanska", f"model.width={width}",
                        f"population.size={members}", f"threads={threads}", "progress=false",
                        f"hydra.run.dir={run}"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run / "results.h5"


def settings(**changes) -> dict:
    return {**group_defaults("task", "spectrum")["spectrum"], **changes}


def context(threads: int) -> dict:
    cfg = OmegaConf.create({"objective": "trained", "bn_mode": "batch", "chunk_size": 4096, "device": "cpu",
                            "memory_limit_gb": None, "threads": threads})
    return {"cfg": cfg, "cache": {}}


def per_member(job, members: list[int], s: dict) -> tuple[float, float, list[dict]]:
    """The task's previous path, member after member: wall and CPU seconds per member, and the rows."""
    old = dict(s, index_method="dense")  # generic dense index from P products, as before
    rows, start, cpu = [], time.perf_counter(), time.process_time()
    for m in members:
        loss_fn, theta, _ = store.job_objective(job, m)
        rows.append(spectrum.member_spectrum(loss_fn, theta, old))
    return (time.perf_counter() - start) / len(members), (time.process_time() - cpu) / len(members), rows


def batched(job, members: list[int], s: dict, threads: int) -> tuple[float, float, list[dict]]:
    """The task's dense path, ``batch_size`` members per unit: wall and CPU seconds per member, and the rows."""
    start, cpu = time.perf_counter(), time.process_time()
    rows = []
    for i in range(0, len(members), int(s["batch_size"])):
        rows += spectrum.dense_rows(job, members[i : i + int(s["batch_size"])], s, context(threads))
    return (time.perf_counter() - start) / len(members), (time.process_time() - cpu) / len(members), rows


def spectra_table(args) -> None:
    path = train(Path(args.out), 25, args.members, args.threads)
    job = store.load_job(path)
    s = settings()
    members = list(range(args.members))
    sample = members[: args.sample]
    print(f"\n1. task=spectrum, {args.members} members 64-25-10 ReLU (P = 1,885), {args.threads} threads")
    print(f"   per-member path on {len(sample)} members ({load()})", flush=True)
    t_old, c_old, old_rows = per_member(job, sample, s)
    print(f"   batched path on {len(members)} members ({load()})", flush=True)
    t_new, c_new, new_rows = batched(job, members, s, args.threads)
    print(f"   per-member path again on {len(sample)} members ({load()})", flush=True)
    t_old2, c_old2, _ = per_member(job, sample, s)
    t_old, c_old = min(t_old, t_old2), min(c_old, c_old2)
    worst = {"top": 0.0, "bottom": 0.0}
    counts = 0
    for a, b in zip(old_rows, new_rows):
        scale = abs(float(b["density_nodes"].abs().max()))
        for key in worst:
            worst[key] = max(worst[key], float((torch.as_tensor(a[key]) - b[key]).abs().max()) / scale)
        counts += int(a["index_count"] == b["index_count"])
    print(f"   {'path':<34}{'s/member':>10}{f's/{args.members}':>10}{'ratio':>8}{'CPU s/member':>14}{'ratio':>8}")
    print(f"   {'per member (Lanczos, P products)':<34}{t_old:>10.3f}{t_old * args.members:>10.1f}{1.0:>8.2f}"
          f"{c_old:>14.3f}{1.0:>8.2f}")
    print(f"   {'batched dense (affine input)':<34}{t_new:>10.3f}{t_new * args.members:>10.1f}{t_old / t_new:>8.2f}"
          f"{c_new:>14.3f}{c_old / c_new:>8.2f}")
    print(f"   agreement on the sample: top-5 {worst['top']:.1e}, bottom-5 {worst['bottom']:.1e} (relative to "
          f"max|lambda|; the per-member values are Lanczos at tol 1e-8), index counts equal {counts}/{len(sample)}")


def index_table(args) -> None:
    from surfacekit import problems
    from surfacekit.curvature import affine_input_hessians, index
    from surfacekit.curvature.index import inertia_below
    from surfacekit.models import MLPSpec
    from surfacekit.objective import affine_input, objective_fn

    print(f"\n2. exact index, digits 64-234-10 tanh (P = 17,560, all 1,797 digits), {args.threads} threads")
    _, theta = problems.trained_digits_mlp(234, 300)
    x, y = problems.digits()
    spec = MLPSpec(64, (234,), 10, activation="tanh")
    loss_fn = objective_fn(spec, x, y, "cross_entropy", objective="data")
    structure = affine_input(spec, x, y, "cross_entropy", objective="data")
    print(f"   ({load()})", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    res = index(loss_fn, theta, method="inertia", structure=structure)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"   index (assembly + LDL^T inertia + scale + certificate): {total:.1f} s ({cpu:.1f} CPU s): "
          f"{res.summary()}, certificate {res.certificate:.3g} ({load()})", flush=True)
    start = time.perf_counter()
    hess, passes = affine_input_hessians(structure, theta[None])
    t_assembly = time.perf_counter() - start
    hess = hess[0]
    start = time.perf_counter()
    eig = torch.linalg.eigvalsh(hess)
    t_eig = time.perf_counter() - start
    start = time.perf_counter()
    count = inertia_below(hess, res.threshold)[0]
    t_ldl = time.perf_counter() - start
    exact = int((eig < res.threshold).sum())
    print(f"   parts: assembly {t_assembly:.1f} s ({passes} backward passes, not 17,560 products), LDL^T "
          f"{t_ldl:.1f} s, eigvalsh {t_eig:.1f} s ({load()})")
    print(f"   eigvalsh count {exact}, inertia count {count}, index() {res.count}; first eigenvalue not counted: "
          f"eigvalsh {float(eig[exact]):.6g}, index() {res.certificate:.6g}")


def choromanska_table(args) -> None:
    print(f"\n3. experiment=choromanska spectra, {args.width_sample} member(s) timed per width, {args.threads} "
          "threads, extrapolated to 100 per width")
    print(f"   {'width':>6}{'P':>8}{'path':>10}{'s/member':>10}{'s/100':>10}  index methods")
    total = 0.0
    for width in args.widths:
        path = train(Path(args.out), width, max(args.width_sample, 2), args.threads)
        job = store.load_job(path)
        p = sum(v[0].numel() for v in job.params.values())
        s = settings()
        members = list(range(args.width_sample))
        route = spectrum.job_path(p, s, "cpu", None)
        start = time.perf_counter()
        if route == "dense":
            rows = spectrum.dense_rows(job, members, s, context(args.threads))
        else:
            rows = []
            for m in members:
                loss_fn, theta, _ = store.job_objective(job, m)
                structure = store.job_population_objective(job, [m]).affine_input
                rows.append(spectrum.member_spectrum(loss_fn, theta, s, structure))
        per = (time.perf_counter() - start) / len(members)
        total += 100 * per
        methods = sorted({str(r["index_method"]) for r in rows})
        print(f"   {width:>6}{p:>8}{route:>10}{per:>10.2f}{100 * per:>10.0f}  {', '.join(methods)} ({load()})",
              flush=True)
    print(f"   total for 6 x 100 networks: {total / 60:.1f} min (extrapolated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--sample", type=int, default=4, help="members timed on the per-member path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[5, 10, 25, 50, 100, 250])
    parser.add_argument("--width-sample", type=int, default=2)
    parser.add_argument("--skip-spectra", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-choromanska", action="store_true")
    parser.add_argument("--out", default="/tmp/surfacekit_spectra")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"surfacekit spectra benchmark, torch {torch.__version__}, {args.threads} threads, {load()}")
    if not args.skip_spectra:
        spectra_table(args)
    if not args.skip_index:
        index_table(args)
    if not args.skip_choromanska:
        choromanska_table(args)
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    main()
