"""Goodfellow, Vinyals and Saxe 2015: the loss along straight paths from initialization and between solutions."""

from __future__ import annotations

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import table

PAPER = "Goodfellow, Vinyals, Saxe 2015"


def plan(ctx: Context) -> Plan:
    members, num = ctx.by_scale((4, 101), (16, 401))
    nets = ctx.run_dir("networks")
    return Plan((Surfacekit("networks", (f"population.size={members}", "model.width=32")),
                 Surfacekit("landscape", ("task=landscape", f"source={nets}", "landscape.kind=[interpolation]",
                                          f"landscape.interpolation.num={num}"), sweep=False),
                 Analysis("interpolation", (str(nets / "0" / "results.h5"),))),
                ("digits, 64-32-10 ReLU networks trained by SGD; the paper: MNIST and CIFAR-10 networks, maxout and "
                 "convolutional ones included",))


def checks(ctx: Context) -> list[Check]:
    paths = table(ctx, "interpolation", "interpolation_barriers")
    init = paths[paths.path.str.startswith("initialization")]
    pairs = paths[paths.path.str.startswith("solution")]
    monotone = int(init.train_monotone.astype(bool).sum())
    ends = pairs[["train_loss0", "train_loss1"]].max(axis=1)
    ratio = float((pairs.train_barrier / ends).min())
    return [
        Check("init -> solution paths along which the training loss never rises", f"{monotone} of {len(init)}",
              monotone == len(init), "all", published="the loss falls monotonically along the straight path from "
              "initialization to the solution", source=f"{PAPER}, abstract"),
        Check("solution -> solution: least barrier over the higher endpoint loss (train)", ratio, ratio > 1,
              "> 1: a barrier higher than the endpoint losses between independently trained solutions",
              published="a barrier separates two independent solutions (digits: 0.10 to 0.22 against endpoint loss 0.002)",
              source="REFERENCES.md (calibration of the paper's solution-to-solution paths)"),
        Check("solution -> solution barriers (train loss)", ", ".join(f"{b:.3g}" for b in pairs.train_barrier), None,
              "max over [0, 1] of L minus the higher endpoint"),
        Check("endpoint train losses (init -> solution)", ", ".join(f"{b:.3g}" for b in init.train_loss1), None,
              "loss at the solution"),
    ]


REPRODUCTION = Reproduction(
    name="interpolation",
    title="Linear interpolation: initialization to solution, solution to solution",
    reference="Goodfellow, Vinyals, Saxe 2015 (ICLR), Qualitatively characterizing neural network optimization problems",
    summary="The train and test loss along (1 - a) theta_0 + a theta_1 for a in [-0.5, 1.5], from each network's "
            "initialization to its trained parameters and between independently trained networks (adjacent members "
            "of one population), with the barrier heights.",
    plan=plan,
    checks=checks,
)
