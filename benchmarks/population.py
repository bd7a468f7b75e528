"""Population training against a Python loop over separate torch modules and against the FLOP rate of
its own matrix products (run by hand).

K = 64 networks 64-100-10 ReLU on digits, minibatch SGD steps of 128 examples each (every member its
own minibatch order, as ``train/common.minibatches`` draws them), float32. Measured side by side in
one run, alternating, best of ``--repeats``:

* ``population``: the trainer's step (``models.forward`` on stacked parameters, ``member_losses``,
  one backward pass, one ``torch.optim.SGD`` step over the stacked tensors);
* ``population, compiled``: the same step with the forward pass and loss compiled by
  ``torch.compile`` (``--compile``; skipped where no compiler is available);
* ``loop``: K separate ``torch.nn.Sequential`` modules with their own optimizers, one after another;
* ``batched GEMMs``: only the five batched matrix products of the step, with its shapes
  ([K, B, 64] x [K, 64, 100] and [K, B, 100] x [K, 100, 10] forward; the weight gradients
  [K, 100, B] x [K, B, 64] and [K, 10, B] x [K, B, 100], the hidden gradient [K, B, 10] x [K, 10, 100]
  backward), the ceiling the step is measured against.

The table gives seconds, ratio to the population step, GFLOP/s (the five products' flops per step,
2 K B (2 x 64 x 100 + 3 x 100 x 10), over the step's time) and that rate as a fraction of the GEMMs'.

    python benchmarks/population.py [--members 64] [--steps 200] [--threads 2] [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from surfacekit.data import load_data
from surfacekit.models import MLPSpec, forward, member_losses
from surfacekit.population import init_population, member_seed
from surfacekit.train.common import minibatches


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def batches(n: int, batch: int, gens: list[torch.Generator], steps: int):
    """``steps`` index tensors [K, batch], each member in its own order (epochs as the trainer draws them)."""
    out = []
    while len(out) < steps:
        out += [idx for idx in minibatches(n, batch, gens, "cpu") if idx.shape[1] == batch]
    return out[:steps]


def step_fn(spec: MLPSpec, compiled: bool):
    def losses(params, x, y):
        return member_losses(forward(spec, params, x), y, "cross_entropy")

    return torch.compile(losses, dynamic=False) if compiled else losses


def population_run(spec, x, y, seeds, steps, batch, compiled=False):
    params = {k: v.requires_grad_(True) for k, v in init_population(spec, seeds, torch.float32).items()}
    opt = torch.optim.SGD(params.values(), lr=0.05)
    losses = step_fn(spec, compiled)
    order = batches(len(x), batch, [torch.Generator().manual_seed(s) for s in seeds], steps + 3)
    for idx in order[:3]:  # warm-up (and compilation)
        losses(params, x[idx], y[idx]).sum().backward()
    start = time.perf_counter()
    for idx in order[3:]:
        loss = losses(params, x[idx], y[idx]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def loop_run(spec, x, y, seeds, steps, batch):
    nets, opts = [], []
    for s in seeds:
        net = torch.nn.Sequential(torch.nn.Linear(spec.in_dim, spec.widths[0]), torch.nn.ReLU(),
                                  torch.nn.Linear(spec.widths[0], spec.out_dim))
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=0.05))
    order = batches(len(x), batch, [torch.Generator().manual_seed(s) for s in seeds], steps)
    start = time.perf_counter()
    for idx in order:
        for net, opt, rows in zip(nets, opts, idx):
            loss = torch.nn.functional.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def gemm_run(k, batch, steps):
    """The step's five batched matrix products alone, same shapes and operand layouts."""
    g = torch.Generator().manual_seed(0)
    x, w1, h, w2 = (torch.randn(*s, generator=g) for s in ((k, batch, 64), (k, 100, 64), (k, batch, 100), (k, 10, 100)))
    g2, g1 = torch.randn(k, batch, 10, generator=g), torch.randn(k, batch, 100, generator=g)
    start = time.perf_counter()
    for _ in range(steps):
        torch.bmm(x, w1.transpose(1, 2))
        torch.bmm(h, w2.transpose(1, 2))
        torch.bmm(g2.transpose(1, 2), h)
        torch.bmm(g2, w2)
        torch.bmm(g1.transpose(1, 2), x)
    return time.perf_counter() - start


def compiler_available() -> bool:
    try:
        torch.compile(lambda t: t + 1)(torch.ones(2))
        return True
    except Exception as exc:  # no C++ compiler, unsupported platform
        print(f"torch.compile not available here: {str(exc).splitlines()[0]}")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the best is reported")
    parser.add_argument("--compile", action="store_true", help="also time the step with torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data({"name": "digits"}).to("cpu", torch.float32)
    spec = MLPSpec(64, (100,), 10)
    seeds = [member_seed(0, k) for k in range(args.members)]
    x, y = data.x_train, data.y_train
    compiled = args.compile and compiler_available()
    sides = {"population": lambda: population_run(spec, x, y, seeds, args.steps, args.batch),
             "loop over torch modules": lambda: loop_run(spec, x, y, seeds, args.steps, args.batch),
             "batched GEMMs alone": lambda: gemm_run(args.members, args.batch, args.steps)}
    if compiled:
        sides["population, compiled"] = lambda: population_run(spec, x, y, seeds, args.steps, args.batch, True)
    population_run(spec, x, y, seeds[:2], 5, args.batch)  # warm-up
    loop_run(spec, x, y, seeds[:2], 5, args.batch)
    times: dict[str, list[float]] = {name: [] for name in sides}
    loads = [load()]
    for _ in range(args.repeats):  # alternate the sides so that machine noise hits all alike
        for name, run in sides.items():
            times[name].append(run())
        loads.append(load())
    best = {name: min(t) for name, t in times.items()}
    flops = 2 * args.members * args.batch * (2 * 64 * 100 + 3 * 100 * 10) * args.steps
    gemm = flops / best["batched GEMMs alone"]
    print(f"K={args.members} networks 64-100-10 ReLU, {args.steps} SGD steps of {args.batch}, float32, "
          f"{args.threads} threads, best of {args.repeats} alternating runs; load average {' -> '.join(loads)}")
    print(f"{'method':<28}{'seconds':>10}{'ratio':>8}{'GFLOP/s':>10}{'of GEMM':>9}")
    for name, t in best.items():
        rate = flops / t
        print(f"{name:<28}{t:>10.3f}{t / best['population']:>8.2f}{rate / 1e9:>10.1f}{rate / gemm:>9.0%}")


if __name__ == "__main__":
    main()
