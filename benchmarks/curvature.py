"""Speed and accuracy of surfacekit.curvature on trained digits MLPs (run by hand, float64, CPU).

    python benchmarks/curvature.py [--hidden 20 234] [--threads 1] [--index-cap 100]

Trains 64-h-10 tanh MLPs on all 1797 digits (full-batch Adam), computes the dense reference
spectrum once per net, then prints one table: HVP cost relative to a gradient for each backend,
top-5 and most negative eigenvalue (time, HVPs, max relative error), the index at the default
threshold (time, error vs dense) and the SLQ density (time, W1 distance / spectral range).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from sklearn.datasets import load_digits

from surfacekit.curvature import (
    dense_hessian,
    extreme_eigenvalues,
    hessian_operator,
    index,
    spectral_density,
)


def digits_mlp(hidden: int, steps: int, seed: int = 0):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64) / 16.0
    y = torch.tensor(digits.target)
    shapes = [(hidden, 64), (hidden,), (10, hidden), (10,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss_fn(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
        return torch.nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(sum(sizes), generator=g, dtype=torch.float64) / 8).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(theta).backward()
        opt.step()
    return loss_fn, theta.detach()


def timed(fn, repeat: int = 1, warmup: bool = False):
    if warmup:
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


class Rows(list):
    """Table rows that are also printed as they arrive (long runs show progress)."""

    def append(self, row: tuple[str, str]) -> None:
        print(f"  {row[0]}: {row[1]}", flush=True)
        super().append(row)


def bench(hidden: int, steps: int, index_cap: int) -> list[tuple[str, str]]:
    loss_fn, theta = digits_mlp(hidden, steps)
    p = theta.numel()
    rows = Rows()
    rows.append(("P", f"{p}"))
    rows.append(("train loss", f"{float(loss_fn(theta)):.2e}"))
    t_dense, eig = timed(lambda: torch.linalg.eigvalsh(dense_hessian(loss_fn, theta)), repeat=1)
    rows.append(("dense Hessian + eigvalsh (s)", f"{t_dense:.1f}"))
    scale = float(eig.abs().max())
    rows.append(("lambda_max / lambda_min", f"{float(eig[-1]):.3e} / {float(eig[0]):.3e}"))

    theta_req = theta.clone().requires_grad_(True)
    t_grad, _ = timed(lambda: torch.autograd.grad(loss_fn(theta_req), theta_req), repeat=20, warmup=True)
    v = torch.randn(p, dtype=torch.float64)
    v8 = torch.randn(8, p, dtype=torch.float64)
    for backend in ("graph", "jvp"):
        op = hessian_operator(loss_fn, theta, backend)
        t1, _ = timed(lambda: op(v), repeat=20, warmup=True)
        t8, _ = timed(lambda: op(v8), repeat=5, warmup=True)
        rows.append((f"HVP/grad [{backend}] (1 vec; per vec in batch of 8)", f"{t1 / t_grad:.2f}; {t8 / 8 / t_grad:.2f}"))
    t_build, _ = timed(lambda: hessian_operator(loss_fn, theta, "graph"), repeat=5, warmup=True)
    rows.append(("graph build (create_graph grad) / grad", f"{t_build / t_grad:.2f}"))

    t, res = timed(lambda: extreme_eigenvalues(loss_fn, theta, 5, "largest"))
    rows.append(("top-5: s, HVPs, max rel err", f"{t:.2f}, {res.num_hvps}, {rel_err(res.eigenvalues, eig.flip(0)[:5]):.1e}"))
    t, res = timed(lambda: extreme_eigenvalues(loss_fn, theta, 1, "smallest"))
    rows.append(("lambda_min: s, HVPs, rel err", f"{t:.2f}, {res.num_hvps}, {rel_err(res.eigenvalues, eig[:1]):.1e}"))
    t, res = timed(lambda: extreme_eigenvalues(loss_fn, theta, 5, "smallest"))
    rows.append(("bottom-5: s, HVPs, max rel err", f"{t:.2f}, {res.num_hvps}, {rel_err(res.eigenvalues, eig[:5]):.1e}"))

    exact = int((eig < -1e-5 * scale).sum())
    rows.append(("exact index at -1e-5 max|lambda| (count, fraction)", f"{exact}, {exact / p:.4f}"))
    rows.append(("exact fraction below 0 (noise-level signs)", f"{float((eig < 0).double().mean()):.4f}"))
    if p <= 6000:
        t, res = timed(lambda: index(loss_fn, theta))
        rows.append(("index [dense]: s, count error", f"{t:.2f}, {res.count - exact}"))
    t, res = timed(lambda: index(loss_fn, theta, method="lanczos", cap=index_cap))
    rows.append((f"index [lanczos, cap {index_cap}]: s, HVPs, count (at_least), error",
                 f"{t:.1f}, {res.num_hvps}, {res.count} ({res.at_least}), "
                 f"{'>= cap' if res.at_least else res.count - exact}"))

    t, d = timed(lambda: spectral_density(loss_fn, theta, num_probes=10, num_steps=80))
    w1 = wasserstein_distance(d.nodes.flatten().numpy(), eig.numpy(), d.weights.flatten().numpy())
    neg_mass = float((d.weights * (d.nodes < 0)).sum(dim=1).mean())
    rows.append(("SLQ 10x80: s, W1/range", f"{t:.2f}, {w1 / float(eig[-1] - eig[0]):.1e}"))
    rows.append(("SLQ Ritz-node mass below 0 (NOT an index)", f"{neg_mass:.4f}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[20, 234])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--index-cap", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    columns = [bench(h, args.steps, args.index_cap) for h in args.hidden]
    width = max(len(name) for name, _ in columns[0])
    for i, (name, _) in enumerate(columns[0]):
        print(f"| {name:<{width}} | " + " | ".join(f"{col[i][1]:>28}" for col in columns) + " |")


if __name__ == "__main__":
    main()
