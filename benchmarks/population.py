"""Population training against a Python loop over separate torch modules and against the FLOP rate of
its own matrix products (run by hand).

K = 64 networks 64-100-10 ReLU on digits, minibatch SGD steps of 128 examples each (every member its
own minibatch order, as ``train/common.minibatches`` draws them), float32. Measured side by side in
one run, alternating, best of ``--repeats``:

* ``population (fused)``: the trainer's default step (``trainer.fused_step=true``): ``models.fused``
  gathers the minibatch, runs the hand-written forward and backward pass into the last step's
  buffers, then one SGD step over the stacked tensors (``optim.build_optimizer``:
  ``torch.optim.SGD(fused=True)``, the single-kernel update);
* ``fused, SGD for-loop`` / ``fused, SGD foreach``: the same with torch's default update on the CPU
  (one tensor at a time, ``foreach=False``) and its multi-tensor one (``foreach=True``);
* ``autograd``: the trainer's step with ``trainer.fused_step=false`` (``models.forward``,
  ``member_losses``, one backward pass, the fused SGD update), minibatch by ``population.gather_rows``;
* ``autograd, before``: the step as it was before the fused path: advanced indexing ``x[idx]`` for
  the minibatch, torch's default SGD update;
* ``autograd, compiled``: the autograd step with the forward pass and loss (and so their backward,
  through AOTAutograd) and torch's SGD step compiled by ``torch.compile`` (``--compile``; skipped
  where no compiler is available);
* ``loop``: K separate ``torch.nn.Sequential`` modules with their own optimizers, one after another;
* ``batched GEMMs alone``: only the five batched matrix products of the fused step, with its shapes
  and operand layouts ([K, B, 64] x [K, 64, 100] forward; the outputs as [K, 10, 100] x [K, 100, B];
  the weight gradients [K, 10, B] x [K, B, 100] and [K, 100, B] x [K, B, 64]; the hidden gradient
  [K, B, 10] x [K, 10, 100]), into preallocated outputs: the ceiling the step is measured against.
* ``GEMMs, autograd's layouts``: the same products in the layouts of the autograd step (the outputs
  as [K, B, 100] x [K, 100, 10]), each into a new tensor: the ceiling as it was measured before
  the fused step (shown for comparison, not the reference of the fractions).

The table gives seconds, the ratio to the fused population step, GFLOP/s (the five products' flops
per step, 2 K B (2 x 64 x 100 + 3 x 100 x 10), over the step's time), that rate as a fraction of the
GEMMs' and the speed-up over the loop.

    python benchmarks/population.py [--members 64] [--steps 200] [--threads 2] [--repeats 3] [--compile] [--cpu-time]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from surfacekit.data import load_data
from surfacekit.models import MLPSpec, forward, fused, member_losses
from surfacekit.optim import build_optimizer
from surfacekit.population import gather_rows, init_population, member_seed
from surfacekit.train.common import minibatches


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def batches(n: int, batch: int, gens: list[torch.Generator], steps: int):
    """``steps`` index tensors [K, batch], each member in its own order (epochs as the trainer draws them)."""
    out = []
    while len(out) < steps:
        out += [idx for idx in minibatches(n, batch, gens, "cpu") if idx.shape[1] == batch]
    return out[:steps]


def population_run(spec, x, y, seeds, steps, batch, clock=time.perf_counter, optimizer=None):
    """The trainer's fused step (``train/backprop.py`` with ``trainer.fused_step=true``)."""
    params = {k: v.requires_grad_(True) for k, v in init_population(spec, seeds, torch.float32).items()}
    if optimizer is None:  # the trainer's: optim.build_optimizer, SGD(fused=True)
        opt = build_optimizer(params.values(), {"name": "sgd", "lr": 0.05})
    else:
        opt = torch.optim.SGD(params.values(), lr=0.05, **optimizer)
    order = batches(len(x), batch, [torch.Generator().manual_seed(s) for s in seeds], steps + 3)
    tape = None
    start = 0.0
    for i, idx in enumerate(order):
        if i == 3:  # after the warm-up
            start = clock()
        losses, tape = fused.forward(spec, params, x, y, "cross_entropy", index=idx, reuse=tape)
        opt.zero_grad()
        for name, grad in fused.gradients(spec, params, tape).items():
            params[name].grad = grad
        opt.step()
    return clock() - start


def autograd_run(spec, x, y, seeds, steps, batch, clock=time.perf_counter, before=False, compiled=False):
    """The trainer's autograd step (``trainer.fused_step=false``). ``before``: the step before the fused
    path (advanced indexing ``x[idx]``, torch's default SGD update); ``compiled``: forward, loss and
    torch's default SGD step under ``torch.compile``."""
    params = {k: v.requires_grad_(True) for k, v in init_population(spec, seeds, torch.float32).items()}
    if before or compiled:
        opt = torch.optim.SGD(params.values(), lr=0.05)
    else:
        opt = build_optimizer(params.values(), {"name": "sgd", "lr": 0.05})

    def losses(params, x, y):
        return member_losses(forward(spec, params, x), y, "cross_entropy")

    update = opt.step
    if compiled:
        losses, update = torch.compile(losses, dynamic=False), torch.compile(opt.step)
    gather = (lambda t, idx: t[idx]) if before else gather_rows
    order = batches(len(x), batch, [torch.Generator().manual_seed(s) for s in seeds], steps + 3)
    start = 0.0
    for i, idx in enumerate(order):
        if i == 3:  # after the warm-up (and compilation)
            start = clock()
        loss = losses(params, gather(x, idx), gather(y, idx)).sum()
        opt.zero_grad()
        loss.backward()
        update()
    return clock() - start


