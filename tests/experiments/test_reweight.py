"""Distance re-weighting: weight formula, pool buckets vs brute force, weights change training
(a constant factor does not), the Fig. 8 grid end to end, config errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax import data
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.train.config import TrainingSection
from mismatch_jax import models
from mismatch_jax.experiments import reweight
from mismatch_jax.experiments import study_models as common
from mismatch_jax.config_io import ConfigError, from_dict, load_toml
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.train import TrainConfig, TrainHParams, make_train


@pytest.mark.unit
def test_weights_known_values():
    w = data.distance_weights([0.0, 1.0, 2.0])
    raw = np.exp(-np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(w, raw * 3.0 / raw.sum(), rtol=1e-6)  # c = S / Σ e^{−d*}
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0] / w[1], np.e, rtol=1e-6)
    # Length scale and far-away points: no underflow to 0/0.
    far = data.distance_weights([500.0, 501.0], length_scale=0.5)
    np.testing.assert_allclose(far, [2 / (1 + np.exp(-2)), 2 * np.exp(-2) / (1 + np.exp(-2))], rtol=1e-6)
    with pytest.raises(ValueError, match="d_star"):
        data.distance_weights(np.zeros((2, 2)))


@pytest.mark.unit
def test_log_grid_paper_range():
    sizes = reweight.log_grid(10, 2500, 8, integer=True)
    assert sizes[0] == 10 and sizes[-1] == 2500 and len(sizes) == 8
    eps = reweight.log_grid(0.28, 15.66, 8)
    np.testing.assert_allclose([eps[0], eps[-1]], [0.28, 15.66])


def test_buckets_match_brute_force():
    key = jax.random.key(0)
    low, high = np.array([-1.0, -2.0, -1.0]), np.array([1.0, 2.0, 1.0])
    reference = np.array([[0.0, 0.0, 0.0], [0.5, 1.0, 0.0]], np.float32)
    eps = (0.3, 0.8, 5.0)
    points, d_star, found, in_ball = data.collect_buckets(key, reference, low, high, eps, 40, 2500, 1000)
    # Re-draw the same pool and compute d* by brute force.
    chunks = [np.asarray(jax.random.uniform(jax.random.fold_in(key, c), (n, 3), minval=low.astype(np.float32),
                                            maxval=high.astype(np.float32)))
              for c, n in enumerate([1000, 1000, 500])]
    pool = np.concatenate(chunks)
    brute = np.sqrt(((pool[:, None] - reference[None]) ** 2).sum(-1)).min(1)
    for j, e in enumerate(eps):
        hits = np.flatnonzero(brute <= e + 1e-5)
        assert abs(in_ball[j] - hits.size) <= 1
        assert found[j] == min(40, in_ball[j])
        np.testing.assert_allclose(points[j, : found[j]], pool[hits[: found[j]]], atol=1e-6)
        assert np.all(d_star[j, : found[j]] <= e)
    assert found[-1] == 40 and np.isnan(points[0, found[0]:]).all()


def test_weights_change_training_but_a_constant_factor_does_not():
    cfg = models.ModelConfig(kind="P", obs_dim=2, action_dim=1, hidden_size=8, num_hidden_layers=1)
    k = jax.random.split(jax.random.key(1), 4)
    obs = np.asarray(jax.random.normal(k[0], (40, 2)))
    action = np.asarray(jax.random.normal(k[1], (40, 1)))
    next_obs = obs + 0.1 * np.sin(obs) + 0.05 * action
    omega = data.distance_weights(np.abs(np.asarray(jax.random.normal(k[2], (40,)))) * 3)
    sets = [TransitionData.from_arrays(k[3], obs, action, next_obs, weight=w)
            for w in (np.ones(40), omega, 2.0 * np.ones(40))]
    stacked = TransitionData.stack(sets)
    train = make_train(TrainConfig(model=cfg, num_epochs=3, batch_size=16, keep_best=False))
    keys = jnp.stack([jax.random.key(5)] * 3)
    result = train(keys, None, stacked, TrainHParams.population(3), jnp.arange(3, dtype=jnp.int32))
    w_uniform, w_weighted, w_const = (jax.tree.map(lambda a: a[i], result.params) for i in range(3))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(w_uniform), jax.tree.leaves(w_weighted)))
    assert diff > 1e-4  # ω ≠ 1 trains a different model
    for a, b in zip(jax.tree.leaves(w_uniform), jax.tree.leaves(w_const)):
        np.testing.assert_allclose(a, b, atol=1e-5)  # c cancels in the per-minibatch weighted mean


@pytest.mark.unit
def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pool.sise"):
        from_dict(reweight.ReweightConfig, {"env": "cartpole_balance", "pool": {"sise": 3}})
    with pytest.raises(ConfigError, match="sizes"):
        from_dict(reweight.ReweightConfig, {"env": "cartpole_balance", "grid": {"sizes": [100, 10]}})
    with pytest.raises(ConfigError, match="grid.epsilons"):
        from_dict(reweight.ReweightConfig, {"env": "cartpole_balance", "grid": {"epsilons": "big"}})
    with pytest.raises(ConfigError, match="path"):
        from_dict(reweight.ReweightConfig, {"env": "cartpole_balance", "expert": {"source": "file"}})
    with pytest.raises(ConfigError, match="expert.source"):
        from_dict(reweight.ReweightConfig, {"env": "cartpole_balance", "expert": {"source": "oracle"}})


@pytest.mark.unit
@pytest.mark.parametrize("name", ["reweight_quick", "reweight_cartpole", "reweight_cpu"])
def test_shipped_configs_load(name):
    config = load_toml(reweight.ReweightConfig, f"sweeps/{name}.toml")
    assert len(config.grid.sizes) >= 2


@pytest.mark.slow  # end to end: compiles a trainer, CEM episodes and plots
def test_run_reweight_grid(tmp_path):
    config = reweight.ReweightConfig(
        env="cartpole_balance", seed=0, out_dir=str(tmp_path / "out"),
        model=dataclasses.replace(common.STUDY_MODEL, hidden_size=8, num_hidden_layers=1),
        training=TrainingSection(num_epochs=2, batch_size=8),
        cem=CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1),
        evaluation=reweight.ReweightEvaluation(trials=2, episode_length=10, models_per_call=3),
        expert=reweight.ExpertSettings(cem=CEMConfig(horizon=5, population_size=16, num_elites=4, num_iterations=1),
                                       episode_length=20, cache_dir=str(tmp_path / "data")),
        pool=reweight.PoolSettings(size=20000, chunk_size=8192),
        grid=reweight.GridSettings(sizes=(4, 8, 16), epsilons=(0.05, 1.0, 6.0), replicates=2))
    report = reweight.run_reweight(config, log=lambda s: None)
    saved = json.loads((tmp_path / "out" / "reweight.json").read_text())
    assert (tmp_path / "out" / "reweight_heatmap.png").is_file()
    assert (tmp_path / "out" / "reweight_sizes.png").is_file()
    low, high = (np.array(b, dtype=float) for b in saved["reward_ci95_over_models"]["uniform"])
    mean = np.array(saved["reward_mean"]["uniform"], dtype=float)
    assert np.all((low[np.isfinite(mean)] <= mean[np.isfinite(mean)] + 1e-9)
                  & (mean[np.isfinite(mean)] <= high[np.isfinite(mean)] + 1e-9))
    for panel in ("reweighted", "uniform"):
        grid = np.array(saved["reward_mean"][panel], dtype=float)
        assert grid.shape == (3, 3)
        assert np.isfinite(grid[:, 1:]).all()  # ε = 1, 6 hold plenty of pool tuples
        cell = saved["episode_rewards"][panel][0][2]
        assert np.shape(cell) == (2, 2)  # replicates × trials
    kept, in_ball = saved["pool"]["kept"], saved["pool"]["in_ball"]
    assert kept[2] == 16 and in_ball[0] <= in_ball[1] <= in_ball[2] == 20000
    infeasible = [i for i, s in enumerate(config.grid.sizes) if in_ball[0] < s]
    assert all(saved["reward_mean"]["uniform"][i][0] is None for i in infeasible)
    assert report["num_models"] == 2 * 2 * sum(
        1 for j in range(3) for s in config.grid.sizes if min(in_ball[j], 16) >= s)


def test_cell_interval_is_the_t_interval_of_the_model_means():
    import scipy.stats

    from mismatch_jax.analysis.reweight import model_mean_interval

    rewards = np.array([[10.0, 12.0], [20.0, 22.0], [30.0, 32.0]])  # model means 11, 21, 31
    mean, low, high = model_mean_interval(rewards)
    half = scipy.stats.t.ppf(0.975, 2) * 10.0 / np.sqrt(3)
    assert mean == pytest.approx(21.0) and low == pytest.approx(21.0 - half) and high == pytest.approx(21.0 + half)
    assert model_mean_interval(np.array([[5.0, 7.0]])) == (6.0, 6.0, 6.0)


TWO_DEVICE_RUN = """
import dataclasses, json, sys
import jax
from mismatch_jax.experiments import reweight, study_models as common
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.train.config import TrainingSection
out, data = sys.argv[1], sys.argv[2]
config = reweight.ReweightConfig(
    env="cartpole_balance", seed=1, out_dir=out,
    model=dataclasses.replace(common.STUDY_MODEL, hidden_size=8, num_hidden_layers=1),
    training=TrainingSection(num_epochs=2, batch_size=8),
    cem=CEMConfig(horizon=3, population_size=8, num_elites=2, num_iterations=1),
    evaluation=reweight.ReweightEvaluation(trials=2, episode_length=10, models_per_call=4),
    expert=reweight.ExpertSettings(cem=CEMConfig(horizon=5, population_size=16, num_elites=4, num_iterations=1),
                                   episode_length=20, cache_dir=data),
    pool=reweight.PoolSettings(size=4000, chunk_size=4000),
    grid=reweight.GridSettings(sizes=(4, 8), epsilons=(1.0, 6.0), replicates=2))
report = reweight.run_reweight(config, log=lambda s: None)
print(json.dumps({"devices": report["model_devices"], "rewards": report["episode_rewards"]}))
"""


@pytest.mark.slow  # two processes, each compiles the whole study (~1 min)
def test_models_sharded_over_two_devices_give_the_same_rewards(tmp_path):
    """`reweight --devices 2`: a call's models split over two host devices, same rewards."""
    import os
    import subprocess
    import sys

    runs = {}
    for count in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        proc = subprocess.run([sys.executable, "-c", TWO_DEVICE_RUN, str(tmp_path / f"out{count}"),
                               str(tmp_path / "data")], capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[count] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs[1]["devices"] == 1 and runs[2]["devices"] == 2
    np.testing.assert_allclose(np.asarray(runs[1]["rewards"]["uniform"], dtype=float),
                               np.asarray(runs[2]["rewards"]["uniform"], dtype=float), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(runs[1]["rewards"]["reweighted"], dtype=float),
                               np.asarray(runs[2]["rewards"]["reweighted"], dtype=float), rtol=1e-4, atol=1e-4)
