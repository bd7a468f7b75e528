"""The analysis helpers of analyses/index_vs_loss.py (the task itself: tests/test_task_critical.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- analysis helpers

def test_bray_dean_curve_and_fit():
    sys.path.insert(0, str(ROOT / "analyses"))
    from index_vs_loss import bray_dean, fit_bray_dean

    t = np.array([0.0, 1.0, 2.0, 3.0])
    assert np.allclose(bray_dean(t, 0.0, 1.0), [0.0, 0.5, 1.0, 1.0])
    small = 1e-3  # near threshold alpha ~ (4 sqrt(2) / (3 pi)) t^{3/2} ~ 0.6 t^{3/2}
    assert abs(bray_dean(np.array([small]), 0.0, 1.0)[0] / small**1.5 - 4 * np.sqrt(2) / (3 * np.pi)) < 1e-3
    eps = np.linspace(0.2, 1.0, 40)
    eps_c, w = fit_bray_dean(eps, bray_dean(eps, 0.1, 2.5))
    assert abs(eps_c - 0.1) < 1e-4 and abs(w - 2.5) < 1e-3


def test_spearman_permutation():
    from surfacekit.stats import spearman_permutation

    x = np.arange(30.0)
    rho, p = spearman_permutation(x, x**3, n_perm=500)
    assert rho == pytest.approx(1.0) and p == pytest.approx(1 / 501)
    rho, p = spearman_permutation(x, np.random.default_rng(0).permutation(x), n_perm=500)
    assert abs(rho) < 0.5 and p > 0.05


def test_distinct_levels_groups_critical_points_reached_from_several_starts():
    sys.path.insert(0, str(ROOT / "analyses"))
    from index_vs_loss import distinct_levels

    loss = np.array([2.166, 0.4839, 2.166 * (1 + 1e-12), 1.347, 0.4839 + 1e-11, 1.347 + 1e-3])
    labels = distinct_levels(loss)
    assert labels.tolist() == [3, 0, 3, 1, 0, 2]  # equal within 1e-8 of max|loss| share a label, in loss order
    assert distinct_levels(np.zeros(3)).tolist() == [0, 0, 0] and len(distinct_levels(np.zeros(0))) == 0
