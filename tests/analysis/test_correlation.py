"""Correlations equal scipy.stats; bootstrap intervals bracket the estimate."""

import numpy as np
import pytest
import scipy.stats

from mismatch_jax.analysis.correlation import correlate

pytestmark = pytest.mark.unit  # every test here is in the fast tier


def test_matches_scipy_and_ci_brackets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    out = correlate(x, y, num_bootstrap=500)
    assert out["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert out["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    for name in ("pearson", "spearman"):
        lo, hi = out[f"{name}_ci"]
        assert lo < out[name] < hi
        assert hi - lo < 0.4


def test_perfect_and_anticorrelated():
    x = np.arange(10.0)
    assert correlate(x, 2 * x + 1)["pearson"] == pytest.approx(1.0)
    assert correlate(x, -x**3)["spearman"] == pytest.approx(-1.0)


def test_non_finite_rows_dropped_and_degenerate_cases():
    x = np.array([1.0, 2.0, np.nan, 4.0, np.inf, 5.0])
    y = np.array([1.0, 2.5, 3.0, 4.5, 1.0, 4.0])
    out = correlate(x, y)
    assert out["n"] == 4 and out["n_dropped"] == 2
    assert out["pearson"] == pytest.approx(scipy.stats.pearsonr([1, 2, 4, 5], [1, 2.5, 4.5, 4]).statistic)
    assert correlate([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])["pearson"] is None
    assert correlate([1.0, 2.0], [1.0, 2.0])["spearman"] is None
    with pytest.raises(ValueError, match="equal length"):
        correlate([1.0, 2.0, 3.0], [1.0, 2.0])
