"""LL-vs-reward correlation: Pearson and Spearman ρ with percentile-bootstrap 95% intervals.

The point estimates are scipy.stats' own (``pearsonr``, ``spearmanr``) so they equal what a user
computes from the Parquet columns; the bootstrap resamples models with replacement, vectorised
over resamples.
"""

from __future__ import annotations

import numpy as np
import scipy.stats


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of [R, n] arrays (nan where a row is constant)."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    denom = np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(1) / denom


def correlate(x, y, num_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Pearson and Spearman correlation of x [n] and y [n] with bootstrap CIs.

    Non-finite pairs are dropped first (and counted). Returns a JSON-ready dict with n,
    n_dropped, pearson, pearson_p, pearson_ci [lo, hi], spearman, spearman_p, spearman_ci.
    Fewer than 3 usable pairs, or a constant column, gives None estimates.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"correlate: x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(x.size), "n_dropped": int((~keep).sum())}
    empty = {"pearson": None, "pearson_p": None, "pearson_ci": [None, None],
             "spearman": None, "spearman_p": None, "spearman_ci": [None, None]}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, **empty}
    pearson = scipy.stats.pearsonr(x, y)
    spearman = scipy.stats.spearmanr(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(num_bootstrap, x.size))
    xb, yb = x[idx], y[idx]
    boot_pearson = _pearson_rows(xb, yb)
    boot_spearman = _pearson_rows(
        scipy.stats.rankdata(xb, axis=1), scipy.stats.rankdata(yb, axis=1)
    )
    tail = 100 * (1 - confidence) / 2

    def interval(samples):
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            return [None, None]
        lo, hi = np.percentile(samples, [tail, 100 - tail])
        return [float(lo), float(hi)]

    return {
        **out,
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "pearson_ci": interval(boot_pearson),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
        "spearman_ci": interval(boot_spearman),
    }
