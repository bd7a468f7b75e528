"""Costs of ``trainer.coupling`` and ``trainer.track_sharpness`` (run by hand).

1. Coupling overhead: the same training job (K workers 64-W-10 ReLU on digits, W = ``--width``, minibatch SGD,
   float32) with ``trainer.coupling`` none, easgd, eamsgd, averaging and round-robin easgd, tau = 1
   (an exchange at every step, the most expensive setting). Runs alternate; the best of
   ``--repeats`` is reported with its ratio to the uncoupled job.
2. Warm against cold Lanczos starts of the sharpness tracking: full-batch gradient descent
   (64-32-32-10 tanh, MSE, float64, 500 digits, the edge-of-stability preset's network) with
   lambda_max every ``--every`` steps, each check once warm-started from the previous top Ritz
   vector (what ``trainer.track_sharpness`` does) and once from a random vector, same tolerance.
   Prints the Hessian-vector products of both, their largest relative disagreement, and the
   tracking's share of the wall time (products against gradient steps).

    python benchmarks/coupling.py [--members 8] [--width 100] [--epochs 20] [--repeats 3] [--steps 600] [--every 10] [--lr 0.12]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from surfacekit.config import group_defaults
from surfacekit.data import load_data
from surfacekit.models import MLPSpec
from surfacekit.objective import objective_fn
from surfacekit.population import flatten, init_population, member_seed
from surfacekit.train.backprop import train
from surfacekit.train.tracking import top_eigenvalue

COUPLINGS = [("none", "synchronous"), ("easgd", "synchronous"), ("eamsgd", "synchronous"),
             ("averaging", "synchronous"), ("easgd", "round_robin")]


def coupling_table(members: int, width: int, epochs: int, repeats: int) -> None:
    data = load_data({"name": "digits"}).to("cpu", torch.float32)
    spec = MLPSpec(data.in_dim, (width,), 10, "relu")
    seeds = [member_seed(0, k) for k in range(members)]
    base = {**group_defaults("trainer", "backprop"), "epochs": epochs, "batch_size": 128, "eval_every": epochs,
            "tau": 1, "beta": 0.9, "delta": 0.9}
    best = {case: np.inf for case in COUPLINGS}
    for _ in range(repeats):
        for kind, communication in COUPLINGS:
            cfg = {**base, "coupling": kind, "communication": communication}
            params = init_population(spec, seeds, torch.float32)
            start = time.perf_counter()
            train(spec, data, params, seeds, {"name": "sgd", "lr": 0.05}, cfg, "cross_entropy", progress=False)
            best[(kind, communication)] = min(best[(kind, communication)], time.perf_counter() - start)
    steps = epochs * -(-len(data.x_train) // 128)
    print(f"\n1. Coupling overhead: K = {members}, 64-{width}-10 ReLU, {steps} steps of batch 128, tau = 1, "
          f"best of {repeats}")
    print(f"{'coupling':<26}{'seconds':>10}{'ratio to none':>16}")
    for (kind, communication), seconds in best.items():
        print(f"{kind + ' (' + communication + ')':<26}{seconds:>10.3f}{seconds / best[('none', 'synchronous')]:>16.2f}")


def tracking_table(steps: int, every: int, lr: float) -> None:
    data = load_data({"name": "digits", "train_size": 500}).to("cpu", torch.float64)
    spec = MLPSpec(data.in_dim, (32, 32), 10, "tanh", init="lecun")
    loss_fn = objective_fn(spec, data.x_train, data.y_train, "mse", objective="data")
    theta = flatten(init_population(spec, [member_seed(0, 0)], torch.float64))[0].clone()
    generator_warm, generator_cold = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    warm_vector, rows = None, []
    gradient_s = lanczos_s = 0.0
    for step in range(steps + 1):
        if step % every == 0:
            start = time.perf_counter()
            warm = top_eigenvalue(loss_fn, theta, warm_vector, generator_warm, 1e-4, 400)
            lanczos_s += time.perf_counter() - start
            cold = top_eigenvalue(loss_fn, theta, None, generator_cold, 1e-4, 400)
            warm_vector = warm[4]
            rows.append((step, warm[0], warm[2], cold[0], cold[2], warm[3] and cold[3]))
        start = time.perf_counter()
        point = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(point), point)
        theta = theta - lr * grad
        gradient_s += time.perf_counter() - start
    table = np.array([r[:5] for r in rows])
    disagreement = np.max(np.abs(table[:, 1] - table[:, 3]) / np.abs(table[:, 3]))
    print(f"\n2. Sharpness tracking: full-batch GD, eta {lr}, 64-32-32-10 tanh MSE on 500 digits (P = "
          f"{theta.numel()}), lambda_max every {every} steps, tol 1e-4")
    print(f"{'step':>6}{'lambda_max':>12}{'eta lam / 2':>13}{'warm HVPs':>11}{'cold HVPs':>11}")
    for step, value, warm_hvps, _, cold_hvps in table[:: max(1, len(table) // 10)]:
        print(f"{int(step):>6}{value:>12.4f}{lr * value / 2:>13.3f}{int(warm_hvps):>11}{int(cold_hvps):>11}")
    print(f"mean HVPs per check: warm {table[:, 2].mean():.1f}, cold {table[:, 4].mean():.1f} "
          f"(ratio {table[:, 4].mean() / table[:, 2].mean():.2f}); all converged: {all(r[5] for r in rows)}; "
          f"largest relative warm-cold difference {disagreement:.1e}")
    print(f"wall time: {steps} gradient steps {gradient_s:.2f} s, {len(rows)} warm checks {lanczos_s:.2f} s "
          f"(tracking / training {lanczos_s / gradient_s:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--width", type=int, default=100, help="hidden units of the coupling comparison's network")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each coupling; the best is reported")
    parser.add_argument("--steps", type=int, default=600, help="gradient-descent steps of the tracking comparison")
    parser.add_argument("--every", type=int, default=10, help="steps between lambda_max checks")
    parser.add_argument("--lr", type=float, default=0.12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    coupling_table(args.members, args.width, args.epochs, args.repeats)
    tracking_table(args.steps, args.every, args.lr)


if __name__ == "__main__":
    main()
