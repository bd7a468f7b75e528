"""The optimizer comparison of the optimization lecture (the counterpart of the logistic-regression and
MLP panels of Kingma and Ba 2015, Figures 1 and 2): training cost against epochs for every method of
``experiment=optimizer_zoo``, one panel per data set and model.

Each job is one population of one method: 3 seeds, times a learning-rate grid where the method has a
learning rate (member k trains with optimizer.lr x population.lr_scale[k]). The learning rate is
chosen per panel and method inside the population: the grid value with the lowest mean final
training loss over its seeds (a value with a diverged member is never chosen). The curves are the
mean over the chosen value's seeds with a band from the lowest to the highest seed; the table
(``choices.md`` / ``choices.csv``) states the grid, the chosen learning rate (and whether it lies at
an end of the grid, where a wider grid might choose beyond it), the final training
loss (mean, std), the final test error, diverged members, for the full-batch second-order
methods their curvature products, and the job's wall time per member. Full-batch methods (rprop, hessian_free, scg) count one
iteration as one epoch (one full-batch gradient; Hessian-free and SCG also spend curvature products
per iteration, listed in the table).

Writes into --out (default SWEEP/analysis/optimizer_zoo): ``optimizer_zoo.png`` / ``.pdf``,
``choices.csv`` / ``.md`` and ``summary.md``.

    python analyses/optimizer_zoo.py outputs/multirun/DATE/TIME [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from surfacekit.plots import (AnalysisError, log_axis, loss_label, one_line_errors, output_dir, results_path,
                              save_figure, save_table)
from surfacekit.store import list_jobs, load_attrs, load_config, load_curves, load_members

PROG = "optimizer_zoo"
METHODS = ("sgd", "momentum", "nesterov", "rprop", "adagrad", "rmsprop", "adadelta", "adam", "adamax",
           "prong", "kfac", "hessian_free", "scg")
SECOND_ORDER = ("prong", "kfac", "hessian_free", "scg")
# First-order methods solid in tab10 colours, the natural-gradient and second-order ones dashed in Dark2.
PALETTE = {**dict(zip(METHODS[:9], sns.color_palette("tab10", 9))), **dict(zip(SECOND_ORDER, sns.color_palette("Dark2", 4)))}
COST_CURVES = {"hessian_free": "curvature_products", "scg": "hvps"}


def method_of(config: dict) -> str:
    """The zoo entry of a job: its trainer for prong, kfac, hessian_free and scg, else its optimizer."""
    trainer = config.get("trainer", {}).get("method", "backprop")
    return trainer if trainer in SECOND_ORDER else config.get("optimizer", {}).get("name", "sgd")


def model_of(config: dict) -> str:
    model = config.get("model", {})
    widths = model.get("widths") or [model.get("width")] * int(model.get("depth", 1))
    if not widths:
        return "logistic regression"
    return f"MLP {'-'.join(str(w) for w in widths)} {model.get('activation', 'relu')}"


def choose(members: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """The lr_scale whose members have the lowest mean final train loss (none of them diverged), and
    those members. Raises AnalysisError when every value has a diverged member."""
    scores = {}
    for scale, group in members.groupby("lr_scale"):
        diverged = group["diverged"].astype(bool).any() or not np.isfinite(group["final_train_loss"]).all()
        scores[float(scale)] = np.inf if diverged else float(group["final_train_loss"].mean())
    best = min(scores, key=scores.get)
    if not np.isfinite(scores[best]):
        raise AnalysisError(f"every learning rate of {members['method'].iloc[0]} diverged in {members['panel'].iloc[0]}")
    return best, members[members["lr_scale"] == best]


def collect(path) -> tuple[pd.DataFrame, dict]:
    """Chosen members (one row per network, with method, panel, lr) and their curves by (panel, method)."""
    members = load_members(path, analyses="none")
    rows, curves = [], {}
    for job in list_jobs(path):
        config = load_config(path, job or None)
        method, data = method_of(config), config.get("data", {}).get("name", "?")
        frame = members[members["job"] == job].copy()
        if frame.empty:
            continue
        frame["method"], frame["data"], frame["model"] = method, data, model_of(config)
        frame["panel"] = f"{data}, {frame['model'].iloc[0]}"
        has_lr = config.get("trainer", {}).get("method") in ("backprop", "prong", "kfac")
        base = float(config.get("optimizer", {}).get("lr", np.nan)) if has_lr else np.nan
        scale, chosen = choose(frame)
        seconds = (pd.Timestamp(load_attrs(path, job or None)["end_time"])
                   - pd.Timestamp(load_attrs(path, job or None)["start_time"])).total_seconds()
        scales = sorted(set(frame["lr_scale"]))
        edge = has_lr and len(scales) > 1 and scale in (scales[0], scales[-1])
        chosen = chosen.assign(lr=base * scale, seconds_per_member=seconds / len(frame), at_edge=edge, lr_grid=", ".join(f"{base * s:.3g}" for s in scales)
                               if has_lr else "", grid_size=frame["lr_scale"].nunique(),
                               diverged_in_grid=int(frame["diverged"].astype(bool).sum()))
        c = load_curves(path, job or None)
        index = chosen["member"].to_numpy() - int(frame["member"].min())  # curve rows are members in order
        record = {"epoch": np.asarray(c["epoch"]), "train_loss": np.asarray(c["train_loss"])[index]}
        if method in COST_CURVES and COST_CURVES[method] in c:
            record["cost"] = np.asarray(c[COST_CURVES[method]])[index]
        key = (chosen["panel"].iloc[0], method)
        if key in curves:
            raise AnalysisError(f"{path}: two jobs of {method} on {key[0]}; give one sweep per comparison")
        curves[key] = record
        rows.append(chosen)
    if not rows:
        raise AnalysisError(f"{path}: no training jobs")
    return pd.concat(rows, ignore_index=True), curves


def table(chosen: pd.DataFrame, curves: dict) -> pd.DataFrame:
    out = []
    for (panel, method), group in chosen.groupby(["panel", "method"], sort=False):
        cost = curves[(panel, method)].get("cost")
        out.append({"panel": panel, "method": method, "learning rates tried": group["lr_grid"].iloc[0],
                    "chosen lr": group["lr"].iloc[0], "at grid edge": "yes" if group["at_edge"].iloc[0] else "",
                    "seeds": len(group),
                    "final train loss": group["final_train_loss"].mean(), "std": group["final_train_loss"].std(),
                    "test error": group["test_error"].mean(),
                    "diverged (whole grid)": group["diverged_in_grid"].iloc[0],
                    "curvature products": float(cost[:, -1].mean()) if cost is not None else np.nan,
                    "job seconds per member": group["seconds_per_member"].iloc[0]})
    frame = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHODS)}
    return frame.sort_values(["panel", "method"], key=lambda s: s.map(order) if s.name == "method" else s)


def plot(chosen: pd.DataFrame, curves: dict, out, ylabel: str) -> None:
    panels = sorted(set(chosen["panel"]), key=lambda p: (p.split(",")[0], "MLP" in p))
    data_sets = sorted({p.split(",")[0] for p in panels})
    models = sorted({p.split(", ", 1)[1] for p in panels}, key=lambda m: "MLP" in m)
    fig, axes = plt.subplots(len(data_sets), len(models), figsize=(6.6 * len(models), 3.9 * len(data_sets)),
                             squeeze=False)
    for r, data in enumerate(data_sets):
        for c, model in enumerate(models):
            ax = axes[r][c]
            panel = f"{data}, {model}"
            values = []
            for method in METHODS:
                record = curves.get((panel, method))
                if record is None:
                    continue
                loss = record["train_loss"]
                mean = loss.mean(axis=0)
                lr = chosen.loc[(chosen["panel"] == panel) & (chosen["method"] == method), "lr"].iloc[0]
                label = method + (f" (lr {lr:.2g})" if np.isfinite(lr) else "")
                ax.plot(record["epoch"], mean, color=PALETTE[method], lw=1.4,
                        ls="--" if method in SECOND_ORDER else "-", label=label)
                ax.fill_between(record["epoch"], loss.min(axis=0), loss.max(axis=0), color=PALETTE[method], alpha=0.15,
                                lw=0)
                values.append(loss[np.isfinite(loss) & (loss > 0)])
            values = np.concatenate(values) if values else np.array([])
            if values.size:
                log_axis(ax, values, "y", ticks="round")
            ax.set_title(panel)
            ax.set_xlabel("epoch (full-batch methods: iteration)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="chosen lr", title_fontsize=7)
    fig.suptitle("optimizer comparison: mean over seeds at the chosen learning rate, band min to max over seeds",
                 y=1.0)
    save_figure(fig, out, "optimizer_zoo")


@one_line_errors(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="the sweep directory (or merged sweep.h5) of experiment=optimizer_zoo")
    parser.add_argument("--out", help="output directory (default SWEEP/analysis/optimizer_zoo)")
    args = parser.parse_args(argv)
    path = results_path(args.sweep)
    chosen, curves = collect(path)
    out = output_dir(args.sweep, PROG, args.out)
    plot(chosen, curves, out, loss_label(path, "training loss"))
    summary = table(chosen, curves)
    save_table(summary, out, "choices")
    text = ("# Optimizer comparison\n\nLearning rate chosen per panel and method: the grid value with the lowest mean "
            "final training loss over its seeds (none diverged). Full-batch methods count iterations as epochs. Job "
            "seconds per member: the job's wall time (training and evaluations) over its members, load-dependent.\n\n"
            + summary.astype(object).where(summary.notna(), None).to_markdown(index=False, floatfmt=".4g",
                                                                               missingval="")
            + "\n\nFigure: optimizer_zoo (PNG and PDF)\n")
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote optimizer_zoo.png/pdf, choices.csv/md and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
