"""Speed and accuracy of surfacekit.curvature on trained digits MLPs (run by hand, float64, CPU),
side by side with the single-vector implementation it replaced and with PyHessian,
hessian-eigenthings and curvlinops where they are installed.

    python benchmarks/curvature.py [--hidden 20 234] [--threads 1] [--index-cap 100]
                                   [--full-index-below 6000] [--skip-dense-above 6000]
                                   [--cache /tmp/surfacekit_bench] [--no-others]
                                   [--baseline e29721b] [--no-degenerate] [--memory-p 5000000]
                                   [--memory-old-default]

Trains 64-h-10 tanh MLPs on all 1797 digits (full-batch Adam, 300 steps), then prints one table
per net: HVP cost relative to a gradient, top-5, the most negative and bottom-5 eigenvalues (time,
HVPs, max relative error), the index at -1e-5 max|lambda| (time, HVPs, error) and the SLQ density
(time, W1 distance / spectral range), for surfacekit and for each other tool.

Old against new, in one run. ``--baseline`` names the git revision of the single-vector
implementation this one replaced (the default, e29721b, is the last commit before the block Krylov
rewrite); its ``surfacekit/curvature`` is extracted with ``git archive`` into a temporary
directory and imported as ``baseline_curvature``. Every eigenvalue and index row then has three
variants: the old single-vector path, the block path with its completion certificate (the
default) and the block path with ``certify=False``; the ratio is new time / old time, measured
side by side. A second table runs both on degenerate spectra from surfacekit.problems
(repeated eigenvalues, a zero block, networks at symmetric points) against dense eigvalsh: the old
path's answer, flagged converged or not, against the new one's. A third measures the peak memory
(resident set) of a top-1 eigenvalue at P = --memory-p in a fresh process, new and old
(old with max_basis=20; the old default, a 161 x P basis, only with --memory-old-default).

References. For P <= --skip-dense-above the reference is the dense spectrum (stacked HVPs +
eigvalsh), cached as <cache>/eig_h<hidden>.npy so reruns skip it. Above it (the P = 17,560 net:
eigvalsh of a 17.6k x 17.6k float64 matrix takes the better part of an hour on one thread and
2.5 GB), the references are high-accuracy Lanczos runs (tol 1e-13, residual-certified), the
index reference is surfacekit's own Lanczos count (no independent check there), and the W1
distance of densities is not available. To force the dense reference, pass a larger
--skip-dense-above (and be patient once: the cache keeps it).

The other tools are benchmark-only dependencies, imported lazily; a missing one gives a row
saying so:
    pip install pyhessian hessian-eigenthings curvlinops-for-pytorch
(curvlinops needs einops, opt-einsum, einconv, backpack-for-pytorch, linear_operator.)
Their HVP counts are counted by wrapping their product function; their settings are stated in the
rows. Only surfacekit gives an exact index; the others give densities, whose mass below 0 is
reported as "density only" next to the exact fraction.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from sklearn.datasets import load_digits

from surfacekit import problems
from surfacekit.curvature import (
    dense_hessian,
    extreme_eigenvalues,
    hessian_operator,
    index,
    spectral_density,
)


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


def reference(loss_fn, theta, hidden: int, skip_dense_above: int, cache: str, rows: Rows):
    """Dense eigenvalues (cached .npy) or, for large P, Lanczos references. Returns a dict."""
    p = theta.numel()
    if p <= skip_dense_above:
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, f"eig_h{hidden}.npy")
        if os.path.exists(path):
            eig = torch.tensor(np.load(path))
            rows.append(("reference", f"dense eigvalsh (cached {path})"))
        else:
            t, eig = timed(lambda: torch.linalg.eigvalsh(dense_hessian(loss_fn, theta)))
            np.save(path, eig.numpy())
            rows.append(("reference", f"dense eigvalsh, {t:.1f} s (cached to {path})"))
        scale = float(eig.abs().max())
        return dict(top=eig.flip(0)[:5], bottom=eig[:5], eig=eig, exact=int((eig < -1e-5 * scale).sum()),
                    scale=scale)
    t0 = time.perf_counter()
    top = extreme_eigenvalues(loss_fn, theta, 5, "largest", tol=1e-13, max_steps=5000)
    bottom = extreme_eigenvalues(loss_fn, theta, 5, "smallest", tol=1e-13, max_steps=20000)
    rows.append(("reference", f"Lanczos tol 1e-13 ({top.num_hvps + bottom.num_hvps} HVPs, "
                              f"{time.perf_counter() - t0:.0f} s); index: surfacekit Lanczos"))
    scale = max(float(top.eigenvalues[0]), abs(float(bottom.eigenvalues[0])))
    return dict(top=top.eigenvalues, bottom=bottom.eigenvalues, eig=None, exact=None, scale=scale)


def load_baseline(rev: str):
    """The ``surfacekit/curvature`` package of git revision ``rev``, imported as ``baseline_curvature``
    (None, with the reason printed, when git or the revision is not available)."""
    root = Path(__file__).resolve().parents[1]
    target = Path(tempfile.mkdtemp(prefix="surfacekit_baseline_"))
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", rev, "surfacekit/curvature"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline {rev} not available ({exc}); old-vs-new rows skipped")
        return None
    (target / "surfacekit" / "curvature").rename(target / "baseline_curvature")
    sys.path.insert(0, str(target))
    return importlib.import_module("baseline_curvature")


def best_of(fn, repeat: int):
    """(min seconds over ``repeat`` runs, last result): the least disturbed run on a shared machine."""
    times, out = [], None
    for _ in range(repeat):
        t, out = timed(fn)
        times.append(t)
    return min(times), out


def old_vs_new(label: str, old_fn, new_fns: dict, check, rows: Rows, repeat: int = 1) -> None:
    """Rows for one quantity: the old single-vector path, then each new variant with time / old time.
    ``check(result) -> str`` gives the accuracy column."""
    t_old = None
    if old_fn is not None:
        t_old, res = best_of(old_fn, repeat)
        rows.append((f"{label} [old single-vector]: s, HVPs, {check.__doc__}", f"{t_old:.2f}, {res.num_hvps}, {check(res)}"))
    for variant, fn in new_fns.items():
        t, res = best_of(fn, repeat)
        cert = getattr(res, "certificate_hvps", 0)
        ratio = "" if t_old is None else f", x{t / t_old:.2f} old time"
        rows.append((f"{label} [{variant}]: s, HVPs (of them certificate), {check.__doc__}{', time/old' * (t_old is not None)}",
                     f"{t:.2f}, {res.num_hvps} ({cert}), {check(res)}{ratio}"))


def bench(hidden: int, steps: int, index_cap: int, full_index_below: int, skip_dense_above: int, cache: str,
          others: bool, baseline) -> list[tuple[str, str]]:
    loss_fn, theta = problems.trained_digits_mlp(hidden, steps)
    p = theta.numel()
    rows = Rows()
    rows.append(("P", f"{p}"))
    rows.append(("train loss", f"{float(loss_fn(theta)):.2e}"))
    ref = reference(loss_fn, theta, hidden, skip_dense_above, cache, rows)
    eig = ref["eig"]
    rows.append(("lambda_max / lambda_min", f"{float(ref['top'][0]):.3e} / {float(ref['bottom'][0]):.3e}"))

    theta_req = theta.clone().requires_grad_(True)
    t_grad, _ = timed(lambda: torch.autograd.grad(loss_fn(theta_req), theta_req), repeat=20, warmup=True)
    rows.append(("gradient (ms)", f"{1e3 * t_grad:.2f}"))
    v = torch.randn(p, dtype=torch.float64)
    v8 = torch.randn(8, p, dtype=torch.float64)
    for backend in ("graph", "jvp"):
        op = hessian_operator(loss_fn, theta, backend)
        t1, _ = timed(lambda: op(v), repeat=20, warmup=True)
        t8, _ = timed(lambda: op(v8), repeat=5, warmup=True)
        op._batched_ok = True  # the vmapped path used on accelerators
        t8v, _ = timed(lambda: op(v8), repeat=5, warmup=True)
        rows.append((f"surfacekit HVP/grad [{backend}] (1 vec; per vec in a block of 8: loop (CPU), vmapped)",
                     f"{t1 / t_grad:.2f}; {t8 / 8 / t_grad:.2f}, {t8v / 8 / t_grad:.2f}"))
    t_build, _ = timed(lambda: hessian_operator(loss_fn, theta, "graph"), repeat=5, warmup=True)
    rows.append(("surfacekit graph build (create_graph grad) / grad", f"{t_build / t_grad:.2f}"))

    for label, k, which, refv, repeat in (("top-5", 5, "largest", ref["top"], 3),
                                          ("lambda_min", 1, "smallest", ref["bottom"][:1], 3),
                                          ("bottom-5", 5, "smallest", ref["bottom"], 1)):
        def check(res, refv=refv):
            """max rel err"""
            return f"{rel_err(res.eigenvalues, refv):.1e}"

        old = None if baseline is None else (lambda k=k, which=which: baseline.extreme_eigenvalues(loss_fn, theta, k, which))
        new = {"block, certified": lambda k=k, which=which: extreme_eigenvalues(loss_fn, theta, k, which),
               "block, certify=False": lambda k=k, which=which: extreme_eigenvalues(loss_fn, theta, k, which,
                                                                                   certify=False)}
        old_vs_new(f"surfacekit {label}", old, new, check, rows, repeat)

    exact = ref["exact"]
    if exact is not None:
        rows.append(("exact index at -1e-5 max|lambda| (count, fraction)", f"{exact}, {exact / p:.4f}"))
        rows.append(("exact fraction below 0 (noise-level signs)", f"{float((eig < 0).double().mean()):.4f}"))
    if p <= 6000:
        t, res = timed(lambda: index(loss_fn, theta))
        rows.append(("surfacekit index [dense]: s, count error", f"{t:.2f}, {res.count - exact}"))
    for cap in sorted({index_cap} | ({1000} if p <= full_index_below else set())):
        def check(res, exact=exact):
            """count, error"""
            err = ">= cap" if res.at_least else ("n/a" if exact is None else f"{res.count - exact}")
            return f"{res.count}{'+' if res.at_least else ''}, {err}"

        old = None if baseline is None else (lambda cap=cap: baseline.index(loss_fn, theta, method="lanczos", cap=cap))
        old_vs_new(f"surfacekit index [lanczos, cap {cap}]", old,
                   {"block, certified": lambda cap=cap: index(loss_fn, theta, method="lanczos", cap=cap)}, check, rows)
        if exact is None and cap == index_cap:
            res = index(loss_fn, theta, method="lanczos", cap=cap)
            exact = None if res.at_least else res.count
    exact_fraction = None if exact is None else exact / p

    t, d = timed(lambda: spectral_density(loss_fn, theta, num_probes=10, num_steps=80))
    neg_mass = float((d.weights * (d.nodes < 0)).sum(dim=1).mean())
    w1 = "n/a (no dense ref)"
    if eig is not None:
        w1 = f"{wasserstein_distance(d.nodes.flatten().numpy(), eig.numpy(), d.weights.flatten().numpy()) / float(eig[-1] - eig[0]):.1e}"
    rows.append(("surfacekit SLQ 10x80: s, HVPs, W1/range", f"{t:.2f}, {d.num_hvps}, {w1}"))
    rows.append(("surfacekit SLQ node mass below 0 (NOT an index)", f"{neg_mass:.4f}"))
    if others:
        for tool in (bench_pyhessian, bench_eigenthings, bench_curvlinops):
            try:
                tool(hidden, theta, ref, t_grad, exact_fraction, rows)
            except ImportError as exc:
                rows.append((f"{tool.__name__[6:]}", f"not installed ({exc.name}); skipped"))
            except Exception as exc:  # an API that does not fit: say so instead of failing the run
                rows.append((f"{tool.__name__[6:]}", f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
    return rows


# ---- degenerate spectra: old against new against dense -------------------------------------------

def _values(res) -> str:
    return ", ".join(f"{float(v):.6g}" for v in res.eigenvalues)


def _verdict(values: torch.Tensor, want: torch.Tensor, scale: float) -> str:
    """RIGHT when every value is within 1e-6 x max|lambda| of the dense one (absolute: zeros included)."""
    return "RIGHT" if len(values) == len(want) and float((values - want).abs().max()) < 1e-6 * scale else "WRONG"


def degenerate(baseline) -> list[tuple[str, str]]:
    """The old single-vector path and the block path on spectra from surfacekit.problems."""
    rows = Rows()
    issue = problems.designed("issue's case: 5, 5, 5, 4, 3.5, [0.1, 3] (P = 600)",
                             [5.0, 5.0, 5.0, 4.0, 3.5] + list(np.linspace(0.1, 3.0, 595)), seed=0, k=4)
    top20 = problems.designed("5 (x20) at the top (P = 600)", problems.background(580, [-0.2]) + [5.0] * 20, seed=1, k=21)
    tail20 = problems.designed("-0.5 (x20) inside the negative tail",
                              problems.background(580, [-1.0, -0.8, -0.3, -0.2, -0.1]) + [-0.5] * 20, seed=2)
    zero = problems.cluster_cases(600)[2]
    zero.name = "zero block P/2 (P = 600)"
    for case, which in ((issue, "largest"), (top20, "largest"), (zero, "smallest")):
        eig = case.eigenvalues
        want = eig.flip(0)[: case.k] if which == "largest" else eig[: case.k]
        rows.append((f"{case.name}: {which} {case.k}, dense", ", ".join(f"{float(v):.6g}" for v in want)))
        if baseline is not None:
            t, res = timed(lambda: baseline.extreme_eigenvalues(case.loss_fn, case.theta, case.k, which,
                                                                on_fail="warn"))
            ok = _verdict(res.eigenvalues, want, float(eig.abs().max()))
            rows.append((f"{case.name}: old", f"{_values(res)} (converged={res.converged}; {ok}; {res.num_hvps} HVPs, {t:.2f} s)"))
        t, res = timed(lambda: extreme_eigenvalues(case.loss_fn, case.theta, case.k, which))
        ok = _verdict(res.eigenvalues, want, float(eig.abs().max()))
        rows.append((f"{case.name}: new", f"{res.summary()} (converged={res.converged}; {ok}; {res.num_hvps} HVPs, "
                                          f"{res.certificate_hvps} for the certificate, block {res.block}, {t:.2f} s)"))
    for case in (tail20, zero, problems.split_network(5), problems.identical_units_network()):
        eig = case.eigenvalues
        scale = float(eig.abs().max())
        exact = int((eig < -1e-5 * scale).sum())
        rows.append((f"{case.name}: index at -1e-5 max|lambda| (P = {case.theta.numel()}), dense", f"{exact}"))
        if baseline is not None:
            t, res = timed(lambda: baseline.index(case.loss_fn, case.theta, method="lanczos"))
            ok = "RIGHT" if res.count == exact else "WRONG"
            rows.append((f"{case.name}: old lanczos", f"{res.count} (at_least={res.at_least}; {ok}; {res.num_hvps} HVPs, {t:.2f} s)"))
        t, res = timed(lambda: index(case.loss_fn, case.theta, method="lanczos"))
        ok = "RIGHT" if res.count == exact else "WRONG"
        rows.append((f"{case.name}: new lanczos", f"{res.count} ({ok}; {res.num_hvps} HVPs, {res.certificate_hvps} for the "
                                                  f"certificate, block {res.block}, {t:.2f} s): {res.summary()[:90]}"))
    return rows


# ---- memory: a top-1 eigenvalue at large P ------------------------------------------------------------

_MEMORY_SCRIPT = """
import resource, sys, time, torch
torch.set_num_threads(1)
p, which = int(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(0)
d = torch.rand(p, generator=g, dtype=torch.float64) + 0.5
theta = torch.randn(p, generator=g, dtype=torch.float64)
loss = lambda t: 0.5 * (d * t * t).sum() + 0.01 * t.sum() ** 2
if which == "new":
    from surfacekit.curvature import extreme_eigenvalues
    kw = {}
else:
    sys.path.insert(0, sys.argv[3])
    from baseline_curvature import extreme_eigenvalues
    kw = {} if which == "old default" else {"max_basis": 20}
t = time.perf_counter()
res = extreme_eigenvalues(loss, theta, 1, "largest", **kw)
print(float(res.eigenvalues[0]), res.num_hvps, getattr(res, "block", 1), time.perf_counter() - t,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def memory(p: int, baseline, old_default: bool) -> list[tuple[str, str]]:
    """Peak resident memory of a top-1 eigenvalue at ``p`` parameters, each in a fresh process."""
    rows = Rows()
    variants = ["new"] + (["old max_basis=20"] if baseline is not None else []) + (["old default"] * old_default)
    where = str(Path(baseline.__file__).parents[1]) if baseline is not None else ""
    for which in variants:
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(p), which, where], capture_output=True,
                             text=True)
        if out.returncode:
            rows.append((f"top-1 at P = {p:,} [{which}]", f"failed: {out.stderr.strip().splitlines()[-1][:100]}"))
            continue
        value, hvps, block, seconds, peak = out.stdout.split()
        rows.append((f"top-1 at P = {p:,} [{which}]: peak resident memory, value, HVPs, block, s",
                     f"{int(peak) / 2**30:.2f} GiB, {float(value):.6g}, {hvps}, {block}, {float(seconds):.1f}"))
    return rows


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n| {title} | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print(flush=True)


