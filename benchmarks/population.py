"""Population training versus a Python loop over separate torch modules (run by hand).

K = 64 networks 64-100-10 ReLU on digits, 200 minibatch SGD steps of 128 examples each, float32.
Both sides do the same arithmetic; the table prints seconds and the ratio, measured in one run.

    python benchmarks/population.py [--members 64] [--steps 200] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from surfacekit.data import load_data
from surfacekit.models import MLPSpec, forward, member_losses
from surfacekit.population import init_population, member_seed


def population_run(spec, x, y, seeds, steps, batch):
    params = {k: v.requires_grad_(True) for k, v in init_population(spec, seeds, torch.float32).items()}
    opt = torch.optim.SGD(params.values(), lr=0.05)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.stack([torch.randint(0, len(x), (batch,), generator=g) for g in gens])
        loss = member_losses(forward(spec, params, x[idx]), y[idx], "cross_entropy").sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def loop_run(spec, x, y, seeds, steps, batch):
    nets, opts, gens = [], [], []
    for s in seeds:
        net = torch.nn.Sequential(torch.nn.Linear(spec.in_dim, spec.widths[0]), torch.nn.ReLU(),
                                  torch.nn.Linear(spec.widths[0], spec.out_dim))
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=0.05))
        gens.append(torch.Generator().manual_seed(s))
    start = time.perf_counter()
    for _ in range(steps):
        for net, opt, g in zip(nets, opts, gens):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data({"name": "digits"}).to("cpu", torch.float32)
    spec = MLPSpec(64, (100,), 10)
    seeds = [member_seed(0, k) for k in range(args.members)]
    x, y = data.x_train, data.y_train
    population_run(spec, x, y, seeds[:2], 5, args.batch)  # warm-up
    loop_run(spec, x, y, seeds[:2], 5, args.batch)
    pops, loops = [], []
    for _ in range(args.repeats):  # alternate the two sides so that machine noise hits both alike
        pops.append(population_run(spec, x, y, seeds, args.steps, args.batch))
        loops.append(loop_run(spec, x, y, seeds, args.steps, args.batch))
    t_pop, t_loop = min(pops), min(loops)
    print(f"K={args.members} networks 64-100-10 ReLU, {args.steps} SGD steps of {args.batch}, {args.threads} threads, "
          f"best of {args.repeats} alternating runs")
    print(f"{'method':<28}{'seconds':>10}{'ratio':>10}")
    print(f"{'population (batched)':<28}{t_pop:>10.2f}{1.0:>10.2f}")
    print(f"{'loop over torch modules':<28}{t_loop:>10.2f}{t_loop / t_pop:>10.2f}")


if __name__ == "__main__":
    main()
