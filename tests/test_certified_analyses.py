"""The analyses of certified points on a tiny real sweep (experiment=dauphin_index at 40 examples):
index_vs_loss's three sources (certified minima, embedded saddles checked against the closed form,
finder runs) and saddle_escape (escape times, the linear-dynamics prediction, Newton's return)."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest

from support import _in_process
from surfacekit import store


def script(name):
    return importlib.import_module(f"analyses.{name}")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("dauphin")
    out = _in_process(["-m", "experiment=dauphin_index", "model.width=1,3", "population.size=2", "data.train_size=40", "trainer.batch_size=20",
                       "trainer.epochs=1", "progress=false", f"hydra.sweep.dir={root}/s"], root)
    assert out.returncode == 0, out.stderr
    out = _in_process(["task=certify", f"source={root}/s", "progress=false"], root)
    assert out.returncode == 0, out.stderr
    return root / "s"


def test_index_vs_loss_three_sources(sweep, capsys):
    assert script("index_vs_loss").main([str(sweep), "--embed-members", "2", "--permutations", "200", "--bray-dean"]) == 0
    out = sweep / "analysis" / "index_vs_loss"
    for name in ("index_vs_loss.png", "eigenvalue_histograms.pdf", "critical_points.csv", "index_vs_loss.md"):
        assert (out / name).stat().st_size > 0
    points = pd.read_csv(out / "critical_points.csv")
    members = store.load_members(sweep)
    minima = points[points.source == "certified minima"]
    assert len(minima) == 4 and minima.accepted.sum() == members.certified.sum() == 4
    embedded = points[points.source == "embedded saddles"]
    assert len(embedded) == 2 and (embedded.units_added == 2).all() and embedded.accepted.all()
    # a zero-unit embedding keeps the objective value of the narrow minimum exactly
    narrow = members[members.width == 1].set_index("member").cert_objective
    for _, row in embedded.iterrows():
        assert row.loss == pytest.approx(narrow[row.member], rel=1e-12)
        assert row.index_count % 2 == 0  # the two added units contribute equal counts
    table = pd.read_csv(out / "index_vs_loss.csv").set_index("source")
    assert table.loc["embedded saddles", "acceptance_rate"] == 1.0
    assert table.loc["all accepted", "accepted"] == 6


@pytest.mark.slow
def test_saddle_escape(sweep):
    members = store.load_members(sweep)
    points = script("index_vs_loss").certified_points(sweep, members)
    saddles = script("index_vs_loss").embedded_saddles(sweep, points, 2)
    if not (saddles.index_count > 0).any():
        pytest.skip("the tiny sweep's embeddings happen to be minima")
    assert script("saddle_escape").main([str(sweep), "--saddles", "1", "--seeds", "2", "--lr-factors", "1.0",
                                         "--max-steps", "400", "--drop", "1e-4", "--newton-starts", "1",
                                         "--newton-iter", "20"]) == 0
    out = sweep / "analysis" / "saddle_escape"
    table = pd.read_csv(out / "saddle_escape.csv")
    assert set(table.method) == {"GD", "SGD", "noisy GD"} and (table.lambda_min < 0).all()
    gd = table[table.method == "GD"].iloc[0]
    assert gd.escaped == 2 and math.isfinite(gd.predicted_step)
    # the quadratic model predicts GD's escape to within a factor 2 from this close (1e-4 away)
    assert 0.5 < gd.median_escape_step / gd.predicted_step < 2.0
    newton = pd.read_csv(out / "newton.csv")
    assert newton.returned.all() and (newton.distance_to_saddle < 1e-3).all()
    for name in ("escape_time_vs_lambda.png", "escape_curves.pdf"):
        assert (out / name).stat().st_size > 0


def test_saddle_escape_on_one_job_is_one_line(sweep, capsys):
    """One job (one width) has no wider network to embed its minima into: no saddles, one line."""
    assert script("saddle_escape").main([str(sweep / "0")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saddle_escape: error: no embedded saddle"), err


def test_bray_dean_fit_needs_more_than_one_index():
    """All minima (index 0) or one embedded index: (eps_c, w) are not determined, so no fitted numbers."""
    ivl = script("index_vs_loss")
    loss = np.array([0.1, 0.2, 0.3, 0.4])
    for alpha in (np.zeros(4), np.full(4, 0.05)):
        assert all(math.isnan(v) for v in ivl.fit_bray_dean(loss, alpha))
    eps_c, w = ivl.fit_bray_dean(np.linspace(0.0, 1.0, 9), ivl.bray_dean(np.linspace(0.0, 1.0, 9), 0.1, 1.5))
    assert eps_c == pytest.approx(0.1, abs=1e-6) and w == pytest.approx(1.5, rel=1e-6)


def test_predicted_steps_closed_forms():
    se = script("saddle_escape")
    # pure displacement growth: x0 e^{|l| eta t} reaches sqrt(2 drop / |l|)
    assert se.predicted_steps(-2.0, 1e-4, 0.0, 0.1, 1e-3) == pytest.approx(math.log(math.sqrt(1e-3) / 1e-4) / 0.2)
    # a gradient alone: g (e^{a t} - 1) / |l|
    lam, g, eta, drop = -0.5, 1e-6, 0.2, 1e-2
    t = se.predicted_steps(lam, 0.0, g, eta, drop)
    assert g * (math.exp(0.5 * eta * t) - 1) / 0.5 == pytest.approx(math.sqrt(2 * drop / 0.5), rel=1e-10)
    assert se.predicted_steps(0.1, 1e-4, 0.0, 0.1, 1e-3) == math.inf
    assert np.isfinite(se.predicted_steps(-1.0, 1e-3, 1e-3, 0.5, 1e-2))
