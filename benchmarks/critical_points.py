"""Acceptance rates of the critical-point finders on a small tanh memorization net (P = 71), a
deep linear autoencoder (P = 20) or toy saddles (P = 2).

    python benchmarks/critical_points.py [--problem memorization|autoencoder|toy] [--starts 60]
        [--max-iter 100] [--finders newton_mr gradnorm ...] [--weight-decay 0.01] [--minres-maxiter 25]
        [--start-scale 1.0]

``--problem autoencoder``: 5 -> 2 -> 5 linear autoencoder with data covariance eigenvalues
(5, 3, 2, 1.2, 0.5); starts drawn at random (N(0, start_scale^2) per weight, not near any critical
point); every accepted endpoint is checked against Baldi-Hornik's closed form (its loss is half a
sum of left-out eigenvalues; for full-rank subsets, its index is the pair count).

``--problem toy``: x^2 - y^2, x^3 - 3xy^2 (degenerate) and (w1 w2 - 1.5)^2 + 0.04 |w|^2, each from
``--starts`` points N(0, 0.1^2) around the saddle at the origin; ``at_saddle`` counts accepted
endpoints within 1e-3 of it.

A one-hidden-layer tanh net 5-6-5 (P = 71, MSE) is trained by full-batch gradient descent on N
random Gaussian inputs and targets (memorization), storing the trajectory. Start points are drawn
from it uniformly in loss; every finder runs from the same starts in float64. Prints, per finder:
acceptance rate (the default, scale-free criterion ||g|| <= 1e-6 ||g_0|| + 1e-10 ||H||_2) and,
beside it, how many endpoints pass the absolute ||g||^2 < 1e-10 (``accepted_abs``), fraction of rejected endpoints that are gradient-flat (flatness
ratio < 0.05), quantiles of ||g||^2 over rejected runs, Spearman rho(loss, index) over accepted
points with a permutation p-value, the same rho over all endpoints (not evidence of anything), and
the mean HVP cost. ``--weight-decay`` adds ``wd/2 ||theta||^2`` to the loss (training and finders),
which gives the problem finite, non-degenerate minima (without it the loss keeps decreasing as
weights grow and tanh saturates). ``--minres-maxiter`` sets Newton-MR's inner budget (default min(P, 1000)).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from surfacekit import problems
from surfacekit.critical import METHODS, find, sample_uniform_in_loss
from surfacekit.stats import spearman_permutation


TOY = {  # the surfaces of surfacekit.problems, by formula
    "x^2 - y^2": problems.saddle,
    "x^3 - 3xy^2": problems.monkey,
    "(w1 w2 - 1.5)^2 + 0.04|w|^2": problems.two_weight,
}


def run_finder(loss_fn, starts: torch.Tensor, method: str, max_iter: int, closed_form=None, **options) -> pd.DataFrame:
    """One row per start; ``closed_form(theta) -> (subset, loss, index) or None`` adds the autoencoder checks."""
    rows = []
    for theta in starts:
        r = find(loss_fn, theta, method, max_iter=max_iter, **options)
        extra = {}
        if closed_form is not None:
            cf = closed_form(r.theta) if r.accepted else None
            extra = {"subset": None if cf is None else cf[0],
                     "loss_matches": cf is not None and abs(cf[1] - r.loss) < 1e-8,
                     "index_checkable": cf is not None and cf[2] is not None,
                     "index_matches": cf is not None and cf[2] is not None and cf[2] == r.index.count}
        rows.append({**extra, "index_count": r.index.count, "start_loss": r.start_loss, "loss": r.loss, "grad_norm2": r.grad_norm2,
                     "accepted": r.accepted, "accepted_absolute": r.accepted_absolute, "stop": r.stop,
                     "at_saddle": r.accepted and float(r.theta.norm()) < 1e-3,
                     "gradient_flat": r.gradient_flat, "flat_ratio": r.flat_ratio,
                     "index_fraction": r.index.fraction, "hvps": r.num_hvps, "iterations": r.iterations,
                     "solve_residual": np.median(r.solve_residuals) if r.solve_residuals else np.nan})
    return pd.DataFrame(rows)


def summarize(method: str, frame: pd.DataFrame, seconds: float) -> dict:
    acc, rej = frame[frame.accepted], frame[~frame.accepted]
    q = rej.grad_norm2.quantile([0.1, 0.5, 0.9]).to_numpy() if len(rej) else [np.nan] * 3
    rho_acc, p_acc = spearman_permutation(acc.loss.to_numpy(), acc.index_fraction.to_numpy()) if len(acc) > 2 else (np.nan, np.nan)
    rho_all, _ = spearman_permutation(frame.loss.to_numpy(), frame.index_fraction.to_numpy(), n_perm=0)
    return {"finder": method, "starts": len(frame), "accepted": len(acc), "acceptance": len(acc) / len(frame),
            "accepted_abs": int(frame.accepted_absolute.sum()), "at_saddle": int(frame.at_saddle.sum()),
            "stops": " ".join(f"{k}:{v}" for k, v in frame.stop.value_counts().items()),
            "flat_of_rejected": rej.gradient_flat.mean() if len(rej) else np.nan,
            "g2_rej_q10": q[0], "g2_rej_q50": q[1], "g2_rej_q90": q[2],
            "rho_accepted": rho_acc, "p_accepted": p_acc, "rho_all": rho_all,
            "median_iters_accepted": acc.iterations.median() if len(acc) else np.nan,
            "solve_relres": frame.solve_residual.median(), "mean_hvps": frame.hvps.mean(),
            "distinct_index": acc.index_count.nunique(), "seconds": seconds,
            **({"closed_form_loss_ok": f"{int(acc.loss_matches.sum())}/{len(acc)}",
                "closed_form_index_ok": f"{int(acc.index_matches.sum())}/{int(acc.index_checkable.sum())}",
                "subsets": acc.subset.nunique()} if "subset" in frame else {})}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=["memorization", "autoencoder", "toy"], default="memorization",
                        help="memorization: tanh net, starts from its GD trajectory; autoencoder: deep linear "
                             "autoencoder (d 5, p 2), starts N(0, start_scale^2) at random; toy: three 2-D saddles")
    parser.add_argument("--start-scale", type=float, default=1.0, help="autoencoder: std of the random starts")
    parser.add_argument("--starts", type=int, default=60)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--finders", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--n", type=int, default=20, help="memorized examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--minres-maxiter", type=int, default=None, help="Newton-MR inner budget (default min(P, 1000))")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    closed_form = None
    if args.problem == "toy":
        gen = torch.Generator().manual_seed(args.seed + 1)
        starts = 0.1 * torch.randn(args.starts, 2, generator=gen, dtype=torch.float64)
        rows = []
        for name, fn in TOY.items():
            for method in args.finders:
                t0 = time.perf_counter()
                frame = run_finder(fn, starts, method, args.max_iter)
                rows.append({"surface": name, **summarize(method, frame, time.perf_counter() - t0)})
        print(pd.DataFrame(rows)[["surface", "finder", "starts", "accepted", "accepted_abs", "at_saddle", "distinct_index",
                                  "median_iters_accepted", "mean_hvps", "stops"]].to_markdown(index=False, floatfmt=".3g"))
        return
    if args.problem == "autoencoder":
        d, p = 5, 2
        autoencoder = problems.linear_autoencoder(d, p, seed=args.seed)
        loss_fn, lam, closed_form = autoencoder.loss_fn, autoencoder.eigenvalues, autoencoder.closed_form
        gen = torch.Generator().manual_seed(args.seed + 1)
        starts = args.start_scale * torch.randn(args.starts, 2 * d * p, generator=gen, dtype=torch.float64)
        print(f"deep linear autoencoder d = {d}, p = {p} (P = {2 * d * p}), eigenvalues {lam.tolist()}; "
              f"{args.starts} random starts N(0, {args.start_scale}^2)")
    else:
        loss_fn, theta0, spec = problems.memorization_net(n=args.n, seed=args.seed, weight_decay=args.weight_decay)
        thetas, losses = problems.gd_trajectory(loss_fn, theta0)
        print(f"P = {theta0.numel()}, N = {args.n}, weight decay {args.weight_decay}; trajectory of {len(losses)} points, loss {losses[0]:.4g} -> {losses[-1]:.4g}")
        starts = thetas[sample_uniform_in_loss(losses, args.starts, seed=args.seed)]
    rows = []
    for method in args.finders:
        t0 = time.perf_counter()
        options = {"minres_maxiter": args.minres_maxiter} if method == "newton_mr" else {}
        frame = run_finder(loss_fn, starts, method, args.max_iter, closed_form, **options)
        rows.append(summarize(method, frame, time.perf_counter() - t0))
        print(pd.DataFrame(rows[-1:]).to_markdown(index=False, floatfmt=".3g"), flush=True)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
