"""Sweep throughput: many tiny jobs through each launcher, then the merge (run by hand).

    python benchmarks/sweep_load.py [--joblib-jobs 200] [--local-jobs 20] [--submitit-jobs 10] [--n-jobs 2]

Every job trains one tiny network for one epoch, so the wall time per job is almost all launcher
and start-up overhead. Prints jobs per minute and seconds per job for each launcher, and checks
that the merged sweep file holds every job.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from surfacekit import store

TINY = ["population.size=1", "trainer.epochs=1", "model.width=2", "data.train_size=100", "progress=false",
        "trainer.eval_every=1"]


def sweep(launcher: str, jobs: int, root: Path, extra: list[str]) -> tuple[float, int]:
    """Run ``jobs`` jobs (seeds 0..jobs-1) through ``launcher``; return (wall seconds, merged jobs)."""
    out = root / launcher
    cmd = [sys.executable, "-m", "surfacekit", "-m", f"launcher={launcher}", *TINY, *extra,
           f"seed=range(0,{jobs})", f"hydra.sweep.dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{launcher} sweep failed:\n{done.stderr[-2000:]}")
    return wall, len(store.merge(out)["merged"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joblib-jobs", type=int, default=200)
    parser.add_argument("--local-jobs", type=int, default=20)
    parser.add_argument("--submitit-jobs", type=int, default=10)
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib workers")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = [("local", args.local_jobs, []), ("joblib", args.joblib_jobs, [f"hydra.launcher.n_jobs={args.n_jobs}"]),
                ("submitit_local", args.submitit_jobs, [])]
        for launcher, jobs, extra in plan:
            if jobs > 0:
                wall, merged = sweep(launcher, jobs, root, extra)
                rows.append((launcher, jobs, merged, wall))
    print(f"{'launcher':<16}{'jobs':>6}{'merged':>8}{'wall s':>10}{'jobs/min':>10}{'s/job':>8}")
    for launcher, jobs, merged, wall in rows:
        print(f"{launcher:<16}{jobs:>6}{merged:>8}{wall:>10.1f}{60 * jobs / wall:>10.1f}{wall / jobs:>8.2f}")


if __name__ == "__main__":
    main()