# ---- other tools (benchmark-only dependencies, imported lazily) --------------------------------

def torch_mlp(hidden: int, theta: torch.Tensor):
    """The same net as an nn.Module (parameter order w1, b1, w2, b2 = our flat layout) and its data."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64) / 16.0
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 10)).double()
    torch.nn.utils.vector_to_parameters(theta.clone(), model.parameters())
    return model, x, y


def density_rows(name: str, grid, dens, ref, exact_fraction, t, hvps, rows: Rows) -> None:
    """W1 / range and mass below 0 of a density given on a grid (atoms grid_i with weight dens_i dx)."""
    grid, dens = np.asarray(grid, dtype=float), np.clip(np.asarray(dens, dtype=float), 0, None)
    w = dens / dens.sum()
    w1 = "n/a (no dense ref)"
    if ref["eig"] is not None:
        eig = ref["eig"].numpy()
        w1 = f"{wasserstein_distance(grid, eig, w) / (eig[-1] - eig[0]):.1e}"
    rows.append((f"{name} density: s, HVPs, W1/range", f"{t:.2f}, {hvps}, {w1}"))
    frac = "?" if exact_fraction is None else f"{exact_fraction:.4f}"
    rows.append((f"{name} index", f"density only: mass below 0 = {float(w[grid < 0].sum()):.4f} (exact fraction {frac})"))


def bench_pyhessian(hidden, theta, ref, t_grad, exact_fraction, rows: Rows) -> None:
    import sys

    import pyhessian  # noqa: F401  (its package namespace shadows the module with the class)

    ph = sys.modules["pyhessian.hessian"]

    model, x, y = torch_mlp(hidden, theta)
    counter = [0]
    plain = ph.hessian_vector_product

    def counted(gradsH, params, v):
        counter[0] += 1
        return plain(gradsH, params, v)

    ph.hessian_vector_product = counted
    try:
        t_build, h = timed(lambda: ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False))
        v = [torch.randn_like(q) for q in h.params]
        t1, _ = timed(lambda: counted(h.gradsH, h.params, v), repeat=20, warmup=True)
        rows.append(("PyHessian HVP/grad (1 vec); build/grad", f"{t1 / t_grad:.2f}; {t_build / t_grad:.2f}"))
        for tol in (1e-3, 1e-8):  # default tol, then a tight one (power iteration, deflation)
            counter[0] = 0
            torch.manual_seed(0)
            t, (vals, _) = timed(lambda: h.eigenvalues(maxIter=1000, tol=tol, top_n=5))
            rows.append((f"PyHessian top-5 (power iter., tol {tol:g}): s, HVPs, max rel err",
                         f"{t:.2f}, {counter[0]}, {rel_err(torch.tensor(vals), ref['top']):.1e}"))
        rows.append(("PyHessian lambda_min", "not offered (top eigenvalues only)"))
        counter[0] = 0
        torch.manual_seed(0)
        try:
            t, (nodes, weights) = timed(lambda: h.density(iter=80, n_v=10))
        except RuntimeError as exc:  # PyHessian 0.1 calls torch.eig, removed in torch 1.9
            rows.append(("PyHessian SLQ density / index", f"not runnable on torch {torch.__version__}: {str(exc)[:60]}"))
            return
        nodes, weights = np.asarray(nodes).ravel(), np.asarray(weights).ravel()
        w1 = "n/a (no dense ref)"
        if ref["eig"] is not None:
            eig = ref["eig"].numpy()
            w1 = f"{wasserstein_distance(nodes, eig, weights) / (eig[-1] - eig[0]):.1e}"
        rows.append(("PyHessian SLQ 10x80: s, HVPs, W1/range", f"{t:.2f}, {counter[0]}, {w1}"))
        frac = "?" if exact_fraction is None else f"{exact_fraction:.4f}"
        rows.append(("PyHessian index", f"density only: node mass below 0 = {weights[nodes < 0].sum() / weights.sum():.4f} "
                                        f"(exact fraction {frac})"))
    finally:
        ph.hessian_vector_product = plain


def bench_eigenthings(hidden, theta, ref, t_grad, exact_fraction, rows: Rows) -> None:
    import hessian_eigenthings as he

    model, x, y = torch_mlp(hidden, theta)
    t_build, op = timed(lambda: he.HessianOperator(model, [(x, y)], he.supervised_loss(torch.nn.CrossEntropyLoss())))
    counter = [0]
    plain = op.matvec

    def counted(vec):
        counter[0] += 1
        return plain(vec)

    op.matvec = counted
    v = torch.randn(op.size, dtype=torch.float64)
    t1, _ = timed(lambda: plain(v), repeat=20, warmup=True)
    rows.append(("eigenthings HVP/grad (1 vec); operator build/grad", f"{t1 / t_grad:.2f}; {t_build / t_grad:.2f}"))
    for label, k, which, steps, refv in (("top-5", 5, "LA", None, ref["top"]), ("top-5", 5, "LA", 40, ref["top"]),
                                         ("lambda_min", 1, "SA", None, ref["bottom"][:1]),
                                         ("lambda_min", 1, "SA", 120, ref["bottom"][:1])):
        counter[0] = 0
        t, res = timed(lambda: he.lanczos(op, k=k, which=which, max_iter=steps, seed=0))
        vals = res.eigenvalues.flatten()[:k].to(torch.float64)
        vals = vals.sort(descending=(which == "LA")).values
        rows.append((f"eigenthings {label} (lanczos, max_iter {steps or 'default 2k'}): s, HVPs, max rel err",
                     f"{t:.2f}, {counter[0]}, {rel_err(vals, refv):.1e}"))
    counter[0] = 0
    t, dens = timed(lambda: he.spectral_density(op, num_runs=10, lanczos_steps=80, seed=0))
    density_rows("eigenthings SLQ 10x80", dens.grid.numpy(), dens.density.numpy(), ref, exact_fraction, t,
                 counter[0], rows)


def bench_curvlinops(hidden, theta, ref, t_grad, exact_fraction, rows: Rows) -> None:
    import curvlinops
    from scipy.sparse.linalg import eigsh as scipy_eigsh

    model, x, y = torch_mlp(hidden, theta)
    params = [q for q in model.parameters()]
    t_build, h = timed(lambda: curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)],
                                                                check_deterministic=False))
    v = torch.randn(theta.numel(), dtype=torch.float64)
    t1, _ = timed(lambda: h @ v, repeat=20, warmup=True)
    rows.append(("curvlinops HVP/grad (1 vec); operator build/grad", f"{t1 / t_grad:.2f}; {t_build / t_grad:.2f}"))
    sp = h.to_scipy()
    counter = [0]
    from scipy.sparse.linalg import LinearOperator

    def mv(u):
        counter[0] += 1
        return sp @ u

    counted = LinearOperator(sp.shape, matvec=mv, dtype=np.float64)
    for label, k, which, refv in (("top-5", 5, "LA", ref["top"]), ("lambda_min", 1, "SA", ref["bottom"][:1])):
        counter[0] = 0
        v0 = np.random.default_rng(0).standard_normal(theta.numel())
        t, vals = timed(lambda: scipy_eigsh(counted, k=k, which=which, tol=1e-4, v0=v0, return_eigenvectors=False))
        vals = torch.tensor(np.sort(vals)[::-1].copy() if which == "LA" else np.sort(vals))
        rows.append((f"curvlinops {label} (scipy eigsh, tol 1e-4): s, HVPs, max rel err",
                     f"{t:.2f}, {counter[0]}, {rel_err(vals, refv):.1e}"))
    counter[0] = 0
    plain_matmat = h._matmat

    def counted_matmat(m):
        counter[0] += m[0].shape[-1] if isinstance(m, (list, tuple)) else m.shape[-1]
        return plain_matmat(m)

    h._matmat = counted_matmat
    try:
        t, (grid, dens) = timed(lambda: curvlinops.lanczos_approximate_spectrum(h, ncv=80, num_repeats=10))
        density_rows("curvlinops SLQ 10x80", grid, dens, ref, exact_fraction, t, counter[0], rows)
    finally:
        h._matmat = plain_matmat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[20, 234])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--index-cap", type=int, default=100)
    ap.add_argument("--full-index-below", type=int, default=6000, help="also count up to cap 1000 for P below this")
    ap.add_argument("--skip-dense-above", type=int, default=6000)
    ap.add_argument("--cache", default="/tmp/surfacekit_bench")
    ap.add_argument("--no-others", action="store_true")
    ap.add_argument("--baseline", default="e29721b", help="git revision of the old curvature package ('' for none)")
    ap.add_argument("--no-degenerate", action="store_true")
    ap.add_argument("--memory-p", type=int, default=5_000_000, help="P of the memory rows (0 to skip them)")
    ap.add_argument("--memory-old-default", action="store_true", help="also run the old default basis (~6.7 GB)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors with the default dtype
    torch.manual_seed(0)
    warnings.simplefilter("ignore", DeprecationWarning)
    print(f"load: {os.getloadavg()}", flush=True)
    baseline = load_baseline(args.baseline) if args.baseline else None
    for h in args.hidden:
        print_table(f"quantity (hidden {h})", bench(h, args.steps, args.index_cap, args.full_index_below,
                                                    args.skip_dense_above, args.cache, not args.no_others, baseline))
    if not args.no_degenerate:
        print_table("degenerate spectra", degenerate(baseline))
    if args.memory_p:
        print_table("memory", memory(args.memory_p, baseline, args.memory_old_default))
    print(f"load: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
