"""Li et al. 2018: filter-normalized random-direction slices of the loss around a solution."""

from __future__ import annotations

import numpy as np
import torch

from surfacekit import store
from surfacekit.landscape import random_direction, slice_1d, slice_grid
from surfacekit.population import flatten, unflatten
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit

PAPER = "Li, Xu, Taylor, Studer, Goldstein 2018"
RESCALE = 4.0   # (W1, b1) -> c (W1, b1), W2 -> W2 / c: the same ReLU network
SEED = 0


def plan(ctx: Context) -> Plan:
    num = ctx.by_scale(21, 51)
    nets = ctx.run_dir("networks")
    return Plan((Surfacekit("networks", ("population.size=2", "model.width=32")),
                 Surfacekit("landscape", ("task=landscape", f"source={nets}", "landscape.kind=[slice1d,slice2d]",
                                          "landscape.members=[0]", f"landscape.slice.num={num}",
                                          f"landscape.slice.seed={SEED}"), sweep=False),
                 Analysis("landscape_2d", (str(nets / "0" / "results.h5"), "--member", "0"))),
                () if ctx.scale == "full" else (f"{num} x {num} grid instead of the paper's 51 x 51",))


def rescaled(spec, theta: torch.Tensor, c: float) -> torch.Tensor:
    """theta [P] of a one-hidden-layer ReLU net with its hidden layer scaled by c and the output weights by 1/c."""
    params = unflatten(theta, spec)
    params["layers.0.weight"] = params["layers.0.weight"] * c
    params["layers.0.bias"] = params["layers.0.bias"] * c
    params["layers.1.weight"] = params["layers.1.weight"] / c
    return flatten(params)[0]


def slice_difference(job, normalization: str) -> float:
    """Largest relative difference between the 1D slices (11 points on [-1, 1], train loss) of member 0 and of its
    rescaled twin, with directions drawn from one seed and normalized by ``normalization``."""
    theta = flatten(job.params)[0]
    twin = rescaled(job.spec, theta, RESCALE)
    loss = str(job.cfg.model.loss)
    xs = slice_grid(11)
    curves = [slice_1d(job.spec, t, random_direction(job.spec, t, seed=SEED, normalization=normalization), job.data,
                       loss, xs, splits=("train",))["train_loss"] for t in (theta, twin)]
    return float((curves[0] - curves[1]).abs().max() / curves[0].abs().max())


def checks(ctx: Context) -> list[Check]:
    source = ctx.run_dir("networks") / "0" / "results.h5"
    job = store.load_job(source)
    filtered, raw = slice_difference(job, "filter"), slice_difference(job, "none")
    grid = store.load_group(source, "landscape/slice2d")
    z = grid["train_loss"][list(grid["member"]).index(0)]
    i, j = int(np.argmin(np.abs(grid["x"]))), int(np.argmin(np.abs(grid["y"])))
    centre = float(z[i, j])
    rim = float(np.min(np.concatenate([z[0], z[-1], z[:, 0], z[:, -1]])))
    invariance = "filter normalization removes the scale invariance of ReLU networks, so slices of equivalent networks agree"
    return [
        Check(f"filter-normalized slices of a network and its rescaled twin (c = {RESCALE:g}): largest relative difference",
              filtered, filtered < 1e-10, "< 1e-10", published=invariance, source=f"{PAPER}, Sec. 4"),
        Check("the same with unnormalized directions", raw, raw > 1e-3, "> 1e-3 (they differ)",
              published="random directions without normalization give misleading, scale-dependent slices",
              source=f"{PAPER}, Sec. 4"),
        Check("2D slice: least train loss on the rim of [-1, 1]^2 over the loss at the solution", rim / centre,
              rim > centre, "> 1 (the solution sits in a basin)", published="minimizers sit in basins of the "
              "filter-normalized slices", source=f"{PAPER}, Sec. 4"),
        Check("train loss at the solution (centre of the slice)", centre, None, "member 0"),
    ]


REPRODUCTION = Reproduction(
    name="slices",
    title="Filter-normalized slices of the loss surface",
    reference="Li, Xu, Taylor, Studer, Goldstein 2018 (NeurIPS), Visualizing the loss landscape of neural nets",
    summary="1D and 2D slices L(theta* + x d1 + y d2) around a trained network with random Gaussian directions whose "
            "every filter (row of a weight matrix) is rescaled to the norm of the solution's (biases zero): contours "
            "and the 3D surface, and the invariance that motivates the normalization, checked on the network and a "
            "rescaled copy that computes the same function.",
    plan=plan,
    checks=checks,
)
