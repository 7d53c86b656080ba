"""Sweeps over the true dynamics (``[env_params]``): config errors, settings, per-setting data and
episodes, drawn values == the same values as a list, the per-parameter figure."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from mismatch_jax.config_io import ConfigError, from_dict, to_toml
from mismatch_jax.envs import make
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.env_params import EnvParamsConfig, expand

BASE = textwrap.dedent("""
    name = "tiny_dynamics"
    env = "cartpole_balance"
    seed = 5
    [population]
    model_types = ["P"]
    replicates = 1
    [population.model]
    hidden_size = 8
    num_hidden_layers = 1
    [training]
    num_epochs = 2
    eval_epochs = [2]
    batch_size = 32
    learning_rate = [1e-3, 1e-2]
    [datasets]
    cache_dir = "{cache}"
    train = ["grid", "sampled"]
    eval = ["grid", "sampled"]
    grid_points = 3
    sampled_size = 120
    [cem]
    horizon = 3
    population_size = 8
    num_elites = 2
    num_iterations = 1
    [evaluation]
    trials = 1
    episode_length = 8
    [run]
    chunk_size = 4
""")


def _sweep(tmp_path, section: str) -> SweepConfig:
    import tomllib

    data = tomllib.loads(BASE.format(cache=tmp_path / "cache") + textwrap.dedent(section))
    return from_dict(SweepConfig, data)


@pytest.mark.unit
@pytest.mark.parametrize("section, message", [
    ("[env_params.grid]\ngravityy = [9.8]", "env_params.grid.gravityy: cartpole_balance has no physical constant"),
    ("[env_params.grid]\ngravity = []", "grid.gravity must list at least one value"),
    ("[env_params]\ndraws = 2\n[env_params.draw]\ngravity = [12.0, 5.0]", "draw.gravity: high must exceed low"),
    ("[env_params.draw]\ngravity = [5.0, 12.0]", "set draws >= 1"),
    ("[env_params]\ncombine = 'zip'\n[env_params.grid]\ngravity = [1.0, 2.0]\ntau = [0.02]", "equal length"),
    ("[env_params]\ndraws = 2\n[env_params.grid]\ngravity = [1.0]\n[env_params.draw]\ntau = [0.01, 0.02]",
     "either grid"),
    ("[env_params.grid]\ngravity = ['high']", "env_params.grid.gravity[0]"),
])
def test_bad_sections_name_the_key(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _sweep(tmp_path, section)


@pytest.mark.unit
def test_array_constant_shape_is_checked():
    config = EnvParamsConfig(grid=(("joint_damping", ((1.0, 2.0, 3.0),)),))
    with pytest.raises(ValueError, match=r"joint_damping\[0\]: the constant has shape \(2,\)"):
        expand(config, make("cartpole_swingup"), 0)


def test_settings_grid_zip_draw_and_model_order(tmp_path):
    env = make("cartpole_swingup")
    product = expand(EnvParamsConfig(grid=(("gravity", (5.0, 10.0)), ("joint_damping", (1.0, (0.5, 2.0))))), env, 0)
    assert product.size == 4
    np.testing.assert_array_equal(product.values["gravity"], [5, 5, 10, 10])
    np.testing.assert_array_equal(product.values["joint_damping"], [[1, 1], [0.5, 2], [1, 1], [0.5, 2]])
    np.testing.assert_array_equal(product.params.motor_gear, np.full(4, env.default_params.motor_gear))  # kept
    assert product.columns(1) == {"env_gravity": 5.0, "env_joint_damping": [0.5, 2.0]}
    zipped = expand(EnvParamsConfig(grid=(("gravity", (5.0, 10.0)), ("pole_mass", (1.0, 2.0))), combine="zip"), env, 0)
    np.testing.assert_array_equal(zipped.values["pole_mass"], [1.0, 2.0])
    drawn = EnvParamsConfig(draw=(("gravity", (5.0, 10.0)), ("pole_mass", (1.0, 4.0))), draws=50, draw_scale="log_uniform")
    a, b = expand(drawn, env, 0), expand(drawn, env, 0)
    np.testing.assert_array_equal(a.values["gravity"], b.values["gravity"])  # same seed, same draws
    assert not np.array_equal(a.values["gravity"], expand(drawn, env, 1).values["gravity"])
    assert (a.values["pole_mass"] >= 1.0).all() and (a.values["pole_mass"] <= 4.0).all()
    assert np.median(a.values["pole_mass"]) < 2.5  # log-uniform: the median sits near the geometric mean 2

    config = _sweep(tmp_path, "[env_params.grid]\ngravity = [5.0, 9.8, 20.0]")
    assert config.num_models == 1 * 3 * 2 * 1
    # types, then settings, then train datasets, then replicates
    assert [config.model_setting(i) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert [config.model_dataset_index(i) for i in range(6)] == [0, 1, 2, 3, 4, 5]
    assert from_dict(SweepConfig, __import__("tomllib").loads(to_toml(config))) == config  # resolved TOML round-trips
    plain = _sweep(tmp_path, "")
    assert plain.env_params is None and "env_params" not in to_toml(plain)  # old config hashes unchanged


def test_each_setting_builds_its_data_in_its_own_dynamics(tmp_path):
    from mismatch_jax.data.datasets import step_from
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    config = _sweep(tmp_path, "[env_params.grid]\ngravity = [2.0, 30.0]")
    env = make(config.env)
    settings = expand(config.dynamics, env, config.seed)
    sets, _ = build_study_datasets(StudyData.of_sweep(config), env, log=lambda s: None, settings=settings)
    assert len(sets) == 2
    for p in range(2):
        grid = sets[p]["grid"]
        expected, _, _ = step_from(env, grid.obs, grid.action, settings.one(p))
        np.testing.assert_allclose(grid.next_obs, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(sets[0]["grid"].next_obs, sets[1]["grid"].next_obs)  # gravity changes θ̈
    np.testing.assert_array_equal(sets[0]["grid"].obs, sets[1]["grid"].obs)  # same grid of states
    assert not np.array_equal(sets[0]["sampled"].obs, sets[1]["sampled"].obs)  # own keys per setting


def test_unequal_settings_are_padded_with_zero_weight(tmp_path):
    from mismatch_jax import models
    from mismatch_jax.data.datasets import Transitions
    from mismatch_jax.sweep.chunk import stack_study_data

    config = _sweep(tmp_path, "[env_params.grid]\ngravity = [2.0, 30.0]")
    rng = np.random.default_rng(0)

    def dataset(n):
        return Transitions(obs=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
                           action=jnp.asarray(rng.normal(size=(n, 1)), jnp.float32),
                           next_obs=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
                           reward=jnp.zeros(n), done=jnp.zeros(n, bool), is_validation=jnp.ones(n, bool))

    sets = [{"grid": dataset(5), "sampled": dataset(5)}, {"grid": dataset(8), "sampled": dataset(5)}]
    _, eval_sets, env_settings = stack_study_data(config, sets)
    obs, action, next_obs, weight = eval_sets[0]  # grid: 5 and 8 rows
    assert obs.shape == (2, 8, 4) and weight.tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert eval_sets[1][3] is None and env_settings is None  # equal sizes need no weights
    mcfg = config.population.model_of("P", make(config.env))
    params, norm = models.init(jax.random.key(0), mcfg), models.identity_normalizer(mcfg)
    padded = models.one_step_log_likelihood(mcfg, params, norm, obs[0], action[0], next_obs[0], weight=weight[0])
    grid = sets[0]["grid"]
    exact = models.one_step_log_likelihood(mcfg, params, norm, grid.obs, grid.action, grid.next_obs)
    np.testing.assert_allclose(padded, exact, rtol=1e-6)


def test_pets_runs_each_seed_in_its_own_dynamics():
    """PETS with per-seed constants: the random and the planned trial of each seed follow its dt."""
    from mismatch_jax.agents.config import pets_config_from_dict
    from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys
    from point_mass import PointMass

    config = pets_config_from_dict({
        "env": "point_mass", "num_trials": 1, "num_seeds": 2,
        "model": {"kind": "P", "ensemble_size": 1, "hidden_size": 8, "num_hidden_layers": 1},
        "train": {"num_epochs": 2, "batch_size": 16},
        "planner": {"horizon": 3, "population_size": 8, "num_elites": 2, "num_iterations": 1}})
    pets = make_pets(config, PointMass())
    keys = seed_keys(config)
    dt = jnp.asarray([0.1, 0.3], jnp.float32)
    init, step = compile_trial_loop(pets, keys, env_params={"dt": dt})
    state, _ = init(keys)
    state, _ = step(state)
    buffer = state.buffer
    for seed in range(2):
        rows = np.asarray(buffer.train_mask[seed] | buffer.val_mask[seed])
        v, a, v_next = (np.asarray(x[seed])[rows] for x in (buffer.obs[..., 1], buffer.action[..., 0],
                                                             buffer.next_obs[..., 1]))
        np.testing.assert_allclose(v_next, v + float(dt[seed]) * np.clip(a, -1, 1), rtol=1e-5, atol=1e-5)
        assert rows.sum() == 2 * pets.trial_length  # random + planned trial


def test_drawn_values_given_as_a_list_give_identical_rows(tmp_path):
    """The acceptance of [env_params]: a draw and the same values as a list → identical rows,
    one env_<name> column per constant, and the per-parameter figure."""
    from mismatch_jax.analysis.env_params import env_params_figure
    from mismatch_jax.sweep.runner import run_sweep

    drawn_config = _sweep(tmp_path, "[env_params]\ndraws = 2\n[env_params.draw]\ngravity = [2.0, 30.0]\n"
                                    "pole_mass = [0.05, 0.5]")
    drawn = run_sweep(drawn_config, tmp_path / "drawn", progress=False, log=lambda s: None)
    values = expand(drawn_config.dynamics, make(drawn_config.env), drawn_config.seed).values
    listed_config = _sweep(tmp_path, "[env_params]\ncombine = 'zip'\n[env_params.grid]\n"
                           f"gravity = {[float(v) for v in values['gravity']]}\n"
                           f"pole_mass = {[float(v) for v in values['pole_mass']]}")
    listed = run_sweep(listed_config, tmp_path / "listed", progress=False, log=lambda s: None)
    assert {"env_setting", "env_gravity", "env_pole_mass"} <= set(drawn.columns)
    np.testing.assert_array_equal(drawn["env_gravity"], np.repeat(values["gravity"], 2))
    pd.testing.assert_frame_equal(drawn, listed)
    by_setting = drawn.groupby("env_setting")["ll_grid"].mean()
    assert by_setting[0] != by_setting[1]  # each setting scores its own LL sets

    content = env_params_figure(drawn, tmp_path / "figure", num_bootstrap=50)
    assert (tmp_path / "figure" / "env_params.png").stat().st_size > 10_000
    assert [r["env_setting"] for r in content["settings"]] == [0, 1]
    assert set(content["settings"][0]["correlations_by_type"]) == {"P"}
    assert content["settings"][0]["correlations_by_type"]["P"]["grid"]["n"] == 2  # 2 train datasets × 1
    assert content["settings"][1]["env_gravity"] == pytest.approx(float(values["gravity"][1]))
