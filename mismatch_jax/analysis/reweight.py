"""Figures of the distance re-weighting study (``experiments.reweight``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_heatmaps(reward: np.ndarray, sizes, epsilons, path, title: str = "") -> Path:
    """Two heat maps (re-weighted left, uniform right, as the paper's Fig. 8) of
    reward [2, |S|, |ε|] with a shared colour scale; infeasible (NaN) cells are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = reward[np.isfinite(reward)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax, grid, label in zip(axes, reward, ("with re-weighting ω = c·exp(−d*)", "without re-weighting")):
        image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap,
                          vmin=vmin, vmax=vmax)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(epsilons)), [f"{e:.2g}" for e in epsilons], rotation=45)
        ax.set_yticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_xlabel("distance bound ε")
        ax.set_title(label)
    axes[0].set_ylabel("dataset size S")
    fig.colorbar(image, ax=list(axes), label="mean episode reward")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def model_mean_interval(per_model_rewards: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean reward of a cell and its t-interval over models: per_model_rewards [R, K] (R models ×
    K trials) → (mean, low, high) of the R per-model means (a single model: low = high = mean)."""
    import scipy.stats

    means = np.asarray(per_model_rewards, np.float64).reshape(len(per_model_rewards), -1).mean(-1)
    centre = float(means.mean())
    if means.size < 2 or np.ptp(means) == 0:
        return centre, centre, centre
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, means.size - 1) * means.std(ddof=1) / np.sqrt(means.size))
    return centre, centre - half, centre + half


def plot_size_curves(mean: np.ndarray, low: np.ndarray, high: np.ndarray, sizes, epsilons, path,
                     title: str = "") -> Path:
    """Fig. 8 as curves: mean reward ± 95% CI over models against the dataset size S, one panel
    per ε, re-weighted vs uniform; arrays [2, |S|, |ε|] (NaN = infeasible cell)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(epsilons), figsize=(4.6 * len(epsilons), 3.8), squeeze=False, sharey=True)
    for j, (ax, eps) in enumerate(zip(axes[0], epsilons)):
        for w, (label, colour) in enumerate((("re-weighted ω = c·exp(−d*)", "tab:red"), ("uniform", "tab:blue"))):
            m = mean[w, :, j]
            ok = np.isfinite(m)
            x = np.asarray(sizes, float)[ok] * (1.04 if w else 0.96)  # offset so bars do not overlap
            ax.errorbar(x, m[ok], yerr=[m[ok] - low[w, :, j][ok], high[w, :, j][ok] - m[ok]], marker="o",
                        capsize=3, color=colour, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("training-set size S")
        ax.set_title(f"d* ≤ ε = {eps:g}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean episode reward (95% CI over models)")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
