"""The figures analysis/ draws for the PETS, tabular and attack-path commands, from small known
numbers (the commands' own tests run them end to end)."""

from __future__ import annotations

import numpy as np
import pytest

from mismatch_jax.analysis import tabular
from mismatch_jax.analysis.attack import plot_planned_paths
from mismatch_jax.analysis.pets import plot_pets_rewards

pytestmark = pytest.mark.unit  # every test here is in the fast tier


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pets_rewards_figure(tmp_path):
    plot_pets_rewards(np.array([[10.0, 20.0], [15.0, 30.0]]), np.array([1.0, 2.0]), tmp_path / "p.png", "PETS")
    assert _is_png(tmp_path / "p.png")


def test_tabular_figures(tmp_path):
    coords = np.array([[r, c] for r in range(2) for c in range(2)])
    grid = {"coords": coords, "shape": (2, 2), "free": np.array([True, True, False, True]),
            "goal": np.array([False, False, False, True]), "start": coords[0]}
    moves = np.array([[0, 1], [1, 0], [0, 0], [0, 0]])
    figures = {
        "fig2a": tabular.draw_fig2a({"mnm": (np.arange(3.0), np.ones(3))}, 2.0, 4, grid, np.zeros((4, 2)), 0.1),
        "fig2b": tabular.draw_fig2b(grid, [(moves, "optimal"), (moves, "mnm")]),
        "fig3a": tabular.draw_fig3a({"mnm": {"exact_return": 10.0, "action_in_middle": "left"},
                                     "vmbpo": {"exact_return": 5.0, "action_in_middle": "right"}}),
        "fig3b": tabular.draw_fig3b(np.array([-3.0, -2.0]), np.array([-2.0, -1.0]), np.array([-1.0, 0.0])),
    }
    assert [len(f.axes) for f in figures.values()] == [2, 2, 1, 1]
    for name, fig in figures.items():
        tabular.save_figure(fig, tmp_path / f"{name}.png")
        assert _is_png(tmp_path / f"{name}.png")


def test_planned_paths_figure(tmp_path):
    content = {"expert_action": [[0.1], [0.2], [0.3]], "expert_return": 5.0, "largest_gap_step": 1,
               "planned": {"original": [[0.1], [0.1], [0.2]], "attacked": [[0.0], [0.5], [0.2]]},
               "random_baseline": {"reference": "original", "mean_abs_gap_mean": 0.1,
                                   "planned": {"r0": [[0.0], [0.1], [0.1]]}}}
    plot_planned_paths(content, tmp_path / "paths.png")
    assert _is_png(tmp_path / "paths.png")
