"""surfacekit.stats: scipy-backed bootstrap and permutation test, checked by the properties they promise
(coverage of known parameters, exact permutation p-values, agreement with the t-approximation)."""

import numpy as np
import pytest
from scipy import stats as sps

from surfacekit.stats import bootstrap_ci, pearson, spearman_permutation, std, std_ratio


def coverage(draw, statistic, truth, repeats, paired=False):
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(repeats):
        _, lo, hi = bootstrap_ci(statistic, *draw(rng), n_boot=1000, level=0.90, seed=i, paired=paired)
        hits += lo <= truth <= hi
    return hits / repeats


def test_bootstrap_covers_a_known_mean():
    # 90% intervals from n = 30 normal samples: binomial sd of the coverage over 200 repeats is 0.021
    assert 0.83 <= coverage(lambda r: (r.normal(0.0, 1.0, 30),), np.mean, 0.0, 200) <= 0.96


def test_bootstrap_covers_a_known_correlation_with_paired_resampling():
    cov = [[1.0, 0.6], [0.6, 1.0]]
    draw = lambda r: tuple(r.multivariate_normal([0, 0], cov, 50).T)  # noqa: E731
    assert 0.82 <= coverage(draw, pearson, 0.6, 150, paired=True) <= 0.97
    # resampling x and y independently would break the pairs: the interval would sit near r = 0
    x = np.arange(40.0)
    est, lo, hi = bootstrap_ci(pearson, x, x + np.sin(x), paired=True)
    assert est > 0.99 and lo > 0.99 and hi <= 1.0


def test_bootstrap_covers_a_known_ratio_of_spreads():
    draw = lambda r: (r.normal(0, 2.0, 40), r.normal(0, 1.0, 40))  # noqa: E731
    assert 0.80 <= coverage(draw, std_ratio, 2.0, 150) <= 0.97


def test_bootstrap_estimate_and_degenerate_samples():
    x = np.random.default_rng(0).normal(size=25)
    est, lo, hi = bootstrap_ci(std, x, method="percentile")
    assert est == pytest.approx(np.std(x, ddof=1), rel=1e-15) and lo < est < hi
    est, lo, hi = bootstrap_ci(np.mean, np.full(10, 3.0))  # constant data: BCa is undefined and says so
    assert est == 3.0 and np.isnan(lo) and np.isnan(hi)
    assert bootstrap_ci(np.mean, np.full(10, 3.0), method="percentile") == (3.0, 3.0, 3.0)


def test_permutation_p_values_exact_and_randomized():
    x = np.arange(5.0)
    rho, p = spearman_permutation(x, x**3, n_perm=2000)  # 5! = 120 pairings enumerated: identity and reversal reach |rho| = 1
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 120, rel=1e-12)
    rho, p = spearman_permutation(x, -x, n_perm=2000)
    assert rho == pytest.approx(-1.0) and p == pytest.approx(2 / 120, rel=1e-12)
    x = np.arange(30.0)
    rho, p = spearman_permutation(x, np.exp(x), n_perm=500)  # no random pairing reaches |rho| = 1
    assert p == pytest.approx(1 / 501, rel=1e-12)
    assert np.isnan(spearman_permutation(x, np.exp(x), n_perm=0)[1])


def test_permutation_p_value_agrees_with_the_t_approximation():
    rng = np.random.default_rng(3)
    for _ in range(3):
        x, y = rng.multivariate_normal([0, 0], [[1, 0.3], [0.3, 1]], 40).T
        rho, p = spearman_permutation(x, y, n_perm=20000)
        ref = sps.spearmanr(x, y)
        assert rho == pytest.approx(ref.statistic, rel=1e-12)
        assert abs(p - ref.pvalue) < 0.01 + 0.1 * ref.pvalue


def test_permutation_p_values_are_uniform_under_independence():
    rng = np.random.default_rng(4)
    p = np.array([spearman_permutation(rng.normal(size=20), rng.normal(size=20), n_perm=499, seed=i)[1] for i in range(200)])
    assert 0.04 <= np.mean(p < 0.1) <= 0.17 and 0.4 <= np.mean(p < 0.5) <= 0.6


def test_permutation_refuses_and_flags():
    with pytest.raises(ValueError, match="differ in length"):
        spearman_permutation(np.arange(4.0), np.arange(5.0))
    assert all(np.isnan(spearman_permutation(np.arange(2.0), np.arange(2.0))))
    assert all(np.isnan(spearman_permutation(np.ones(6), np.arange(6.0))))
