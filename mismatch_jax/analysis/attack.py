"""Figures of the adversarial attack (``experiments.attack``), drawn from its JSON numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_convergence(history: dict, ll_original: float, reward_original: float,
                     reward_attacked: float, ll_attacked: float, path, ll_tolerance: float = 0.0) -> Path:
    """Fig. 7-like PNG: (left) reward / fitness of each generation's best candidate and the best
    so far; (right) the generation-best path in the (LL, reward) plane, start and end marked,
    with the constraint's edge LL₀ − ll_tolerance. history: ``experiments.attack.GenerationLog``
    fields as [G] arrays; rewards: the fresh-trial means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = np.arange(1, len(history["gen_best_reward"]) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(gens, history["gen_best_reward"], "o-", label="generation best: reward")
    left.plot(gens, np.minimum(history["gen_best_fitness"], np.nanmax(history["gen_best_reward"]) * 2),
              "--", alpha=0.6, label="generation best: fitness")
    left.plot(gens, history["best_fitness"], "k-", label="best fitness so far")
    left.axhline(reward_original, color="tab:green", ls=":", label=f"original reward {reward_original:.1f}")
    left.set_xlabel("CMA-ES generation")
    left.set_ylabel("episode reward")
    left.legend(fontsize=8)
    left.set_title("convergence")
    sc = right.scatter(history["gen_best_ll"], history["gen_best_reward"], c=gens, cmap="viridis", s=25)
    right.plot(history["gen_best_ll"], history["gen_best_reward"], "-", color="grey", alpha=0.4)
    right.scatter([ll_original], [reward_original], marker="*", s=200, color="tab:green", label="start (original)")
    right.scatter([ll_attacked], [reward_attacked], marker="X", s=120, color="tab:red",
                  label="end (attacked, fresh trials)")
    right.axvline(ll_original, color="tab:green", ls=":", lw=1)
    right.axvline(ll_original - ll_tolerance, color="tab:red", ls="--", lw=1,
                  label=f"LL₀ − tolerance ({ll_tolerance:g} nats)")
    right.ticklabel_format(axis="x", useOffset=False)
    right.set_xlabel("validation one-step LL (nats)")
    right.set_ylabel("episode reward")
    right.legend(fontsize=8)
    fig.colorbar(sc, ax=right, label="generation")
    right.set_title("generation-best candidate (Fig. 7)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
