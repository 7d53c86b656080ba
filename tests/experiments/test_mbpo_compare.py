"""The MBPO-family comparison's paired statistics (the runs themselves are tested in
tests/agents/test_mbpo.py)."""

import numpy as np
import pytest
from scipy import stats

from mismatch_jax.experiments import mbpo_compare


def _agent(name, returns):
    return {"agent": name, "eval_return": returns}


def test_paired_differences_known_values():
    baseline = _agent("mbpo", [[-900.0, -300.0], [-800.0, -200.0], [-700.0, -150.0], [-1000.0, -400.0]])
    vagram = _agent("vagram", [[-850.0, -250.0], [-800.0, -230.0], [-600.0, -100.0], [-1000.0, -380.0]])
    out = mbpo_compare.paired_differences(vagram, baseline)
    final = np.asarray([50.0, -30.0, 50.0, 20.0])
    assert out["final"]["differences"] == final.tolist() and out["final"]["mean"] == 22.5
    low, high = stats.t.interval(0.95, 3, loc=final.mean(), scale=final.std(ddof=1) / 2)
    np.testing.assert_allclose(out["final"]["ci"], [low, high], atol=0.01)
    assert (out["final"]["seeds_better"], out["final"]["seeds_worse"]) == (3, 1)
    curve = np.asarray([50.0, -15.0, 75.0, 10.0])  # mean over evaluations, per seed
    assert out["curve_mean"]["differences"] == curve.tolist()
    assert out["versus"] == "mbpo" and out["seeds"] == 4


def test_paired_differences_leave_out_diverged_seeds():
    baseline = _agent("mbpo", [[-900.0, -300.0], [-800.0, -200.0], [-700.0, -150.0]])
    mnm = _agent("mnm", [[-850.0, None], [-800.0, -230.0], [-600.0, -100.0]])  # null: a diverged seed
    final = mbpo_compare.paired_differences(mnm, baseline)["final"]
    assert final["differences"] == [None, -30.0, 50.0] and final["diverged"] == 1
    assert final["mean"] == 10.0 and (final["seeds_better"], final["seeds_worse"]) == (1, 1)


def test_paired_differences_need_the_same_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        mbpo_compare.paired_differences(_agent("a", [[1.0, 2.0]]), _agent("b", [[1.0, 2.0], [3.0, 4.0]]))


def test_mean_ci_is_the_student_t_interval_of_the_seed_mean():
    returns = np.asarray([[-900.0, -300.0], [-800.0, -200.0], [-700.0, -150.0], [-1000.0, -400.0]])
    low, high = mbpo_compare.mean_ci(returns)
    for e in range(2):
        want = stats.t.interval(0.95, 3, loc=returns[:, e].mean(), scale=stats.sem(returns[:, e]))
        np.testing.assert_allclose([low[e], high[e]], want, rtol=1e-9)
    one = mbpo_compare.mean_ci(returns[:1])
    np.testing.assert_array_equal(one[0], returns[0]) and np.testing.assert_array_equal(one[1], returns[0])


def test_mean_ci_leaves_out_diverged_seeds():
    returns = np.asarray([[-900.0, np.nan], [-800.0, -200.0], [-700.0, -150.0]])
    low, high = mbpo_compare.mean_ci(returns)
    want = stats.t.interval(0.95, 1, loc=-175.0, scale=stats.sem([-200.0, -150.0]))
    np.testing.assert_allclose([low[1], high[1]], want, rtol=1e-9)
    assert np.isfinite(low[0]) and low[0] < -800.0 < high[0]


def test_curves_draw_a_ci_only_where_enough_seeds_survive_and_say_how_many(tmp_path):
    import matplotlib.pyplot as plt

    returns = np.asarray([[-900.0, -300.0, np.nan], [-800.0, np.nan, np.nan], [-700.0, -150.0, -120.0],
                          [-1000.0, -400.0, -140.0]])
    got = mbpo_compare.curve_stats(returns)
    assert got["n"].tolist() == [4, 3, 2]
    np.testing.assert_allclose(got["mean"], [-850.0, np.mean([-300.0, -150.0, -400.0]), -130.0])
    want = stats.t.interval(0.95, 2, loc=got["mean"][1], scale=stats.sem([-300.0, -150.0, -400.0]))
    np.testing.assert_allclose([got["low"][1], got["high"][1]], want, rtol=1e-9)
    assert np.isnan(got["low"][2]) and np.isnan(got["high"][2])  # 2 seeds: no band
    agent = _agent("mnm", [[None if not np.isfinite(v) else v for v in row] for row in returns.tolist()])
    agent["env_steps"] = [1000, 2000, 3000]
    fig = mbpo_compare.draw_curves([agent], "t")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["mnm (4 seeds; 2 diverged from step 2000: mean of the finite, n marked)"]
    assert [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("n=")] == ["n=3", "n=2"]
    plt.close(fig)
    mbpo_compare.plot_curves([agent], tmp_path / "c.png", "t", -200.0)
    assert (tmp_path / "c.png").is_file()
