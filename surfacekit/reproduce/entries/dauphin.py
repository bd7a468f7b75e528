"""Dauphin et al. 2014, Fig. 1: the index of critical points rises with their loss (a deep linear network)."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from surfacekit import store
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import table

FINDER = "levenberg_marquardt"


def _network(inputs: int, outputs: int, width: int, members: int) -> tuple[str, ...]:
    """A linear network inputs -> width -> outputs (no biases) fitted by full-batch gradient descent from a
    small initialization to a tanh teacher's outputs: its trajectory passes the saddles one after another."""
    return ("data=teacher", f"data.input_dim={inputs}", f"data.teacher_width={inputs}", f"data.outputs={outputs}",
            "data.train_size=200", "data.test_size=200", "model.activation=linear", "model.bias=false",
            f"model.width={width}", "model.loss=mse", "model.init=normal", "model.init_std=0.01", "optimizer=sgd",
            "optimizer.lr=0.05", "optimizer.schedule=constant", "trainer.batch_size=null", "trainer.epochs=400",
            "trainer.eval_every=1", "trainer.snapshots=true", f"population.size={members}", "dtype=float64")


def plan(ctx: Context) -> Plan:
    inputs, outputs, width, members, starts = ctx.by_scale((8, 5, 3, 2, 10), (20, 10, 4, 4, 30))
    run = ctx.run_dir("linear")
    notes = ("the paper's nonlinear MLPs on downsampled MNIST and CIFAR-10 are left out: from training-trajectory "
             "starts no finder reaches accepted critical points of nonlinear networks (docs/critical.md), and an "
             "index-loss cloud of unaccepted endpoints is no evidence",)
    return Plan((Surfacekit("linear", _network(inputs, outputs, width, members)),
                 Surfacekit("critical", ("task=critical", f"source={run}", f"critical.starts={starts}",
                                         f"critical.finders=[{FINDER}]"), sweep=False),
                 Analysis("index_vs_loss", (str(run / "0" / "results.h5"), "--bray-dean"))), notes)


def critical_values(x: torch.Tensor, y: torch.Tensor, width: int) -> np.ndarray:
    """Losses of every critical point of the linear network x -> W2 W1 x with ``width`` hidden units fitted to y
    by mean squared error (summed over outputs): tr(S_yy) - sum_{i in I} sigma_i over the index sets I of at most
    ``width`` eigenvalues sigma of S_yx S_xx^-1 S_xy (Baldi and Hornik 1989). x [N, d], y [N, m] float64."""
    n = len(x)
    sxx, sxy, syy = x.T @ x / n, x.T @ y / n, y.T @ y / n
    sigma = torch.linalg.eigvalsh(sxy.T @ torch.linalg.solve(sxx, sxy)).numpy()
    sums = {0.0} | {float(sum(c)) for k in range(1, width + 1) for c in itertools.combinations(sigma, k)}
    return np.sort(float(torch.trace(syy)) - np.asarray(sorted(sums)))


def checks(ctx: Context) -> list[Check]:
    source = ctx.run_dir("linear") / "0" / "results.h5"
    summary = table(ctx, "index_vs_loss", "index_vs_loss").set_index("source").loc[f"finder runs ({FINDER})"]
    points = store.load_group(source, f"critical/{FINDER}")
    job = store.load_job(source)
    values = critical_values(job.data.x_train.double(), job.data.y_train.double(), int(job.cfg.model.width))
    accepted = points["accepted"].astype(bool)
    loss, index = points["loss"][accepted], points["index_count"][accepted]
    gap = np.abs(loss[:, None] - values[None, :]).min(axis=1) / np.abs(values).max()
    matched = int((gap < 1e-6).sum())
    minima = loss[index == 0]
    levels = np.unique(np.round(loss, 6))
    rho, p = float(summary.spearman_rho_accepted), float(summary.permutation_p)
    return [
        Check(f"{FINDER} endpoints accepted as critical points", f"{int(accepted.sum())} of {len(accepted)}",
              accepted.mean() >= 0.9, ">= 90% (scale-free acceptance, docs/critical.md)",
              published="accepted 30 of 30 random starts on a linear autoencoder", source="docs/critical.md (calibration)"),
        Check("Spearman rho(loss, index) over accepted critical points", rho, rho > 0 and p < 0.05,
              "rho > 0 with permutation p < 0.05", published="the index of critical points rises with their error",
              source="Dauphin et al. 2014, Fig. 1"),
        Check("permutation p-value of that rho", p, None, "two-sided, 10000 shuffles"),
        Check("distinct critical values among the accepted points", len(levels), len(levels) >= 3, ">= 3 (a spread of losses)"),
        Check("accepted losses equal to a closed-form critical value (to 1e-6 relative)", f"{matched} of {len(loss)}",
              len(loss) > 0 and matched == len(loss), "all",
              published="critical losses are tr(S_yy) minus sums of at most `width` eigenvalues of S_yx S_xx^-1 S_xy",
              source="Baldi and Hornik 1989"),
        Check("accepted minima (index 0) at the global minimum's loss", f"{int(np.sum(np.abs(minima - values[0]) < 1e-6 * abs(values[0])))} "
              f"of {len(minima)}", len(minima) > 0 and bool(np.all(np.abs(minima - values[0]) < 1e-6 * abs(values[0]))),
              "all, and at least one", published="every local minimum of a linear network is global",
              source="Baldi and Hornik 1989"),
    ]


REPRODUCTION = Reproduction(
    name="dauphin",
    title="Index of critical points against their loss",
    reference="Dauphin, Pascanu, Gulcehre, Cho, Ganguli, Bengio 2014 (NeurIPS), Fig. 1",
    summary="A deep linear network (teacher data, no biases) is trained by gradient descent from a small initialization, "
            "whose trajectory passes near the saddles; Levenberg-Marquardt on g = 0 is started from points of the "
            "trajectory spread uniformly in loss, and only endpoints accepted as critical points are used: index "
            "(fraction of negative Hessian eigenvalues) against loss, the eigenvalue histograms at three of them, and "
            "every accepted loss checked against Baldi and Hornik's closed form. The paper used nonlinear networks on "
            "downsampled MNIST and CIFAR-10 with Newton's method.",
    plan=plan,
    checks=checks,
)
