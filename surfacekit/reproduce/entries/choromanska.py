"""Choromanska et al. 2015: losses at the minima of one-hidden-layer networks, per width."""

from __future__ import annotations

import math

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import falls, sequence, table

PAPER = "Choromanska et al. 2015"
# Table 1: Pearson r(train loss, test loss) over 1000 networks per width, MNIST 10x10.
PUBLISHED_R = {25: 0.7616, 50: 0.6861, 100: 0.5983, 250: 0.5302, 500: 0.4081}


def plan(ctx: Context) -> Plan:
    if ctx.scale == "small":
        sweep = ("experiment=choromanska", "population.size=50")
        notes = ("50 networks per width instead of the preset's 100 (the paper: 1000); digits instead of MNIST 10x10",)
    elif ctx.mnist is not None:
        sweep = ("experiment=choromanska_mnist", f"data.path={ctx.mnist}")
        notes = ()
    else:
        sweep = ("experiment=choromanska",)
        notes = ("MNIST 10x10 with 1000 networks per width (the paper's setting) skipped: no --mnist DIR was given; "
                 "ran the digits stand-in at its preset size (100 networks per width)",)
    widths = ctx.run_dir("widths")
    return Plan((Surfacekit("widths", sweep), Analysis("minima_histograms", (str(widths),))), notes)


def checks(ctx: Context) -> list[Check]:
    by_width = table(ctx, "minima_histograms", "minima_by_width").sort_values("width")
    ratios = table(ctx, "minima_histograms", "std_ratios").set_index("ratio")
    widths = [int(w) for w in by_width.width]
    shape = ("for small networks poor minima have non-zero probability; for large ones the minima found are of "
             "similar quality")
    rows = [
        Check(f"mean test loss at the endpoints falls with width ({', '.join(map(str, widths))})",
              sequence(by_width.test_mean), falls(by_width.test_mean), "strictly decreasing", published=shape,
              source=f"{PAPER}, abstract and experiments"),
        Check("worst (largest) test loss falls with width", sequence(by_width.test_max), falls(by_width.test_max),
              "strictly decreasing", published=shape, source=f"{PAPER}, abstract and experiments"),
    ]
    for name in ratios.index:
        r = ratios.loc[name]
        rows.append(Check(f"spread narrows: {name} of the test loss", float(r.estimate), bool(r.ci90_low > 1),
                          "90% CI above 1", ci=(float(r.ci90_low), float(r.ci90_high)), ci_level="90%, bootstrap BCa",
                          published="the variance of the test loss at the minima shrinks with n1",
                          source=f"{PAPER}, experiments"))
    narrow, wide = by_width.iloc[0], by_width.iloc[-1]
    rows.append(Check(f"r(train, test) falls from width {int(narrow.width)} to width {int(wide.width)}",
                      f"{narrow.pearson_r:.3g} -> {wide.pearson_r:.3g}", bool(narrow.r_ci_low > wide.r_ci_high),
                      "90% CIs separate (narrow above wide)",
                      published=f"r falls with n1: {sequence(PUBLISHED_R.values(), 4)} for n1 = 25..500",
                      source=f"{PAPER}, Table 1"))
    for _, row in by_width.iterrows():
        if int(row.width) in PUBLISHED_R and not math.isnan(row.pearson_r):
            rows.append(Check(f"Pearson r(train loss, test loss), width {int(row.width)}", float(row.pearson_r), None,
                              "shown beside the paper's (MNIST 10x10, 1000 networks)",
                              ci=(float(row.r_ci_low), float(row.r_ci_high)), ci_level="90%, bootstrap BCa",
                              published=f"{PUBLISHED_R[int(row.width)]:.4f}", source=f"{PAPER}, Table 1"))
    return rows


REPRODUCTION = Reproduction(
    name="choromanska",
    title="Loss at the minima against network width",
    reference="Choromanska, Henaff, Mathieu, Ben Arous, LeCun 2015 (AISTATS)",
    summary="Populations of one-hidden-layer ReLU networks of widths 5 to 250 trained by SGD to their endpoints "
            "(experiment=choromanska: digits, 60 epochs; the paper used MNIST downsampled to 10x10, 1000 networks per "
            "width, about 200 epochs, experiment=choromanska_mnist). Histograms of the endpoint losses per width, "
            "their spread with bootstrap CIs, and the correlation of train and test loss beside the paper's Table 1. "
            "Digits is far smaller than MNIST, so the correlations are compared, not tested.",
    plan=plan,
    checks=checks,
)
