"""Difference target propagation against backprop and plain target propagation (Lee et al. 2015)."""

from __future__ import annotations

import numpy as np

from surfacekit import store
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit

PAPER = "Lee, Zhang, Fischer, Bengio 2015"


def plan(ctx: Context) -> Plan:
    depth, width, epochs = ctx.by_scale((3, 64, 20), (7, 240, 100))
    sweep = ["trainer=backprop,dtp,tp", f"model.depth={depth}", f"model.width={width}", "model.activation=tanh",
             "model.init=orthogonal", f"trainer.epochs={epochs}", "trainer.batch_size=100", "population.size=4",
             "optimizer=adam", "optimizer.lr=0.001"]
    notes = []
    if ctx.scale == "small":
        notes.append(f"{depth} x {width} tanh for {epochs} epochs on digits; the paper: 7 x 240 for 100 epochs on MNIST")
    elif ctx.mnist is not None:
        sweep += ["data=mnist", f"data.path={ctx.mnist}"]
    else:
        notes.append("MNIST (the paper's data) skipped: no --mnist DIR was given; ran the paper's network on digits")
    methods = ctx.run_dir("methods")
    return Plan((Surfacekit("methods", tuple(sweep)), Analysis("training_methods", (str(methods),))), tuple(notes))


def _jobs_by_method(source) -> dict[str, str]:
    """Job name of each method in the sweep (tp is dtp without the difference correction)."""
    found = {}
    for job in store.list_jobs(source):
        trainer = store.load_config(source, job)["trainer"]
        method = "tp" if trainer["method"] == "dtp" and not trainer.get("difference_correction", True) else trainer["method"]
        found[method] = job
    return found


def checks(ctx: Context) -> list[Check]:
    source = ctx.run_dir("methods")
    jobs = _jobs_by_method(source)
    members = store.load_members(source, analyses="none")
    error = {m: float(members.loc[members.job == j, "test_error"].mean()) for m, j in jobs.items()}
    curves = store.load_curves(source, jobs["dtp"])
    depth = int(store.load_config(source, jobs["dtp"])["model"]["depth"])
    final = {i: float(np.nanmedian(curves[f"cosine_layer{i}"][:, -1])) for i in range(depth)}
    top = final[depth - 1]
    lower = [final[i] for i in range(depth - 1)]
    rows = [
        Check("DTP test error minus backprop's (percentage points)", 100 * (error["dtp"] - error["backprop"]),
              error["dtp"] - error["backprop"] < 0.02, "< 2 points",
              published="DTP 1.94% against backprop 1.86% on MNIST (7 x 240 tanh)", source=f"{PAPER}, Sec. 3.1"),
        Check("TP (no difference correction) test error minus DTP's (percentage points)", 100 * (error["tp"] - error["dtp"]),
              error["tp"] - error["dtp"] > 0.10, "> 10 points: TP fails without the correction",
              published="the difference correction is what makes imperfect inverses work", source=f"{PAPER}, Sec. 2.3"),
        Check("DTP: cosine to the backprop gradient at the top hidden layer, end of training", top, abs(top - 1) < 1e-4,
              "1 to 1e-4 (its target is a gradient step)", published="exactly parallel at the top hidden layer",
              source=f"{PAPER}, Sec. 2.3"),
        Check("DTP: least cosine to the backprop gradient over the lower hidden layers, end of training", min(lower),
              min(lower) > 0.5, "> 0.5 (every update well aligned with the gradient)",
              published="cosines 0.56 to 0.96 (digits, the paper's settings)", source="REFERENCES.md (calibration)"),
    ]
    for method in ("backprop", "dtp", "tp"):
        rows.append(Check(f"{method} test error (%)", 100 * error[method], None, "mean over the population",
                          published={"backprop": "1.86 (MNIST)", "dtp": "1.94 (MNIST)", "tp": ""}[method],
                          source=f"{PAPER}, Sec. 3.1" if method != "tp" else ""))
    for i, cosine in final.items():
        rows.append(Check(f"DTP cosine to backprop, hidden layer {i + 1} of {depth}", cosine, None, "median over members"))
    return rows


REPRODUCTION = Reproduction(
    name="training_methods",
    title="Difference target propagation, target propagation and backprop",
    reference="Lee, Zhang, Fischer, Bengio 2015 (ECML-PKDD)",
    summary="The same tanh networks (orthogonal initialization) trained by backprop (Adam), difference target "
            "propagation and plain target propagation, with the per-layer cosine between the DTP update and the "
            "backprop gradient recorded along training: endpoint losses, learning curves, cosines per layer, and the "
            "test errors beside the paper's.",
    plan=plan,
    checks=checks,
)
