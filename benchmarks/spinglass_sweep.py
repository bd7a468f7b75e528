"""Finite-size sweep of gradient-descent endpoints in the spherical p-spin glass (run by hand).

For each N: ``--samples`` disorder samples x ``--starts`` random starts, descended with each
method; prints mean/std of H/N, the fraction of endpoints in [-1.75, -1.25], the median
Riemannian gradient norm, the index-0 fraction, the converged fraction and wall time; then fits
mean(N) = -E_inf + c N^{-2/3} (c only, E_inf from theory) and reports residuals.

    PYTHONPATH=. python benchmarks/spinglass_sweep.py --sizes 25 50 100 150 --samples 4 --starts 50
"""

import argparse
import time

import numpy as np
import torch

from surfacekit.spinglass import simulate, thresholds


def measure(n, p, samples, starts, method, seed, tol, max_steps):
    """Summary statistics of the endpoints at one size N (one dict)."""
    t0 = time.perf_counter()
    runs = [
        simulate(n, p, starts, seed=seed + 1000 * n + k, method=method, tol=tol, max_steps=max_steps)
        for k in range(samples)
    ]
    wall = time.perf_counter() - t0
    res = {key: np.concatenate([r[key] for r in runs]) for key in runs[0]}
    e = res["energy_per_n"]
    sample_means = np.array([r["energy_per_n"].mean() for r in runs])
    return {
        "N": n,
        "count": e.size,
        "mean": e.mean(),
        "sem": e.std(ddof=1) / np.sqrt(e.size),
        "std": e.std(ddof=1),
        "std_samples": sample_means.std(ddof=1) if samples > 1 else np.nan,
        "min": e.min(),
        "max": e.max(),
        "in_band": np.mean((e > -1.75) & (e < -1.25)),
        "median_grad": np.median(res["grad_norm"]),
        "converged": res["converged"].mean(),
        "index0": np.mean(res["index"] == 0) if "index" in res else np.nan,
        "median_steps": np.median(res["steps"]),
        "wall_s": wall,
    }


def fit_threshold(rows, e_inf):
    """Least squares for mean = -E_inf + c N^{-2/3}; also a free-intercept fit for comparison."""
    n = np.array([r["N"] for r in rows], dtype=float)
    m = np.array([r["mean"] for r in rows])
    sem = np.array([r["sem"] for r in rows])
    x = n ** (-2.0 / 3.0)
    c = np.sum((m + e_inf) * x) / np.sum(x * x)
    resid = m - (-e_inf + c * x)
    chi2 = np.sum((resid / sem) ** 2)
    slope, intercept = np.polyfit(x, m, 1)
    return c, resid, chi2, slope, intercept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 150])
    parser.add_argument("--p", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4, help="disorder samples per N")
    parser.add_argument("--starts", type=int, default=50, help="random starts per sample")
    parser.add_argument("--methods", nargs="+", default=["gd", "sgd"], choices=["gd", "sgd"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-7)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    e_0, e_inf = thresholds(args.p)
    print(f"p = {args.p}: -E_0 = {-e_0:.6f}, -E_inf = {-e_inf:.6f}; threads = {args.threads}")
    for method in args.methods:
        print(f"\nmethod = {method}  ({args.samples} disorder samples x {args.starts} starts per N)")
        print(
            f"{'N':>5} {'count':>5} {'mean':>8} {'sem':>7} {'std':>7} {'std_smp':>7} {'min':>8} "
            f"{'max':>8} {'in_band':>7} {'med|g|':>9} {'conv':>5} {'idx0':>5} {'med_st':>6} {'wall_s':>7}"
        )
        rows = []
        for n in args.sizes:
            r = measure(n, args.p, args.samples, args.starts, method, args.seed, args.tol, args.max_steps)
            rows.append(r)
            print(
                f"{r['N']:>5} {r['count']:>5} {r['mean']:>8.4f} {r['sem']:>7.4f} {r['std']:>7.4f} "
                f"{r['std_samples']:>7.4f} {r['min']:>8.4f} {r['max']:>8.4f} {r['in_band']:>7.3f} "
                f"{r['median_grad']:>9.2e} {r['converged']:>5.2f} {r['index0']:>5.2f} "
                f"{r['median_steps']:>6.0f} {r['wall_s']:>7.1f}",
                flush=True,
            )
        means = [r["mean"] for r in rows]
        print("mean falls with N:", all(a > b for a, b in zip(means, means[1:])))
        big = [r["std"] for r in rows if r["N"] >= 50]
        if len(big) >= 2:
            print("std shrinks over N >= 50:", all(a > b for a, b in zip(big, big[1:])))
        if len(rows) >= 2:
            c, resid, chi2, slope, intercept = fit_threshold(rows, e_inf)
            print(
                f"fit mean = -E_inf + c N^(-2/3): c = {c:.3f}, residuals = "
                f"{np.array2string(resid, precision=4)}, chi2 = {chi2:.1f} (dof {len(rows) - 1}); "
                f"free intercept: {intercept:.4f} + {slope:.3f} N^(-2/3)"
            )


if __name__ == "__main__":
    main()
