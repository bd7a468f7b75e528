"""Escaping certified saddles: gradient descent flees them, Newton's method is attracted to them.

    surfacekit -m experiment=dauphin_index && surfacekit task=certify source=SWEEP
    python analyses/saddle_escape.py SWEEP [--saddles 4] [--seeds 4] [--lr-factors 0.25 1.0] [--out DIR]

Saddles: certified embedded saddles of the sweep (the narrower networks' certified minima with zero
units added, certified in the wider network; see analyses/index_vs_loss.py), the ``--saddles`` of
them spread over |lambda_min|. From each saddle theta* every run starts at theta* + r u (u uniform on
the unit sphere, one per seed, r = ``--start-radius``), in float64 on the trained objective F:

* **GD**: theta <- theta - eta grad F (full batch);
* **SGD**: minibatches of ``--batch-size`` examples (with the L2 term), a fresh shuffle per seed;
* **noisy GD**: theta <- theta - eta (grad F + sigma xi), xi ~ N(0, I), sigma = ``--noise``;

for step sizes eta = factor / lambda_max (``--lr-factors``), all seeds and step sizes of a method run
as one population. The escape time is the first step at which F(theta) <= F(theta*) - ``--drop``.
The linear-dynamics prediction (the gradient flow of the quadratic model, Goodfellow's lecture:
theta(t) = theta(0) - Q Lambda'(t) Q^T g with lambda'(t) = (1 - exp(-lambda t)) / lambda): along the
eigenspace of lambda_min < 0 the displacement grows as x(t) = x0 exp(|lambda| eta t) + g0 (exp(|lambda|
eta t) - 1) / |lambda| (x0, g0: the start's displacement and the gradient there, projected), and the
loss has dropped by ``drop`` when |lambda| x(t)^2 / 2 = drop; the predicted step count is overlaid.
**Newton**: ``critical.find(..., "newton_mr")`` (minimum-length Newton steps with a line search on
||g||^2) from the same starts; whether it returns to the saddle (loss within 1e-8, same index).

Writes (default SOURCE/analysis/saddle_escape): ``escape_time_vs_lambda`` (escape steps x eta
against |lambda_min|, per method, with the prediction), ``escape_curves`` (F against steps for one
saddle: the three methods and Newton), ``saddle_escape.md/.csv`` (per saddle, method and step size:
runs, escaped, median and quartiles of the escape step, predicted step) and ``newton.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from surfacekit import store
from surfacekit.critical import find
from surfacekit.curvature import dense_hessian
from surfacekit.models import forward, member_losses
from surfacekit.objective import l2_penalty, objective_values
from surfacekit.plots import AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table
from surfacekit.population import unflatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_vs_loss import certified_points, embedded_saddles  # noqa: E402

PROG = "saddle_escape"
METHODS = ("GD", "SGD", "noisy GD")
COLORS = {"GD": "tab:blue", "SGD": "tab:orange", "noisy GD": "tab:green", "Newton": "tab:red"}


def predicted_steps(lam_min: float, x0: float, g0: float, eta: float, drop: float) -> float:
    """Steps until |lambda| x(t)^2 / 2 = drop for x(t) = x0 e^{a t} + g0 (e^{a t} - 1) / |lambda|, a = |lambda| eta
    (x0, g0 >= 0: magnitudes along the lambda_min eigenspace); inf if lambda_min >= 0 or nothing to grow."""
    lam = abs(lam_min)
    if lam_min >= 0 or (x0 <= 0 and g0 <= 0):
        return float("inf")
    target = np.sqrt(2.0 * drop / lam)
    growth = (target + g0 / lam) / (x0 + g0 / lam)
    return float(np.log(max(growth, 1.0)) / (lam * eta))


def choose(saddles: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` accepted saddles spread over |lambda_min| (quantiles of the sorted list).

    Raises:
        AnalysisError: no accepted embedded saddle (none embedded: a single job or a single width).
    """
    if not len(saddles):
        raise AnalysisError("no embedded saddle: the certified minima of a narrower network are embedded into a wider "
                            "one of the same sweep, so run it on a width sweep (experiment=dauphin_index), not one job")
    ok = saddles[saddles.accepted.astype(bool) & (saddles.index_count > 0)].sort_values("lambda_min").reset_index(drop=True)
    if not len(ok):
        raise AnalysisError("no certified embedded saddle: run task=certify on a width sweep (experiment=dauphin_index)")
    picks = sorted(set(np.linspace(0, len(ok) - 1, min(n, len(ok))).round().astype(int)))
    return ok.iloc[picks].reset_index(drop=True)


