"""The edge of stability: full-batch gradient descent drives lambda_max up to 2 / eta and holds it there."""

from __future__ import annotations

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import sequence, table

PAPER = "Cohen et al. 2021 (ICLR), Figures 1-2"


def plan(ctx: Context) -> Plan:
    # small: gradient descent only, the three steps just below the edge at the start (the edge is reached
    # at step 670 for eta 0.11; at 800 steps its loss had not yet risen); full: 3 optimizers x 8 steps
    small = ("optimizer=sgd", "population.size=3", "population.lr_scale=[11,12,13]")
    overrides = ctx.by_scale(small, ("optimizer=sgd,momentum,nesterov",))
    return Plan((Surfacekit("gd", ("experiment=edge_of_stability", *overrides)),
                 Analysis("edge_of_stability", (str(ctx.run_dir("gd")),))),
                ctx.by_scale(("gradient descent only, the 3 step sizes just below the edge; the paper's CIFAR-10 "
                              "networks are not repeated: 64-32-32-10 tanh, MSE, 500 digits, float64",),
                             ("the paper's CIFAR-10 networks are not repeated: 64-32-32-10 tanh, MSE, 500 digits, "
                              "float64",)))


def checks(ctx: Context) -> list[Check]:
    rows = table(ctx, "edge_of_stability", "edge_of_stability")
    gd = rows[rows["optimizer"] == "sgd"] if "optimizer" in rows else rows
    edge = gd[gd["regime"] == "stable to edge"]
    late = edge["late_mean"].to_numpy()
    rises = edge["loss_rises"].to_numpy()
    return [
        Check("gradient-descent steps that start below the edge and reach it (r = lambda_max eta / 2 >= 0.95)",
              f"{len(edge)} of {len(gd)}", len(edge) >= 2, ">= 2 (progressive sharpening)",
              published="lambda_max rises until it reaches 2 / eta", source=PAPER),
        Check("late-phase mean of r after the edge, per step", sequence(late), len(late) > 0 and
              bool(((late >= 0.95) & (late <= 1.10)).all()), "every one in [0.95, 1.10]",
              published="lambda_max hovers just above 2 / eta", source=PAPER),
        Check("loss rises after the edge, per step (count of evaluations)", sequence(rises), len(rises) > 0 and
              bool((rises > 0).all() & edge["falls_overall"].to_numpy().all()), "> 0, and the loss falls overall",
              published="the loss is non-monotone but decreases over long times", source=PAPER),
    ]


REPRODUCTION = Reproduction(
    name="edge_of_stability",
    title="Edge of stability: lambda_max reaches 2 / eta and stays there",
    reference="Cohen, Kaur, Li, Kolter and Talwalkar 2021 (ICLR)",
    summary="Full-batch gradient descent on a population of learning rates from one start (64-32-32-10 tanh, MSE "
            "without the factor 1/2, 500 digits, float64); lambda_max of the training objective every 10 steps by "
            "warm-started Lanczos (trainer.track_sharpness), compared with the stability threshold 2 / eta.",
    plan=plan,
    checks=checks,
)
