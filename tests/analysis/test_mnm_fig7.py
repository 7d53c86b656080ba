"""Tests of mismatch_jax.analysis.mnm_fig7: the per-seed stability check has known values and the
figure draws from an mbpo_compare summary."""

from __future__ import annotations

import numpy as np

from mismatch_jax.analysis import mnm_fig7


def _summary():
    agent = lambda name, mse, q: {"agent": name, "env_steps": [500, 1000, 1500],
                                 "phase_log": {"model_val_mse": mse}, "q_mean": q}
    mle = agent("mbpo", [[None, 0.2, 0.1], [None, 0.4, 0.3]], [[1.0, 2.0, 3.0], [1.0, None, 5.0]])
    mnm = agent("mnm_approx", [[None, 0.5, 0.25], [None, 0.9, 0.95]], [[1.0, 1.5, 2.0], [0.5, 1.0, 1.0]])
    return {"agents": [mle, mnm]}


def test_model_stability_compares_each_seeds_final_mse_with_its_mle_minimum():
    got = mnm_fig7.model_stability(_summary(), factor=3.0)
    assert got["mle_min_val_mse"] == [0.1, 0.3]
    np.testing.assert_allclose(got["ratio"], [2.5, 0.95 / 0.3], rtol=1e-5)  # rounded to 6 digits
    assert got["within"] == [True, False] and not got["all_within"] and got["failing_seeds"] == [1]
    assert mnm_fig7.model_stability(_summary(), factor=4.0)["all_within"]


def test_fig7_draws_both_panels(tmp_path):
    fig = mnm_fig7.draw_fig7(_summary())
    q_ax, mse_ax = fig.axes
    assert [line.get_label() for line in q_ax.get_lines() if not line.get_label().startswith("_")] == [
        "mbpo (2 seeds)", "mnm_approx (2 seeds)"]
    assert "1 of 2 seeds" in mse_ax.get_title()
    dashed = sorted(line.get_ydata()[0] for line in mse_ax.get_lines() if line.get_linestyle() == "--")
    np.testing.assert_allclose(dashed, [0.1, 0.3])
    mnm_fig7.plot_fig7(_summary(), tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
