"""Curvature of a user's CNN through a DataLoader: surfacekit beside PyHessian, hessian-eigenthings and
curvlinops, and a population of CNNs against a loop over modules (run by hand, CPU).

    python benchmarks/curvature_module.py [--width 8] [--batch 256] [--probes 100] [--threads 1]
                                          [--members 32] [--steps 30] [--no-others] [--no-memory]

The model: Conv(1, w, 3) - BatchNorm2d - ReLU - MaxPool(2) - Conv(w, w, 3) - BatchNorm2d - ReLU -
global average pool - Linear(w, 10), trained for 3 epochs (Adam, float32, train mode) on all 1797
digits as 1x8x8 images, then analysed in float64 with batch norm in evaluation mode (its running
statistics) over a DataLoader of batch 256: 7 batches of 256 and an uneven last batch of 5.

Reference: the dense Hessian of the plain module (``torch.func.functional_call`` of the float64
module in eval mode on all 1797 examples at once, HVP columns by double backward: no surfacekit code),
its eigenvalues (eigvalsh) and trace. Rows: seconds per gradient of the full-data loss; HVP cost per
gradient for each tool (one vector; per vector in a block of 8 where a tool takes blocks); top-5
eigenvalues (seconds, HVPs, max relative error); the Hutchinson trace with --probes probes (relative
error and, for surfacekit, the standard error); the exact index (surfacekit only); and the peak
resident memory of each tool's top-5 run above the memory after the set-up, each tool in its own
process (Linux VmHWM, reset after the set-up; --memory-only prints just these). Every tool sees
the same float64 model and loader. Batch weighting matters here: hessian-eigenthings averages its
batch products with equal weights, so its operator is not the full-data Hessian when the last batch
is uneven (its error row shows it).

The last table: K = --members CNNs trained as one population (vmap over functional_call, the code
``surfacekit.train.backprop`` runs) against a loop over K ``nn.Module``s with their own optimizers,
--steps SGD steps of 128 examples each in float32, best of 3 alternating runs, ratio measured in one
run.

The other tools are benchmark-only dependencies, imported lazily; a missing one gives a row saying so:
    pip install pyhessian hessian-eigenthings curvlinops-for-pytorch
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TOOLS = ("surfacekit", "surfacekit-graph", "pyhessian", "eigenthings", "curvlinops")


def cnn(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def setup(width: int, batch: int):
    """The trained float64 module in eval mode, the loader of float64 digits and the full tensors."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = cnn(width)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for xb, yb in train:
            opt.zero_grad()
            F.cross_entropy(model.train()(xb), yb).backward()
            opt.step()
    model = model.double().eval()
    x = x.double()
    return model, DataLoader(TensorDataset(x, y), batch_size=batch), x, y


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference(model, x, y):
    """Dense Hessian of the plain module's full-data loss (eval mode), by HVP columns."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    buffers = dict(model.named_buffers())

    def loss(theta):
        parts = torch.split(theta, [int(np.prod(s)) for s in shapes])
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        return F.cross_entropy(torch.func.functional_call(model, {**params, **buffers}, (x,)), y)

    theta = flat_params(model).requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(theta), theta, create_graph=True)
    eye = torch.eye(len(theta), dtype=torch.float64)
    rows = [torch.autograd.grad(grad, theta, eye[i:i + 64], retain_graph=True, is_grads_batched=True)[0]
            for i in range(0, len(theta), 64)]
    hess = torch.cat(rows)
    return 0.5 * (hess + hess.T)


def timed(fn, repeat: int = 1, warmup: bool = False):
    if warmup:
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def rel_err(values, ref) -> float:
    values = torch.as_tensor(np.array(values, dtype=np.float64)).flatten()
    return float(((values - ref) / ref).abs().max())


# ----------------------------------------------------------------------------------- the tools

def run_surfacekit(model, loader, probes, hvp, top_only=False):
    """HVP cost (1 vector; per vector of a block of 8), top-5 and trace with surfacekit's tools."""
    import surfacekit
    from surfacekit import curvature

    obj = surfacekit.objective_from_module(model, "cross_entropy", loader, hvp=hvp)
    theta = obj.theta
    if top_only:
        return curvature.extreme_eigenvalues(obj, theta, 5, "largest")
    op = curvature.hessian_operator(obj, theta)
    v, block = torch.randn(len(theta), dtype=torch.float64), torch.randn(8, len(theta), dtype=torch.float64)
    t1, _ = timed(lambda: op(v), repeat=3, warmup=True)
    t8, _ = timed(lambda: op(block), repeat=2, warmup=True)
    t_top, top = timed(lambda: curvature.extreme_eigenvalues(obj, theta, 5, "largest"))
    t_tr, tr = timed(lambda: curvature.hutchinson_trace(obj, theta, num_probes=probes))
    return {"hvp": t1, "hvp_block": t8 / 8, "top": top.eigenvalues.numpy(), "top_s": t_top, "top_hvps": top.num_hvps,
            "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_s": t_tr, "trace_hvps": tr.num_hvps}


