"""LL-vs-reward correlation: Pearson and Spearman ρ with percentile-bootstrap 95% intervals.

The point estimates are scipy.stats' own (``pearsonr``, ``spearmanr``) so they equal what a user
computes from the Parquet columns; the bootstrap resamples models with replacement, vectorised
over resamples. Models that share their training data (the copies of one PETS (seed, trial))
are not independent draws: ``cluster_correlate`` resamples whole clusters instead, and
``correlation_difference`` gives a bootstrap CI for ρ(x_a, y) − ρ(x_b, y) of the same models
(paired: one resample serves both).
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


def _resample_indices(rng: np.random.Generator, n: int, num_bootstrap: int, clusters) -> list[np.ndarray]:
    """Bootstrap index sets: n models drawn with replacement, or (``clusters`` [n] labels) as
    many whole clusters drawn with replacement, each contributing all its members."""
    if clusters is None:
        return list(rng.integers(0, n, size=(num_bootstrap, n)))
    labels, inverse = np.unique(np.asarray(clusters), return_inverse=True, axis=0)
    members = [np.flatnonzero(inverse.reshape(-1) == c) for c in range(len(labels))]
    draws = rng.integers(0, len(members), size=(num_bootstrap, len(members)))
    return [np.concatenate([members[c] for c in row]) for row in draws]


def rank_or_pearson(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan
    if kind == "spearman":
        x, y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    return float(np.corrcoef(x, y)[0, 1])


def bootstrap_interval(samples, confidence: float) -> list:
    samples = np.asarray(samples, float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [None, None]
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def cluster_correlate(x, y, clusters, num_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Pearson and Spearman ρ of x [n] and y [n] with CIs from a bootstrap over whole clusters
    (``clusters`` [n] or [n, k] labels, e.g. (PETS seed, trial)): ``pearson_cluster_ci``,
    ``spearman_cluster_ci`` and ``num_clusters``, beside ``correlate``'s per-model ones."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    labels = np.asarray(clusters)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, labels = x[keep], y[keep], labels[keep]
    out = {"num_clusters": int(len(np.unique(labels, axis=0))) if x.size else 0}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, "pearson_cluster_ci": [None, None], "spearman_cluster_ci": [None, None]}
    rng = np.random.default_rng(seed)
    draws = _resample_indices(rng, x.size, num_bootstrap, labels)
    for kind in ("pearson", "spearman"):
        out[f"{kind}_cluster_ci"] = bootstrap_interval([rank_or_pearson(x[i], y[i], kind) for i in draws], confidence)
    return out


def correlation_difference(x_a, x_b, y, clusters=None, num_bootstrap: int = 1000, seed: int = 0,
                           confidence: float = 0.95) -> dict:
    """ρ(x_a, y) − ρ(x_b, y) for the same models (e.g. LL on expert vs on grid against reward),
    Pearson and Spearman, each with a paired bootstrap CI (one resample of models — or of whole
    ``clusters`` — serves both correlations). Models with a non-finite value are dropped.
    Returns {n, pearson, pearson_ci, spearman, spearman_ci} (None where undefined)."""
    x_a, x_b, y = (np.asarray(v, float) for v in (x_a, x_b, y))
    keep = np.isfinite(x_a) & np.isfinite(x_b) & np.isfinite(y)
    x_a, x_b, y = x_a[keep], x_b[keep], y[keep]
    labels = None if clusters is None else np.asarray(clusters)[keep]
    out = {"n": int(x_a.size), "clustered": clusters is not None}
    rng = np.random.default_rng(seed)
    draws = _resample_indices(rng, x_a.size, num_bootstrap, labels) if x_a.size >= 3 else []
    for kind in ("pearson", "spearman"):
        point = rank_or_pearson(x_a, y, kind) - rank_or_pearson(x_b, y, kind) if x_a.size >= 3 else np.nan
        out[kind] = None if not np.isfinite(point) else float(point)
        out[f"{kind}_ci"] = (bootstrap_interval([rank_or_pearson(x_a[i], y[i], kind) - rank_or_pearson(x_b[i], y[i], kind) for i in draws],
                                       confidence) if out[kind] is not None else [None, None])
    return out
