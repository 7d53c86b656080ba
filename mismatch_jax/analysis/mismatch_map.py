"""Correlations and the figure of the mismatch map (``experiments.mismatch_map``), computed from
its table alone (one row per model snapshot: loss, epoch, held-out metrics, rewards)."""

from __future__ import annotations

import numpy as np

from mismatch_jax.analysis.correlation import correlate

METRICS = ("ll", "mse", "vagram", "mnm", "vaml")
"""Held-out metrics of every snapshot; ll is higher-better, the others are losses."""


def correlation_summary(table, num_bootstrap: int = 2000, seed: int = 0) -> dict:
    """{"correlations": {loss: {"own_objective": ..., "ll": ..., "neg_<metric>": ...}},
    "pooled": {...}} — every entry a ``correlate`` dict against reward_mean (diverged rows
    and non-finite values dropped). Losses (mse, vagram, mnm, vaml) are negated so that a
    positive correlation always means "better score, more reward"."""
    def block(t):
        t = t[~t["diverged"]]
        reward = t["reward_mean"].to_numpy()
        out = {"own_objective": correlate(t["own_objective"].to_numpy(), reward, num_bootstrap, seed)}
        for m in METRICS:
            x = t[m].to_numpy()
            out["ll" if m == "ll" else f"neg_{m}"] = correlate(x if m == "ll" else -x, reward, num_bootstrap, seed)
        out["reward_mean"] = float(np.mean(reward)) if len(reward) else None
        out["reward_max"] = float(np.max(reward)) if len(reward) else None
        return out

    per_loss = {loss: block(table[table["loss"] == loss]) for loss in table["loss"].unique()}
    return {"correlations": per_loss, "pooled": block(table)}


def _robust_limits(x: np.ndarray):
    """x-limits that keep the bulk of the models readable: [p10 − 1.5·(p90 − p10), max]."""
    x = x[np.isfinite(x)]
    if x.size < 4:
        return None
    lo, hi = np.percentile(x, [10, 90])
    low = max(x.min(), lo - 1.5 * max(hi - lo, 1e-12))
    pad = 0.05 * max(x.max() - low, 1e-12)
    return low - pad, x.max() + pad


def plot_mismatch_map(table, results: dict, path) -> None:
    """2 × L panels: top, each loss's own held-out objective vs reward; bottom, LL vs reward.
    Colour = training epoch of the snapshot; models left of a panel's range (a few very bad ones
    would squash the rest) are drawn as ◀ at its left edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = list(table["loss"].unique())
    fig, axes = plt.subplots(2, len(losses), figsize=(4.8 * len(losses), 8.0), squeeze=False,
                             constrained_layout=True)
    labels = {"nll": "held-out LL (own objective)", "vagram": "− held-out VaGraM loss",
              "mnm": "− held-out MnM loss"}
    vmin, vmax = table["epoch"].min(), table["epoch"].max()
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"
    for c, loss in enumerate(losses):
        t = table[(table["loss"] == loss) & ~table["diverged"]]
        corr = results["correlations"][loss]
        for r, (column, xlabel) in enumerate([("own_objective", labels[loss]), ("ll", "held-out one-step LL")]):
            ax = axes[r, c]
            x, y = t[column].to_numpy(), t["reward_mean"].to_numpy()
            limits = _robust_limits(x)
            inside = np.ones_like(x, bool) if limits is None else x >= limits[0]
            sc = ax.scatter(x[inside], y[inside], c=t["epoch"].to_numpy()[inside], cmap="viridis",
                            vmin=vmin, vmax=vmax, s=16)
            if limits is not None:
                ax.scatter(np.full((~inside).sum(), limits[0]), y[~inside], marker="<", c="red", s=22)
                ax.set_xlim(*limits)
            stats = corr["own_objective" if r == 0 else "ll"]
            ax.set_title(f"{loss}: Pearson {fmt(stats['pearson'])}, Spearman {fmt(stats['spearman'])}"
                         f" (n={stats['n']})", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("MPC episode reward")
    fig.colorbar(sc, ax=axes, label="training epoch", shrink=0.6)
    fig.suptitle("Mismatch map: own objective vs reward (top), one-step LL vs reward (bottom)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