def run_pyhessian(model, loader, probes, top_only=False, tol=1e-8):
    import pyhessian  # noqa: F401  (the package namespace shadows the module holding the class)

    ph = sys.modules["pyhessian.hessian"]
    counter = [0]
    h = ph.hessian(model, nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    if top_only:
        return h.eigenvalues(maxIter=1000, tol=tol, top_n=5)
    plain = h.dataloader_hv_product

    def counted(v):
        counter[0] += 1
        return plain(v)

    h.dataloader_hv_product = counted
    v = [torch.randn_like(p) for p in h.params]
    t1, _ = timed(lambda: plain(v), repeat=3, warmup=True)
    torch.manual_seed(0)
    t_top, (vals, _) = timed(lambda: h.eigenvalues(maxIter=1000, tol=tol, top_n=5))
    top_hvps, counter[0] = counter[0], 0
    torch.manual_seed(0)
    t_tr, trace = timed(lambda: h.trace(maxIter=probes, tol=0.0))
    return {"hvp": t1, "top": np.asarray(vals), "top_s": t_top, "top_hvps": top_hvps,
            "trace": float(np.mean(trace)), "trace_s": t_tr, "trace_hvps": counter[0],
            "note": f"power iteration with deflation, tol {tol:g}; trace maxIter {probes}"}


def run_eigenthings(model, loader, probes, top_only=False):
    import hessian_eigenthings as he

    op = he.HessianOperator(model, loader, he.supervised_loss(nn.CrossEntropyLoss()))
    if top_only:
        return he.lanczos(op, k=5, which="LA", seed=0)
    counter = [0]
    plain = op.matvec

    def counted(vec):
        counter[0] += 1
        return plain(vec)

    op.matvec = counted
    v = torch.randn(op.size, dtype=torch.float64)
    t1, _ = timed(lambda: plain(v), repeat=3, warmup=True)
    t_top, res = timed(lambda: he.lanczos(op, k=5, which="LA", seed=0))
    top_hvps, counter[0] = counter[0], 0
    t_tr, tr = timed(lambda: he.hutchinson(op, num_samples=probes, seed=0))
    return {"hvp": t1, "top": np.sort(res.eigenvalues.flatten().double().numpy())[::-1][:5], "top_s": t_top,
            "top_hvps": top_hvps, "trace": float(tr.estimate), "trace_s": t_tr, "trace_hvps": counter[0],
            "note": "lanczos (scipy eigsh); batch products averaged with equal weights"}


def run_curvlinops(model, loader, probes, top_only=False):
    import curvlinops
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = list(model.parameters())
    h = curvlinops.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, loader, check_deterministic=False)
    if top_only:
        v0 = np.random.default_rng(0).standard_normal(sum(p.numel() for p in params))
        return eigsh(h.to_scipy(), k=5, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False)
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    t1, _ = timed(lambda: h @ v, repeat=3, warmup=True)
    t8, _ = timed(lambda: h @ torch.randn(len(v), 8, dtype=torch.float64), repeat=2, warmup=True)
    sp = h.to_scipy()
    counter = [0]

    def mv(u):
        counter[0] += 1
        return sp @ u

    counted = LinearOperator(sp.shape, matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(len(v))
    t_top, vals = timed(lambda: eigsh(counted, k=5, which="LA", tol=1e-10, v0=v0, return_eigenvectors=False))
    torch.manual_seed(0)
    t_tr, trace = timed(lambda: curvlinops.hutchinson_trace(h, probes))
    return {"hvp": t1, "hvp_block": t8 / 8, "top": np.sort(vals)[::-1], "top_s": t_top, "top_hvps": counter[0],
            "trace": float(trace), "trace_s": t_tr, "trace_hvps": probes, "note": "scipy eigsh tol 1e-10"}


def run_tool(tool, model, loader, probes, top_only=False):
    if tool == "surfacekit":
        return run_surfacekit(model, loader, probes, "batches", top_only)
    if tool == "surfacekit-graph":
        return run_surfacekit(model, loader, probes, "graph", top_only)
    return {"pyhessian": run_pyhessian, "eigenthings": run_eigenthings, "curvlinops": run_curvlinops}[tool](
        model, loader, probes, top_only)


def top5_memory(tool: str, args) -> float:
    """Peak resident memory (MiB) of a tool's top-5 run above the set-up, in a fresh process."""
    cmd = [sys.executable, __file__, "--child", tool, "--width", str(args.width), "--batch", str(args.batch),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(tool: str, args) -> None:
    """One tool's top-5 run in this fresh process; prints the peak resident memory above the resident
    memory after the set-up (Linux: the peak is reset through /proc/self/clear_refs)."""
    model, loader, _, _ = setup(args.width, args.batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, the peak resident set size, to the current one
    base = _status_kib("VmRSS")
    run_tool(tool, model, loader, 0, top_only=True)
    print(json.dumps({"mib": (_status_kib("VmHWM") - base) / 1024}))


# ----------------------------------------------------------------------------------- population

def population_rows(members: int, steps: int, width: int):
    from sklearn.datasets import load_digits

    from surfacekit.data import Dataset
    from surfacekit.models import build_spec, forward, member_losses
    from surfacekit.population import init_population, member_seed

    digits = load_digits()
    x = torch.tensor(digits.images.reshape(-1, 64), dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    data = Dataset("digits", x, y, x, y, 10, True, (1, 8, 8))
    spec = build_spec({"_target_": "surfacekit.models.CNN", "width": width, "depth": 2}, data)
    seeds = [member_seed(0, k) for k in range(members)]

    def population():
        params = {k: v.requires_grad_(True) for k, v in init_population(spec, seeds, torch.float32).items()}
        opt = torch.optim.SGD(params.values(), lr=0.05)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        start = time.perf_counter()
        for _ in range(steps):
            idx = torch.stack([torch.randint(0, len(x), (128,), generator=g) for g in gens])
            loss = member_losses(forward(spec, params, x[idx]), y[idx], "cross_entropy").sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    def loop():
        nets = []
        for s in seeds:
            torch.manual_seed(s)
            nets.append(spec.build())
        opts = [torch.optim.SGD(n.parameters(), lr=0.05) for n in nets]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        start = time.perf_counter()
        for _ in range(steps):
            for net, opt, g in zip(nets, opts, gens):
                idx = torch.randint(0, len(x), (128,), generator=g)
                loss = F.cross_entropy(net.train()(x[idx].reshape(-1, 1, 8, 8)), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return time.perf_counter() - start

    population(), loop()  # warm-up
    pops, loops = [], []
    for _ in range(3):
        pops.append(population())
        loops.append(loop())
    return min(pops), min(loops)


# ----------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-others", action="store_true", help="surfacekit rows only")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-tool memory processes")
    parser.add_argument("--memory-only", action="store_true", help="only the per-tool peak memory")
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.child:
        child(args.child, args)
        return
    if args.memory_only:
        for tool in TOOLS if not args.no_others else TOOLS[:2]:
            try:
                print(f"{tool:<18}peak {top5_memory(tool, args):.0f} MiB above the set-up")
            except Exception as exc:  # noqa: BLE001 - a missing or failing tool: say so, go on
                print(f"{tool:<18}{str(exc)[:80]}")
        return
    model, loader, x, y = setup(args.width, args.batch)
    p = sum(q.numel() for q in model.parameters())
    t_ref, hess = timed(lambda: reference(model, x, y))
    eig = torch.linalg.eigvalsh(hess)
    top_ref, trace_ref = eig.flip(0)[:5], float(eig.sum())
    scale = float(eig.abs().max())
    print(f"CNN width {args.width}, P = {p}, 1797 digits in batches of {args.batch} (last batch {1797 % args.batch}), "
          f"float64, batch norm in eval mode, {args.threads} thread(s)")
    print(f"reference: dense Hessian of the plain module ({t_ref:.1f} s): lambda_max {float(eig[-1]):.4g}, "
          f"lambda_min {float(eig[0]):.4g}, trace {trace_ref:.4g}, index at -1e-5 max|lambda| "
          f"{int((eig < -1e-5 * scale).sum())}")

    import surfacekit
    from surfacekit import curvature

    obj = surfacekit.objective_from_module(model, "cross_entropy", loader)
    theta = obj.theta.clone().requires_grad_(True)
    t_grad, _ = timed(lambda: torch.autograd.grad(obj(theta), theta), repeat=3, warmup=True)
    t_idx, idx = timed(lambda: curvature.index(obj, obj.theta))
    print(f"gradient of the full-data loss: {1e3 * t_grad:.1f} ms; surfacekit exact index: {idx.count} "
          f"({idx.method}, {t_idx:.1f} s, {idx.num_hvps} HVPs; reference {int((eig < idx.threshold).sum())})")
    tools = TOOLS if not args.no_others else TOOLS[:2]
    header = (f"{'tool':<18}{'HVP/grad':>9}{'block/vec':>10}{'top-5 s':>9}{'HVPs':>6}{'top-5 err':>11}"
              f"{'trace err':>11}{'trace s':>9}{'peak MiB':>10}  notes")
    print(header)
    for tool in tools:
        try:
            r = run_tool(tool, model, loader, args.probes)
        except ImportError as exc:
            print(f"{tool:<18}not installed ({exc.name}); skipped")
            continue
        except Exception as exc:  # noqa: BLE001 - an API that does not fit: say so, go on
            print(f"{tool:<18}failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        try:
            mib = "-" if args.no_memory else f"{top5_memory(tool, args):.0f}"
        except Exception as exc:  # noqa: BLE001
            mib = f"? ({str(exc)[:30]})"
        block = f"{r['hvp_block'] / t_grad:.2f}" if "hvp_block" in r else "-"
        trace_err = abs(r["trace"] - trace_ref) / abs(trace_ref)
        note = r.get("note", "") + (f"; trace stderr {r['trace_stderr'] / abs(trace_ref):.1e} rel" if "trace_stderr" in r
                                     else "")
        print(f"{tool:<18}{r['hvp'] / t_grad:>9.2f}{block:>10}{r['top_s']:>9.2f}{r['top_hvps']:>6}"
              f"{rel_err(r['top'], top_ref):>11.1e}{trace_err:>11.1e}{r['trace_s']:>9.2f}{mib:>10}  {note}")
    t_pop, t_loop = population_rows(args.members, args.steps, args.width)
    print(f"\npopulation training: K = {args.members} CNNs (width {args.width}), {args.steps} SGD steps of 128, float32, "
          f"best of 3 alternating runs")
    print(f"{'method':<32}{'seconds':>10}{'ratio':>8}")
    print(f"{'population (vmap)':<32}{t_pop:>10.2f}{1.0:>8.2f}")
    print(f"{'loop over nn.Modules':<32}{t_loop:>10.2f}{t_loop / t_pop:>8.2f}")


if __name__ == "__main__":
    main()