def runs(job, l2, theta_star, method: str, etas: np.ndarray, starts: torch.Tensor, args, gen: torch.Generator):
    """One population run: members = starts x step sizes. Returns (escape step per member or -1 [K],
    F per step [T + 1, K])."""
    spec, d, loss = job.spec, job.data, job.cfg.model.loss
    k = len(etas)
    theta = starts.clone()
    f_star = float(objective_values(spec, unflatten(theta_star, spec), d.x_train, d.y_train, loss, l2=l2)[0])
    eta = torch.as_tensor(etas).unsqueeze(1)
    escape = np.full(k, -1)
    curve = []
    n = d.x_train.shape[0]
    for step in range(args.max_steps + 1):
        params = unflatten(theta.requires_grad_(True), spec)
        with torch.enable_grad():
            full = objective_values(spec, params, d.x_train, d.y_train, loss, l2=l2)
            values = full.detach().numpy()
            hit = (values <= f_star - args.drop) & (escape < 0)
            escape[hit] = step
            curve.append(values)
            if step == args.max_steps or (escape >= 0).all():
                break
            if method == "SGD":
                idx = torch.stack([torch.randperm(n, generator=gen)[: args.batch_size] for _ in range(k)])
                out = forward(spec, params, d.x_train[idx])
                objective = member_losses(out, d.y_train[idx], loss) + l2_penalty(params, l2)
            else:
                objective = full
            (grad,) = torch.autograd.grad(objective.sum(), theta)
        if method == "noisy GD":
            grad = grad + args.noise * torch.randn(grad.shape, generator=gen, dtype=grad.dtype)
        theta = (theta.detach() - eta * grad).detach()
    return escape, np.array(curve)


def escape_study(source: Path, saddles: pd.DataFrame, args):
    rows, newton_rows, curves = [], [], {}
    for i, s in saddles.iterrows():
        job = store.load_job(source, s.job or None)
        loss_fn, _, info = store.job_objective(job, int(job.members["member"].iloc[0]))
        theta_star = torch.from_numpy(np.asarray(s.theta, dtype=np.float64))
        eig, vec = torch.linalg.eigh(dense_hessian(loss_fn, theta_star))
        lam_min, lam_max = float(eig[0]), float(eig[-1])
        space = vec[:, (eig - eig[0]).abs() <= 1e-8 * eig.abs().max()]  # the lambda_min eigenspace (may be degenerate)
        t = theta_star.clone().requires_grad_(True)
        (g_star,) = torch.autograd.grad(loss_fn(t), t)
        g0 = float((space.T @ g_star).norm())
        gen = torch.Generator().manual_seed(args.seed + i)
        u = torch.randn(args.seeds, len(theta_star), generator=gen, dtype=torch.float64)
        starts = theta_star + args.start_radius * u / u.norm(dim=1, keepdim=True)
        l2 = info["l2_coefficients"]
        factors = np.repeat(args.lr_factors, args.seeds)
        etas = factors / lam_max
        population = starts.repeat(len(args.lr_factors), 1)
        for method in METHODS:
            escape, curve = runs(job, l2, theta_star, method, etas, population, args, gen)
            curves[(i, method)] = curve[:, -1]  # the largest step size, last seed
            for factor in args.lr_factors:
                sel = factors == factor
                x0 = (space.T @ (population[sel] - theta_star).T).norm(dim=0).numpy()
                pred = [predicted_steps(lam_min, float(x), g0, factor / lam_max, args.drop) for x in x0]
                done = escape[sel][escape[sel] >= 0]
                rows.append({"saddle": i, "job": s.job, "narrow_width": s.narrow_width, "width": s.width,
                             "index": int(s.index_count), "lambda_min": lam_min, "lambda_max": lam_max,
                             "multiplicity": space.shape[1], "method": method, "lr_factor": factor,
                             "eta": factor / lam_max, "runs": int(sel.sum()), "escaped": len(done),
                             "median_escape_step": float(np.median(done)) if len(done) else np.nan,
                             "q25": float(np.quantile(done, 0.25)) if len(done) else np.nan,
                             "q75": float(np.quantile(done, 0.75)) if len(done) else np.nan,
                             "predicted_step": float(np.median(pred)), "start_radius": args.start_radius,
                             "drop": args.drop})
        for j in range(min(args.newton_starts, args.seeds)):
            point = find(loss_fn, starts[j], "newton_mr", max_iter=args.newton_iter)
            back = point.accepted and abs(point.loss - s.loss) < 1e-8 and point.index.count == int(s.index_count)
            newton_rows.append({"saddle": i, "start": j, "accepted": point.accepted, "returned": back,
                                "loss_difference": point.loss - s.loss, "index": point.index.count if point.index else -1,
                                "distance_to_saddle": float((point.theta - theta_star).norm()),
                                "iterations": point.iterations, "stop": point.stop})
            if j == 0:
                curves[(i, "Newton")] = np.array(point.losses)
        print(f"saddle {i}: index {int(s.index_count)}, lambda_min {lam_min:.3g} (x{space.shape[1]}), "
              f"Newton returned {sum(r['returned'] for r in newton_rows if r['saddle'] == i)}", file=sys.stderr)
    return pd.DataFrame(rows), pd.DataFrame(newton_rows), curves


