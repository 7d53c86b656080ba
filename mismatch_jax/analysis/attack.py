"""Figures of the adversarial attack (``experiments.attack``, ``experiments.attack_paths``), drawn
from their JSON numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def infeasible_generations(history: dict, ll_original: float, ll_tolerance: float = 0.0) -> np.ndarray:
    """[G] bool: the generation-best candidate breaks the LL constraint (LL < LL₀ − tolerance, the
    condition under which ``attack_fitness`` adds its penalty)."""
    return np.asarray(history["gen_best_ll"], np.float64) < ll_original - ll_tolerance


INFEASIBLE_LABEL = "infeasible: LL < LL₀ − tolerance"


def draw_convergence(history: dict, ll_original: float, reward_original: float,
                     reward_attacked: float, ll_attacked: float, ll_tolerance: float = 0.0):
    """The Fig. 7-like figure of ``plot_convergence`` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = np.arange(1, len(history["gen_best_reward"]) + 1)
    reward = np.asarray(history["gen_best_reward"], np.float64)
    ll = np.asarray(history["gen_best_ll"], np.float64)
    bad = infeasible_generations(history, ll_original, ll_tolerance)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(gens, reward, "o-", label="generation best: reward")
    left.plot(gens, np.minimum(history["gen_best_fitness"], np.nanmax(reward) * 2),
              "--", alpha=0.6, label="generation best: fitness")
    left.plot(gens, history["best_fitness"], "k-", label="best fitness so far")
    if bad.any():
        left.scatter(gens[bad], reward[bad], marker="x", s=70, color="tab:red", zorder=5, label=INFEASIBLE_LABEL)
    left.axhline(reward_original, color="tab:green", ls=":", label=f"original reward {reward_original:.1f}")
    left.set_xlabel("CMA-ES generation")
    left.set_ylabel("episode reward")
    left.legend(fontsize=8)
    left.set_title("convergence")
    right.plot(ll, reward, "-", color="grey", alpha=0.4)
    sc = right.scatter(ll[~bad], reward[~bad], c=gens[~bad], cmap="viridis", s=25,
                       vmin=gens[0], vmax=gens[-1], label="generation best (feasible)")
    if bad.any():
        right.scatter(ll[bad], reward[bad], c=gens[bad], cmap="viridis", vmin=gens[0], vmax=gens[-1], s=70,
                      marker="x", linewidths=2.0, label=INFEASIBLE_LABEL)
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
    right.set_title("generation-best candidate (Fig. 7)" + (f"; {int(bad.sum())} infeasible" if bad.any() else ""))
    fig.tight_layout()
    return fig


def plot_convergence(history: dict, ll_original: float, reward_original: float,
                     reward_attacked: float, ll_attacked: float, path, ll_tolerance: float = 0.0) -> Path:
    """Fig. 7-like PNG: (left) reward / fitness of each generation's best candidate and the best
    so far; (right) the generation-best path in the (LL, reward) plane, start and end marked,
    with the constraint's edge LL₀ − ll_tolerance. A generation-best candidate outside the
    constraint (``infeasible_generations``; possible under ``constraint = "penalty"``) is drawn as
    an ✕ in both panels, with its own legend entry, so it cannot pass for a feasible one.
    history: ``experiments.attack.GenerationLog`` fields as [G] arrays; rewards: the fresh-trial
    means."""
    import matplotlib.pyplot as plt

    fig = draw_convergence(history, ll_original, reward_original, reward_attacked, ll_attacked, ll_tolerance)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_planned_paths(content: dict, path) -> None:
    """Fig. 6-like PNG: the first planned action along the expert path for each model (and the
    expert's own action), the largest gap marked; ``content``: the JSON of
    ``experiments.attack_paths.compare_planned_paths``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    expert = np.asarray(content["expert_action"])
    fig, axes = plt.subplots(expert.shape[1], 1, figsize=(8, 3.2 * expert.shape[1]), squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(expert[:, d], color="k", lw=1.0, alpha=0.5, label="expert's action")
        baseline = content.get("random_baseline")
        for i, actions in enumerate((baseline or {}).get("planned", {}).values()):
            ax.plot(np.asarray(actions)[:, d], color="tab:gray", lw=0.7, alpha=0.6,
                    label=None if i else "planned: random last-layer change, same LL change "
                    f"(mean |gap| {baseline['mean_abs_gap_mean']:.2f} vs {baseline['reference']})")
        for name, colour in zip(content["planned"], ("tab:blue", "tab:red", "tab:green")):
            ax.plot(np.asarray(content["planned"][name])[:, d], color=colour, lw=1.2, label=f"planned: {name}")
        if "largest_gap_step" in content:
            ax.axvline(content["largest_gap_step"], color="grey", ls=":", lw=1, label="largest gap")
        ax.set_xlabel("step along the expert trajectory")
        ax.set_ylabel(f"action[{d}]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(f"planned control along the expert trajectory (return {content['expert_return']:.1f}); "
                         "Lambert et al. 2020 Fig. 6", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
