"""The figure of ``mismatch-jax pets`` (``experiments.pets_command``): reward per trial and seed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_pets_rewards(trial_rewards: np.ndarray, random_reward: np.ndarray, path: str, title: str) -> None:
    """Writes a PNG of the episode reward per trial, one line per seed: trial_rewards [S, T] of
    the planned trials, random_reward [S] of the random trial 0."""
    fig, ax = plt.subplots(figsize=(6, 4))
    trials = np.arange(trial_rewards.shape[1] + 1)
    for seed, rewards in enumerate(trial_rewards):
        ax.plot(trials, np.concatenate([[random_reward[seed]], rewards]), marker="o", label=f"seed {seed}")
    ax.set_xlabel("trial (0 = random actions)")
    ax.set_ylabel("episode reward")
    ax.set_title(title)
    if len(trial_rewards) <= 10:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
