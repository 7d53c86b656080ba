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
