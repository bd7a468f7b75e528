"""Elastic averaging SGD: the communication period tau lets the workers explore further from the centre."""

from __future__ import annotations

from surfacekit.reproduce.entry import Analysis, Check, Context, Plan, Reproduction, Surfacekit
from surfacekit.reproduce.measure import sequence, table

PAPER = "Zhang, Choromanska and LeCun 2015 (NIPS), Sections 3 and 5"


def plan(ctx: Context) -> Plan:
    taus, seeds, epochs = ctx.by_scale(("1,16", "0", 10), ("1,4,16,64", "0,1,2", 40))
    coupled = Surfacekit("coupled", ("experiment=easgd", "trainer.coupling=easgd,eamsgd", f"trainer.tau={taus}",
                                     f"seed={seeds}", f"trainer.epochs={epochs}"))
    baselines = Surfacekit("baselines", ("experiment=easgd_baselines", f"seed={seeds}", f"trainer.epochs={epochs}"))
    return Plan((coupled, baselines,
                 Analysis("easgd", (str(ctx.run_dir("coupled")), str(ctx.run_dir("baselines"))))),
                ctx.by_scale(("EASGD and EAMSGD at tau 1 and 16, one seed, 10 epochs (320 steps); periodic averaging "
                              "and the paper's CIFAR-10/ImageNet networks are left out: 4 workers of 40-64-64-10 ReLU "
                              "on MNIST-1D",),
                             ("periodic averaging is in experiment=easgd but not run here; the paper's CIFAR-10/ImageNet "
                              "networks are not repeated: 4 workers of 40-64-64-10 ReLU on MNIST-1D",)))


def checks(ctx: Context) -> list[Check]:
    summary = table(ctx, "easgd", "summary")
    momentum = table(ctx, "easgd", "momentum_effect")
    rows = []
    for method in ("EASGD", "EAMSGD"):
        part = summary[summary["method"] == method].sort_values("tau")
        spread = part["spread"].to_numpy()
        rows.append(Check(f"{method}: worker-centre spread |x_i - c| at tau = {sequence(part['tau'], 2)}", sequence(spread),
                          len(spread) > 1 and bool((spread[1:] > spread[:-1]).all()), "grows with tau",
                          published="a larger communication period lets the local workers explore more",
                          source=PAPER))
        rows.append(Check(f"{method}: centre test error at tau = {sequence(part['tau'], 2)}",
                          sequence(part["final_test_error"]), None, "final, mean over seeds",
                          published="EAMSGD's centre at large tau reaches the lowest test error of the methods "
                                    "compared (CIFAR-10, ImageNet)", source=PAPER))
    sgd = summary[summary["method"] == "SGD"]["final_test_error"]
    if len(sgd):
        rows.append(Check("SGD (independent workers, beta = 0): test error", sequence(sgd), None, "final, mean over runs",
                          published="the baseline EASGD is compared with", source=PAPER))
    ratios = momentum[momentum["comparison"] == "EAMSGD vs EASGD"]["train_loss_ratio"].to_numpy()
    rows.append(Check("EAMSGD over EASGD final training loss, per tau", sequence(ratios), len(ratios) > 0 and
                      bool((ratios < 1).all()), "< 1 at every tau (momentum trains faster)",
                      published="EAMSGD, the momentum variant, outperforms EASGD", source=PAPER))
    return rows


REPRODUCTION = Reproduction(
    name="easgd",
    title="Elastic averaging SGD: exploration grows with the communication period",
    reference="Zhang, Choromanska and LeCun 2015 (NIPS), Deep learning with Elastic Averaging SGD",
    summary="A population of 4 workers coupled to a centre variable by an elastic force (alpha = beta / p, beta 0.9), "
            "exchanging every tau steps; EAMSGD adds Nesterov momentum to the workers. SGD and momentum SGD "
            "(beta = 0: independent workers) as baselines. The centre's test error and the workers' distance to it.",
    plan=plan,
    checks=checks,
)