def loop_run(spec, x, y, seeds, steps, batch, clock=time.perf_counter):
    nets, opts = [], []
    for s in seeds:
        net = torch.nn.Sequential(torch.nn.Linear(spec.in_dim, spec.widths[0]), torch.nn.ReLU(),
                                  torch.nn.Linear(spec.widths[0], spec.out_dim))
        nets.append(net)
        opts.append(torch.optim.SGD(net.parameters(), lr=0.05))
    order = batches(len(x), batch, [torch.Generator().manual_seed(s) for s in seeds], steps)
    start = clock()
    for idx in order:
        for net, opt, rows in zip(nets, opts, idx):
            loss = torch.nn.functional.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clock() - start


def gemm_run_before(k, batch, steps, clock=time.perf_counter):
    """The same five products in the layouts of the autograd step (outputs as h W^T [K, B, 10]) and of
    the ceiling before the fused step, each into a new tensor."""
    g = torch.Generator().manual_seed(0)
    x, w1, h, w2 = (torch.randn(*s, generator=g) for s in ((k, batch, 64), (k, 100, 64), (k, batch, 100), (k, 10, 100)))
    g2, g1 = torch.randn(k, batch, 10, generator=g), torch.randn(k, batch, 100, generator=g)
    start = clock()
    for _ in range(steps):
        torch.bmm(x, w1.transpose(1, 2))
        torch.bmm(h, w2.transpose(1, 2))
        torch.bmm(g2.transpose(1, 2), h)
        torch.bmm(g2, w2)
        torch.bmm(g1.transpose(1, 2), x)
    return clock() - start


def gemm_run(k, batch, steps, clock=time.perf_counter):
    """The fused step's five batched matrix products alone, same shapes and operand layouts, written
    into preallocated outputs as the step writes into its buffers."""
    g = torch.Generator().manual_seed(0)
    x, w1, h, w2 = (torch.randn(*s, generator=g) for s in ((k, batch, 64), (k, 100, 64), (k, batch, 100), (k, 10, 100)))
    g2, g1 = torch.randn(k, 10, batch, generator=g).transpose(1, 2), torch.randn(k, batch, 100, generator=g)
    z1, out, gw1, gw2, gh = (torch.empty(*s) for s in ((k, batch, 100), (k, 10, batch), (k, 100, 64), (k, 10, 100),
                                                        (k, batch, 100)))
    start = clock()
    for _ in range(steps):
        torch.bmm(x, w1.transpose(1, 2), out=z1)
        torch.bmm(w2, h.transpose(1, 2), out=out)
        torch.bmm(g2.transpose(1, 2), h, out=gw2)
        torch.bmm(g2, w2, out=gh)
        torch.bmm(g1.transpose(1, 2), x, out=gw1)
    return clock() - start


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
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of the wall clock: robust on a busy machine "
                             "with --threads 1 (with more threads it adds up the threads' times, waiting included)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data({"name": "digits"}).to("cpu", torch.float32)
    spec = MLPSpec(64, (100,), 10)
    seeds = [member_seed(0, k) for k in range(args.members)]
    x, y = data.x_train, data.y_train
    compiled = args.compile and compiler_available()
    clock = time.process_time if args.cpu_time else time.perf_counter
    run = (spec, x, y, seeds, args.steps, args.batch, clock)
    sides = {"population (fused)": lambda: population_run(*run),
             "fused, SGD for-loop": lambda: population_run(*run, optimizer={"foreach": False}),
             "fused, SGD foreach": lambda: population_run(*run, optimizer={"foreach": True}),
             "autograd": lambda: autograd_run(*run),
             "autograd, before": lambda: autograd_run(*run, before=True)}
    if compiled:
        sides["autograd, compiled"] = lambda: autograd_run(*run, compiled=True)
    sides["loop over torch modules"] = lambda: loop_run(*run)
    sides["batched GEMMs alone"] = lambda: gemm_run(args.members, args.batch, args.steps, clock)
    sides["GEMMs, autograd's layouts"] = lambda: gemm_run_before(args.members, args.batch, args.steps, clock)
    population_run(spec, x, y, seeds[:2], 5, args.batch)  # warm-up
    loop_run(spec, x, y, seeds[:2], 5, args.batch)
    times: dict[str, list[float]] = {name: [] for name in sides}
    loads = [load()]
    for _ in range(args.repeats):  # alternate the sides so that machine noise hits all alike
        for name, side in sides.items():
            times[name].append(side())
        loads.append(load())
    best = {name: min(t) for name, t in times.items()}
    flops = 2 * args.members * args.batch * (2 * 64 * 100 + 3 * 100 * 10) * args.steps
    gemm, loop = flops / best["batched GEMMs alone"], best["loop over torch modules"]
    fused_step = best["population (fused)"]
    print(f"K={args.members} networks 64-100-10 ReLU, {args.steps} SGD steps of {args.batch}, float32, "
          f"{args.threads} threads, {'CPU' if args.cpu_time else 'wall-clock'} time, best of {args.repeats} "
          f"alternating runs; load average {' -> '.join(loads)}")
    print(f"{'method':<28}{'seconds':>9}{'ratio':>7}{'GFLOP/s':>9}{'of GEMM':>9}{'vs loop':>9}")
    for name, t in best.items():
        rate = flops / t
        print(f"{name:<28}{t:>9.3f}{t / fused_step:>7.2f}{rate / 1e9:>9.1f}{rate / gemm:>9.0%}{loop / t:>8.2f}x")


if __name__ == "__main__":
    main()
