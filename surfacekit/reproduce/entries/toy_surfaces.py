"""The toy surfaces of the lectures with every optimizer's path (no training: seconds)."""

from __future__ import annotations

import math

import numpy as np

from surfacekit import toy
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction
from surfacekit.reproduce.measure import table

SURFACES = ("two_minima", "identity", "saddle", "monkey")
NEWTON_START = (-0.4, 2.2)  # from here Newton's method on two_minima converges to the saddle
LAMBDA_MAX = 5.84           # largest Hessian eigenvalue of two_minima at its minima (closed form)


def plan(ctx: Context) -> Plan:
    steps = [Analysis("toy_optimizers", ("--surface", s, "--steps", "150"), out=s) for s in SURFACES]
    steps.append(Analysis("toy_optimizers", ("--surface", "two_minima", "--start", *map(str, NEWTON_START),
                                             "--optimizers", "gd_lr0.25", "adam", "newton"), out="two_minima_newton_start"))
    return Plan(tuple(steps), () if ctx.scale == "small" else ("--scale full is the same as small: the toy paths take seconds",))


def _row(ctx: Context, folder: str, optimizer: str, surface: str = ""):
    """One optimizer's row of the table the analysis wrote into ``folder`` (for ``surface``, default the folder's name)."""
    return table(ctx, folder, f"toy_{surface or folder}_paths").set_index("optimizer").loc[optimizer]


def checks(ctx: Context) -> list[Check]:
    best = float(toy.two_minima(np.asarray(toy.SURFACES["two_minima"].minima[0])))
    lr_max = 2 / LAMBDA_MAX
    slow, fast = _row(ctx, "two_minima", "gd_lr0.25"), _row(ctx, "two_minima", "gd_lr0.35")
    newton = _row(ctx, "two_minima_newton_start", "newton", "two_minima")
    newton_distance = math.hypot(newton.final_w1, newton.final_w2)
    saddle_gd, saddle_newton = _row(ctx, "saddle", "gd_lr0.25"), _row(ctx, "saddle", "newton")
    identity = table(ctx, "identity", "toy_identity_paths")
    first_order = identity[~identity.optimizer.isin(["newton", "gd_lr0.35"])]
    reached = int((first_order.final_loss < 1e-3).sum())
    stability = "gradient descent converges for lr < 2/lambda_max and diverges or oscillates above"
    source = "LeCun, Bottou, Orr, Mueller 1998 (Efficient BackProp), Sec. 5"
    return [
        Check(f"two_minima, GD lr 0.25 < 2/lambda_max = {lr_max:.3f}: final loss above the minimum's {best:.4f}",
              float(slow.final_loss - best), bool(slow.monotone) and slow.final_loss - best < 1e-3,
              "loss monotone and within 1e-3 of the minimum", published=stability, source=source),
        Check("two_minima, GD lr 0.35 > 2/lambda_max: final loss above the minimum's", float(fast.final_loss - best),
              fast.final_loss - best > 1e-3, "does not settle: more than 1e-3 above the minimum after 150 steps",
              published=stability, source=source),
        Check(f"two_minima, Newton from {NEWTON_START}: distance of the endpoint from the saddle at 0", newton_distance,
              newton_distance < 1e-6, "< 1e-6 (converges to the saddle, not to a minimum)",
              published="Newton's method is attracted to saddle points", source="Dauphin et al. 2014, Sec. 4"),
        Check("x^2 - y^2 from (1.5, 0.01): Newton's endpoint distance from the saddle",
              math.hypot(saddle_newton.final_w1, saddle_newton.final_w2),
              math.hypot(saddle_newton.final_w1, saddle_newton.final_w2) < 1e-12, "< 1e-12 (one exact step)",
              published="Newton's method jumps to the saddle of a quadratic", source="Dauphin et al. 2014, Sec. 4"),
        Check("x^2 - y^2 from (1.5, 0.01): step at which GD (lr 0.25) leaves the window",
              "never" if np.isnan(saddle_gd.left_window_at) else int(saddle_gd.left_window_at),
              not np.isnan(saddle_gd.left_window_at), "leaves (escapes along the negative curvature)",
              published="gradient descent escapes saddles along negative curvature", source="Dauphin et al. 2014, Sec. 4"),
        Check("(1 - w1 w2)^2: first-order settings (GD lr 0.35 excluded) ending within 1e-3 of a global minimum",
              f"{reached} of {len(first_order)}", reached == len(first_order), "all of them",
              published="a linear network has no local minima that are not global",
              source="Baldi and Hornik 1989"),
    ]


REPRODUCTION = Reproduction(
    name="toy_surfaces",
    title="Toy surfaces and the optimizers' paths",
    reference="lecture examples; Dauphin et al. 2014 (NeurIPS), Sec. 4",
    summary="Every optimizer of the optimizer group (and Newton's method) on four analytic two-parameter surfaces: "
            "(w1 w2 - 1.5)^2 + 0.04 |w|^2 with two minima and a saddle, the identity network (1 - w1 w2)^2, the saddle "
            "x^2 - y^2 and the monkey saddle x^3 - 3xy^2. Checks: the 2/lambda_max step-size limit, Newton's attraction "
            "to saddles, gradient descent's escape from them.",
    plan=plan,
    checks=checks,
)
