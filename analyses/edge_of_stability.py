"""The edge of stability (Cohen et al. 2021): lambda_max of the full-batch training objective against
the stability threshold of the optimizer, over time, for every member (learning rate) of every job.

    surfacekit -m experiment=edge_of_stability
    python analyses/edge_of_stability.py outputs/multirun/DATE/TIME [--out DIR]

Reads ``/tracked_sharpness`` (``trainer.track_sharpness``) and the training curves. Each member's
step is eta = optimizer.lr x lr_scale; its threshold is 2 / eta for gradient descent, (2 + 2 beta) / eta
for heavy-ball momentum beta (``optimizer=momentum``) and (2 + 2 beta) / (eta (1 + 2 beta)) for
Nesterov (``optimizer=nesterov``): the largest curvature at which the update is stable on a
quadratic. The ratio r = lambda_max / threshold is 1 at the edge (for gradient descent
r = lambda_max eta / 2). Loss convention: ``model.loss=mse`` is sum_c (f_c - y_c)^2 averaged over
examples, without Cohen et al.'s factor 1/2, so its lambda_max is twice theirs at the same point;
gradient descent with step eta on it is theirs with step 2 eta, and the threshold 2 / eta above
refers to this package's objective.

A member starts stable when r < 1 at step 0, and then *reaches the edge from below* (the
stable-to-edge regime) when r >= 0.95 at some check after r < 0.9 at an earlier one (progressive
sharpening); its *late phase* is the second half of the checks from that first check on. Members
unstable at step 0 ("above the edge at the start"), never below 0.9 ("at the edge from the
start") or never reaching 0.95 ("below the edge") are listed but not in the target. Written into --out
(default SOURCE/analysis/edge_of_stability): ``ratio_vs_step`` (r over time, one panel per
optimizer), ``sharpness_vs_step`` (lambda_max with the thresholds dashed), ``loss_vs_step`` (the
training loss, log scale, the first check at the edge marked) and the table ``edge_of_stability``
(per member: whether it diverged, threshold, regime, the late-phase mean, min and max of r, whether
the mean lies in [0.95, 1.10], the loss's rises after reaching the edge and whether it fell overall,
Lanczos cost).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from surfacekit import store
from surfacekit.plots import (AnalysisError, log_axis, one_line_errors, output_dir, results_path, save_figure, save_table,
                              sequential_colors)

PROG = "edge_of_stability"
TARGET = (0.95, 1.10)
REACHED, BELOW_START = 0.95, 0.9


def threshold_factor(optimizer: dict) -> float:
    """The stability threshold times eta for the optimizer config (gradient descent 2)."""
    name = optimizer.get("name", "sgd")
    beta = float(optimizer.get("momentum", 0.0))
    if name == "momentum":
        return 2 + 2 * beta
    if name == "nesterov":
        return (2 + 2 * beta) / (1 + 2 * beta)
    if name == "sgd":
        return 2.0
    raise AnalysisError(f"optimizer={name}: the edge-of-stability threshold is known for sgd, momentum and nesterov only")


def member_record(ratio: np.ndarray, steps: np.ndarray, loss: np.ndarray, loss_steps: np.ndarray) -> dict:
    """Regime, edge step, late-phase statistics of r and the loss's behaviour after the edge."""
    finite = np.isfinite(ratio)
    ratio, steps = ratio[finite], steps[finite]
    out = {"ratio_start": ratio[0] if len(ratio) else np.nan, "regime": "below the edge", "edge_step": np.nan,
           "late_mean": np.nan, "late_min": np.nan, "late_max": np.nan, "in_target": False, "loss_rises": np.nan,
           "loss_at_edge": np.nan, "final_loss": loss[np.isfinite(loss)][-1] if np.isfinite(loss).any() else np.nan,
           "falls_overall": False}
    if not len(ratio):
        return out
    if ratio[0] >= 1:
        out["regime"] = "above the edge at the start"
        return out
    below = np.flatnonzero(ratio < BELOW_START)
    if not len(below):
        out["regime"] = "at the edge from the start"
        return out
    after = np.flatnonzero(ratio >= REACHED)
    after = after[after > below[0]]
    if not len(after):
        return out
    first = int(after[0])
    late = ratio[first + (len(ratio) - first) // 2:]
    in_loss = (loss_steps >= steps[first]) & np.isfinite(loss)
    segment = loss[in_loss]
    out.update(regime="stable to edge", edge_step=int(steps[first]), late_mean=float(late.mean()),
               late_min=float(late.min()), late_max=float(late.max()),
               in_target=bool(TARGET[0] <= late.mean() <= TARGET[1]),
               loss_rises=int((np.diff(segment) > 0).sum()), loss_at_edge=float(segment[0]),
               falls_overall=bool(segment[-1] < segment[0]))
    return out


def collect(path: Path) -> tuple[pd.DataFrame, dict]:
    """One row per member (its settings and record) and its series {(job, member): (steps, r, lambda, threshold,
    loss steps, loss)}."""
    rows, series = [], {}
    members = store.load_members(path, analyses="none")
    for job in store.list_jobs(path):
        try:
            tracked = store.load_group(path, "tracked_sharpness", job or None)
        except store.ResultsError:
            continue
        config = store.load_config(path, job or None)
        optimizer = config["optimizer"]
        if optimizer.get("schedule", "constant") != "constant":
            raise AnalysisError(f"{path}: job {job!r} uses optimizer.schedule={optimizer['schedule']}; the threshold "
                                "needs a constant step (optimizer.schedule=constant)")
        curves = store.load_group(path, "curves", job or None)
        own = members[(members["job"] == job) & ~members.get("is_centre", pd.Series(False, index=members.index))]
        factor = threshold_factor(optimizer)
        for k, (_, member) in enumerate(own.iterrows()):
            eta = float(optimizer["lr"]) * float(member.get("lr_scale", 1.0))
            threshold = factor / eta
            ratio = tracked["lambda_max"][k] / threshold
            record = member_record(ratio, tracked["step"], curves["train_loss"][k], curves["step"])
            hvps = tracked["hvps"][k][tracked["hvps"][k] > 0]
            rows.append({"job": job, "member": int(member["member"]), "diverged": bool(member.get("diverged", False)),
                         "optimizer": optimizer["name"],
                         "momentum": float(optimizer.get("momentum", 0.0)), "eta": eta, "threshold": threshold,
                         "threshold_rule": f"{factor:.4g} / eta", **record,
                         "hvps_per_check": float(hvps.mean()) if len(hvps) else np.nan,
                         "checks_not_converged": int((~tracked["converged"][k] & np.isfinite(tracked["lambda_max"][k])).sum())})
            series[(job, int(member["member"]))] = (tracked["step"], ratio, tracked["lambda_max"][k], threshold,
                                                    curves["step"], curves["train_loss"][k])
    if not rows:
        raise AnalysisError(f"{path} has no /tracked_sharpness; train with trainer.track_sharpness=N "
                            "(experiment=edge_of_stability does)")
    return pd.DataFrame(rows), series


def series_figure(table: pd.DataFrame, series: dict, which: str) -> plt.Figure:
    optimizers = list(dict.fromkeys(table["optimizer"]))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5 * len(optimizers), 3.6), squeeze=False)
    for ax, name in zip(axes[0], optimizers):
        rows = table[table["optimizer"] == name].sort_values("eta")
        shown = []  # the values of members that did not diverge set the axis limits
        for color, (_, row) in zip(sequential_colors(len(rows)), rows.iterrows()):
            steps, ratio, lam, threshold, loss_steps, loss = series[(row["job"], row["member"])]
            label = rf"$\eta$={row['eta']:.3g}" + (" (diverged)" if row["diverged"] else "")
            if not row["diverged"]:
                shown.append({"ratio": ratio, "sharpness": np.append(lam, threshold), "loss": loss}[which])
            if which == "ratio":
                ax.plot(steps, ratio, color=color, lw=1, label=label)
            elif which == "sharpness":
                ax.plot(steps, lam, color=color, lw=1, label=label)
                ax.axhline(threshold, color=color, ls="--", lw=0.8)
            else:
                ax.plot(loss_steps, loss, color=color, lw=0.8, label=label)
                if np.isfinite(row["edge_step"]):
                    ax.axvline(row["edge_step"], color=color, ls=":", lw=0.8)
        values = np.concatenate(shown) if shown else np.array([np.nan])
        values = values[np.isfinite(values)]
        if len(values) and which != "loss":
            ax.set_ylim(0.0, 1.08 * max(values.max(), TARGET[1] if which == "ratio" else 0.0))
        if which == "ratio":
            ax.axhline(1.0, color="k", lw=0.8)
            ax.axhspan(*TARGET, color="0.85", zorder=0, label="target band")
            ax.set_ylabel(r"$\lambda_{\max}$ / threshold")
        elif which == "sharpness":
            ax.set_ylabel(r"$\lambda_{\max}$ of the training objective (dashed: threshold)")
        else:
            ax.set_ylabel("training loss (squared error, no 1/2)")
            log_axis(ax, values[values > 0], "y", ticks="round")
            if len(values):
                ax.set_ylim(values[values > 0].min() / 1.5, values.max() * 1.5)
        rule = rows["threshold_rule"].iloc[0]
        ax.set_title(f"{name} (threshold {rule})")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return fig


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="run or sweep directory, sweep.h5 or results.h5 (with trainer.track_sharpness)")
    parser.add_argument("--out", type=Path, help="output directory (default SOURCE/analysis/edge_of_stability)")
    args = parser.parse_args(argv)
    path = results_path(args.source)
    table, series = collect(path)
    out = output_dir(args.source, PROG, args.out)
    save_table(table, out, "edge_of_stability")
    for which in ("ratio", "sharpness", "loss"):
        save_figure(series_figure(table, series, which), out, f"{which}_vs_step")
    edge = table[table["regime"] == "stable to edge"]
    print(table.to_string(index=False, float_format="%.4g"))
    print(f"{len(edge)} of {len(table)} members reach the edge from below; late-phase mean of lambda_max / threshold in "
          f"[{TARGET[0]}, {TARGET[1]}] for {int(edge['in_target'].sum())} of them; loss rose after the edge and fell "
          f"overall for {int(((edge['loss_rises'] > 0) & edge['falls_overall']).sum())}")
    print(f"wrote figures and tables to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