def plot_escape(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = dict(zip(sorted(table.lr_factor.unique()), "os^Dv"))
    for (method, factor), g in table.groupby(["method", "lr_factor"]):
        g = g[g.escaped > 0]
        lam = g.lambda_min.abs().to_numpy()
        time = (g.median_escape_step * g.eta).to_numpy()
        ax.scatter(lam, time, color=COLORS[method], marker=markers[factor], s=28, edgecolors="k", linewidths=0.3,
                   label=f"{method}, eta = {factor:g}/lambda_max")
    gd = table[table.method == "GD"].sort_values("lambda_min")
    ax.plot(gd.lambda_min.abs(), gd.predicted_step * gd.eta, "k--", lw=1, label="linear dynamics (GD prediction)")
    lam = table.lambda_min.abs().to_numpy()
    log_axis(ax, lam, "x")
    ax.set_yscale("log")
    ax.set(xlabel=r"$|\lambda_{\min}|$ at the saddle", ylabel=r"escape time (steps $\times\ \eta$)",
           title="escape from certified saddles")
    ax.legend(fontsize=7)
    return fig


def plot_curves(curves: dict, saddle: int, f_star: float, drop: float):
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in (*METHODS, "Newton"):
        if (saddle, method) in curves:
            c = curves[(saddle, method)]
            ax.plot(np.arange(len(c)), c - f_star, color=COLORS[method], label=method)
    ax.axhline(-drop, color="0.5", lw=0.8, ls=":", label=f"escape: drop {drop:g}")
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.set(xlabel="step (Newton: iteration)", ylabel=r"$F(\theta_t) - F(\theta^*)$", title=f"saddle {saddle}")
    ax.legend(fontsize=8)
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a width sweep with task=certify results (experiment=dauphin_index)")
    parser.add_argument("--out", type=Path, help="output folder (default SOURCE/analysis/saddle_escape)")
    parser.add_argument("--saddles", type=int, default=4, help="certified saddles, spread over |lambda_min| (default 4)")
    parser.add_argument("--embed-members", type=int, default=2, help="minima per width embedded (default 2)")
    parser.add_argument("--seeds", type=int, default=4, help="start points (and noise seeds) per step size (default 4)")
    parser.add_argument("--lr-factors", type=float, nargs="+", default=[0.25, 1.0], help="eta = factor / lambda_max")
    parser.add_argument("--start-radius", type=float, default=1e-4, help="distance of the starts from the saddle")
    parser.add_argument("--drop", type=float, default=1e-3, help="escaped once F has dropped by this (loss units)")
    parser.add_argument("--noise", type=float, default=1e-3, help="noisy GD: std of the isotropic gradient noise")
    parser.add_argument("--batch-size", type=int, default=50, help="SGD minibatch size")
    parser.add_argument("--max-steps", type=int, default=3000, help="steps per run (default 3000)")
    parser.add_argument("--newton-starts", type=int, default=2, help="Newton runs per saddle (default 2)")
    parser.add_argument("--newton-iter", type=int, default=30, help="Newton iterations (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the starts, minibatches and noise")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    members = store.load_members(path)
    minima = certified_points(path, members)
    if not len(minima):
        raise AnalysisError(f"{path}: no certified points; run surfacekit task=certify source={path} first")
    saddles = choose(embedded_saddles(path, minima, args.embed_members), args.saddles)
    table, newton, curves = escape_study(path, saddles, args)
    out = output_dir(path, PROG, args.out)
    written = save_table(table, out, "saddle_escape") + save_table(newton, out, "newton")
    written += save_figure(plot_escape(table), out, "escape_time_vs_lambda")
    written += save_figure(plot_curves(curves, 0, float(saddles.loss[0]), args.drop), out, "escape_curves")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print(f"Newton returned to the saddle in {int(newton.returned.sum())} of {len(newton)} runs")
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
