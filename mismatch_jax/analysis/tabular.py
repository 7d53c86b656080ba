"""Figures of the tabular experiments of *Mismatched No More* (``experiments.tabular_figures``),
drawn from their numbers: each ``draw_figXX`` returns a matplotlib Figure, ``save_figure`` writes
one. A gridworld arrives as ``grid``: coords [S, 2] (row, column), shape (height, width), goal [S]
bool (goal cells; the first is marked), start [2] (row, column), free [S] bool (False on walls)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    """Writes ``fig`` as a PNG at ``path`` and frees it."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _mark_goal_and_start(ax, grid: dict) -> None:
    goal = grid["coords"][grid["goal"]][0]
    ax.scatter([goal[1]], [goal[0]], marker="*", s=250, c="gold", edgecolors="k")
    ax.scatter([grid["start"][1]], [grid["start"][0]], marker="o", s=80, c="tab:green")


def draw_fig2a(curves: dict, optimal: float, seeds: int, grid: dict, shift: np.ndarray, optimism: float):
    """Fig. 2a: (left) expected return per iteration, mean ± std over seeds, per method
    (``curves``: method → (mean [I], std [I])), the optimum dashed; (right) MnM's dynamics minus
    the true ones, action-averaged, as arrows (``shift`` [S, 2], row / column)."""
    fig, (ax_curve, ax_arrows) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method, (mean, std) in curves.items():
        iters = np.arange(1, len(mean) + 1)
        ax_curve.plot(iters, mean, label=method)
        ax_curve.fill_between(iters, mean - std, mean + std, alpha=0.2)
    ax_curve.axhline(optimal, color="k", ls="--", lw=0.8, label="optimal")
    ax_curve.set_xlabel("iteration")
    ax_curve.set_ylabel("expected discounted return (true dynamics)")
    ax_curve.set_title(f"Fig. 2a — {seeds} seeds")
    ax_curve.legend()
    coords, (height, width) = grid["coords"], grid["shape"]
    ax_arrows.quiver(coords[:, 1], coords[:, 0], shift[:, 1], shift[:, 0], color="tab:blue", angles="xy")
    _mark_goal_and_start(ax_arrows, grid)
    ax_arrows.set_xlim(-0.5, width - 0.5)
    ax_arrows.set_ylim(height - 0.5, -0.5)
    ax_arrows.set_aspect("equal")
    ax_arrows.set_title(f"MnM dynamics minus true (action-averaged); optimism {optimism:+.3f}")
    return fig


def draw_fig2b(grid: dict, policies: list[tuple[np.ndarray, str]]):
    """Fig. 2b: one panel per (greedy move [S, 2] (row, column step), title): the walls grey,
    the greedy move of every free non-goal cell as an arrow."""
    fig, axes = plt.subplots(1, len(policies), figsize=(13, 4.3))
    coords, (height, width), free = grid["coords"], grid["shape"], grid["free"]
    movable = free & ~grid["goal"]
    for ax, (delta, title) in zip(axes, policies):
        ax.imshow((~free).reshape(height, width), cmap="Greys", vmin=0, vmax=1.5)
        ax.quiver(coords[movable, 1], coords[movable, 0], delta[movable, 1], delta[movable, 0],
                  angles="xy", scale=25, color="tab:red")
        _mark_goal_and_start(ax, grid)
        ax.set_title(title, fontsize=9)
    return fig


def draw_fig3a(methods: dict):
    """Fig. 3a: each method's exact return from the middle cell (``methods``: name →
    {"exact_return", "action_in_middle"}), green where it goes left (safe), red where right."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(methods)
    ax.bar(names, [methods[m]["exact_return"] for m in names],
           color=["tab:green" if methods[m]["action_in_middle"] == "left" else "tab:red" for m in names])
    for i, m in enumerate(names):
        ax.text(i, methods[m]["exact_return"] + 5, methods[m]["action_in_middle"], ha="center")
    ax.set_ylabel("exact expected return from the middle")
    ax.set_title("Fig. 3a — green: safe left, red: windy right")
    return fig


def draw_fig3b(lower: np.ndarray, log_return: np.ndarray, upper: np.ndarray):
    """Fig. 3b: per iteration [I] the VMBPO objective, the log expected return and the MnM lower
    bound."""
    fig, ax = plt.subplots(figsize=(6, 4))
    iters = np.arange(1, len(log_return) + 1)
    ax.plot(iters, upper, label="VMBPO objective")
    ax.plot(iters, log_return, label="log expected return", color="k")
    ax.plot(iters, lower, label="MnM objective (lower bound)")
    ax.set_xlabel("iteration")
    ax.legend()
    ax.set_title("Fig. 3b — exact objectives along MnM value iteration")
    return fig
