"""Cost of the curvature products the second-order trainers use, relative to a gradient, measured side
by side on one population (run by hand; float64, CPU).

    python benchmarks/second_order.py [--members 8] [--hidden 25] [--examples 1000] [--repeats 20] [--threads 1]

For a population of 64-h-10 tanh MLPs on digits (cross-entropy, full batch) it times, in one process
and interleaved: a gradient of the population objective; a Gauss-Newton-vector product
(``curvature.gauss_newton_operator``: one graph per point, then double-backward Jv, the output
Hessian and J^T); an exact Hessian-vector product (``curvature.hessian_operator``, graph backend);
and, for comparison, a GGN product by forward mode (``torch.func.jvp`` of the outputs, then a vjp).
Operator construction (the graphs) is timed separately, since Hessian-free builds one per outer
iteration and reuses it for every CG step. Prints a table of milliseconds and ratios to the gradient.
"""

from __future__ import annotations

import argparse
import time

import torch

from surfacekit.curvature import gauss_newton_operator, hessian_operator
from surfacekit.data import load_data
from surfacekit.models import MLPSpec
from surfacekit.population import flatten, init_population, member_seed
from surfacekit.train.full_batch import network_problem, values_and_gradients


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=25)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data({"name": "digits", "train_size": args.examples}).to("cpu", torch.float64)
    spec = MLPSpec(64, (args.hidden,), 10, "tanh")
    seeds = [member_seed(0, k) for k in range(args.members)]
    theta = flatten(init_population(spec, seeds))
    k, p = theta.shape
    problem = network_problem(spec, data.x_train, data.y_train, "cross_entropy")
    flat = theta.reshape(-1)
    v = torch.randn_like(flat)

    def outputs(t):
        return problem.output_fn(t.view(k, p))

    def output_loss(z):
        return problem.output_loss(z).sum()

    ggn = gauss_newton_operator(outputs, output_loss, flat)
    hvp = hessian_operator(lambda t: output_loss(outputs(t)), flat)

    def forward_mode():
        z, jv = torch.func.jvp(outputs, (flat,), (v,))
        hjv = torch.func.jvp(torch.func.grad(output_loss), (z,), (jv,))[1]
        return torch.func.vjp(outputs, flat)[1](hjv)[0]

    rows = [("gradient (forward + backward)", timed(lambda: values_and_gradients(problem, theta), args.repeats)),
            ("GGN product, graph built once", timed(lambda: ggn(v), args.repeats)),
            ("Hessian product, graph built once", timed(lambda: hvp(v), args.repeats)),
            ("GGN product, forward mode (torch.func)", timed(forward_mode, args.repeats)),
            ("GGN operator construction", timed(lambda: gauss_newton_operator(outputs, output_loss, flat), 5)),
            ("Hessian operator construction", timed(lambda: hessian_operator(lambda t: output_loss(outputs(t)), flat), 5))]
    gradient = rows[0][1]
    print(f"K={k} members, P={p} each, N={args.examples} examples, threads={args.threads}")
    print(f"{'operation':42s} {'ms':>9s} {'/ gradient':>11s}")
    for name, seconds in rows:
        print(f"{name:42s} {1e3 * seconds:9.2f} {seconds / gradient:11.2f}")


if __name__ == "__main__":
    main()
