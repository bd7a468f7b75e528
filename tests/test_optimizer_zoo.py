"""experiment=optimizer_zoo end to end on a tiny sweep: the new trainers and logistic regression from the
command line, their results files, and the comparison figure with the learning rates it chose (the
MLP panels run in tests/test_second_order.py and test_natural_gradient.py through the trainers)."""

import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from support import ROOT, compose_config
from surfacekit.config import validate
from surfacekit.store import list_jobs, load_curves, load_members

TINY = ["data.train_size=60", "trainer.epochs=1", "model.width=4", "progress=false", "threads=1"]
ZOO = ["sgd", "prong", "kfac", "hessian_free", "scg"]


def test_every_zoo_entry_has_a_grid_per_member_and_validates_in_the_experiment():
    from surfacekit.optim import OPTIMIZERS

    entries = sorted(p.stem for p in (ROOT / "conf" / "zoo").glob("*.yaml"))
    assert set(entries) == set(OPTIMIZERS) | {"prong", "kfac", "hessian_free", "scg"}
    for entry in entries:
        population = OmegaConf.load(ROOT / "conf" / "zoo" / f"{entry}.yaml")["population"]
        assert population["lr_scale"] is None or len(population["lr_scale"]) == population["size"]
    for entry in ("rprop", "prong", "kfac", "hessian_free", "scg"):  # the entries with cross-key rules
        overrides = ["experiment=optimizer_zoo", f"zoo={entry}", "model.depth=0", "data=mnist1d"]
        validate(compose_config(overrides), overrides)


def test_one_zoo_job_and_its_figure(run_cli, tmp_path):
    out = run_cli("experiment=optimizer_zoo", "zoo=hessian_free", "model.depth=1", *TINY, f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 0, out.stderr[-3000:]
    curves = load_curves(tmp_path / "run")
    assert curves["curvature_products"].shape == curves["train_loss"].shape == (3, 2)
    sys.path.insert(0, str(ROOT / "analyses"))
    import optimizer_zoo

    assert optimizer_zoo.main([str(tmp_path / "run"), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "optimizer_zoo.png").stat().st_size > 0
    assert "hessian_free" in (tmp_path / "figs" / "choices.csv").read_text()


@pytest.mark.slow
def test_zoo_sweep_and_comparison_figure(run_cli, tmp_path):
    out = run_cli("-m", "experiment=optimizer_zoo", f"zoo={','.join(ZOO)}", "data=digits", "model.depth=0", *TINY,
                  f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "sweep"
    members = load_members(sweep, analyses="none")
    assert len(list_jobs(sweep)) == len(ZOO)
    assert np.isfinite(members["final_train_loss"]).all()
    assert set(members["width"]) == {0} and set(members["depth"]) == {0}  # logistic regression: no hidden layer
    for job in list_jobs(sweep):
        curves = load_curves(sweep, job)
        assert curves["train_loss"].shape[1] == 2
    sys.path.insert(0, str(ROOT / "analyses"))
    import optimizer_zoo

    assert optimizer_zoo.main([str(sweep), "--out", str(tmp_path / "figs")]) == 0
    for suffix in ("png", "pdf"):
        assert (tmp_path / "figs" / f"optimizer_zoo.{suffix}").stat().st_size > 0
    choices = (tmp_path / "figs" / "choices.csv").read_text()
    for method in ZOO:
        assert method in choices
    assert "logistic regression" in choices
    assert optimizer_zoo.main([str(tmp_path / "nowhere")]) == 2
