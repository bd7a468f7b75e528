"""The quadratic-penalty (auxiliary coordinates) method: a monotone objective within each mu stage."""

from __future__ import annotations

import numpy as np

from surfacekit import store
from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import falls, sequence

PAPER = "Carreira-Perpinan and Wang 2014 (quadratic-penalty MAC)"
MODEL = ("model.depth=3", "model.width=64", "model.activation=tanh", "population.size=2", "dtype=float64")


def plan(ctx: Context) -> Plan:
    stages, alternations = ctx.by_scale((6, 3), (10, 5))
    penalty, backprop = ctx.run_dir("penalty"), ctx.run_dir("backprop")
    return Plan((Surfacekit("penalty", ("trainer=penalty", *MODEL, f"trainer.stages={stages}",
                                        f"trainer.alternations={alternations}")),
                 Surfacekit("backprop", ("trainer=backprop", *MODEL, "optimizer=adam", "optimizer.lr=0.001",
                                         "trainer.epochs=60")),
                 Analysis("training_methods", (str(penalty), str(backprop)))),
                ("the paper's experiments (deep nets and binary autoencoders) are not repeated; digits, 3 x 64 tanh",))


def within_stage_rise(objective: np.ndarray, stage: np.ndarray, phase: np.ndarray) -> float:
    """Largest relative increase of the objective [K, T] between consecutive evaluations of one stage
    (the final refit, phase 2, excluded); 0 when it never rises."""
    rise = 0.0
    for s in np.unique(stage[phase != 2]):
        values = objective[:, (stage == s) & (phase != 2)]
        step = np.diff(values, axis=1) / np.abs(values[:, :-1])
        rise = max(rise, float(np.max(step, initial=0.0)))
    return rise


def checks(ctx: Context) -> list[Check]:
    curves = store.load_curves(ctx.run_dir("penalty"), "0")
    stage, phase = curves["stage"], curves["phase"]
    rise = within_stage_rise(curves["objective"], stage, phase)
    ends = [float(np.median(curves["violation"][:, (stage == s) & (phase != 2)][:, -1])) for s in np.unique(stage[phase != 2])]
    pen = store.load_members(ctx.run_dir("penalty"), analyses="none")
    bp = store.load_members(ctx.run_dir("backprop"), analyses="none")
    return [
        Check("largest relative rise of the objective E between evaluations within a stage", rise, rise <= 1e-9,
              "<= 1e-9 (float64)", published="for fixed mu, the alternating W- and Z-steps never increase E",
              source=PAPER),
        Check("constraint violation at the end of each stage (median over members)", sequence(ends),
              falls(ends), "strictly decreasing", published="as mu grows the codes approach the forward pass",
              source=PAPER),
        Check("violation at the end of the last stage over that of the first", ends[-1] / ends[0], ends[-1] / ends[0] < 1e-2,
              "< 1e-2", published="constraints satisfied in the limit of large mu", source=PAPER),
        Check("penalty training error after the final refit (%)", 100 * float(pen.train_error.mean()),
              float(pen.train_error.mean()) < 0.02, "< 2%", published="0.37% (digits, 3 x 64 tanh)",
              source="REFERENCES.md (calibration)"),
        Check("test error (%): penalty", 100 * float(pen.test_error.mean()), None, "mean over the population",
              published="4.8 (digits calibration; generalizes worse than backprop)", source="docs/training_methods.md"),
        Check("test error (%): backprop (Adam), same networks", 100 * float(bp.test_error.mean()), None,
              "mean over the population", published="2.5 (digits calibration)", source="docs/training_methods.md"),
    ]


REPRODUCTION = Reproduction(
    name="penalty",
    title="Penalty method: monotone objective within each stage",
    reference="Carreira-Perpinan and Wang 2014 (AISTATS), method of auxiliary coordinates",
    summary="The quadratic-penalty relaxation with per-example codes z_l, alternating W-steps (Gauss-Newton per unit) "
            "and Z-steps, mu doubled between stages, on 3 x 64 tanh networks on digits, float64; backprop on the same "
            "networks for comparison. The objective E at the current mu and the constraint violation per alternation.",
    plan=plan,
    checks=checks,
)
