"""Planners built on planner_from_returns: the value planner (any step function, discount,
terminal value) against the true-dynamics planner, the terminal value's effect, and the jitted
model planner / MPC episode not retracing for new models, observations and keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_counts import jit_work
from mismatch_jax import envs
from mismatch_jax.models import core as models
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import (make_planner, make_true_dynamics_planner, make_value_planner, mpc_episode,
                                       true_env_step)
from point_mass import PointMass


def _cem(env, horizon=4):
    return CEMConfig(horizon=horizon, population_size=16, num_elites=4, num_iterations=2).for_env(env)


def test_value_planner_without_terminal_value_is_the_true_dynamics_planner():
    env = envs.make("pendulum")
    cem = _cem(env)
    ours = make_value_planner(cem, true_env_step(env), env.reward_fn, None, 1.0)
    reference = make_true_dynamics_planner(env, cem)
    obs = env.reset(jax.random.key(1)).obs
    key = jax.random.key(2)
    a, plan, sol, info = jax.jit(ours.plan_with_info)(key, None, None, obs, ours.initial_plan)
    b, plan_b, sol_b, info_b = jax.jit(reference.plan_with_info)(key, None, None, obs, reference.initial_plan)
    np.testing.assert_allclose(sol, sol_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info.best_return, info_b.best_return, rtol=1e-5)


def test_terminal_value_adds_discounted_value_at_the_horizon():
    env = envs.make("pendulum")
    cem, gamma, value = _cem(env, horizon=5), 0.9, 100.0
    obs = env.reset(jax.random.key(3)).obs
    key = jax.random.key(4)
    terminal = lambda s: jnp.full(s.shape[:1], value)
    plain = make_value_planner(cem, true_env_step(env), env.reward_fn, None, gamma)
    with_value = make_value_planner(cem, true_env_step(env), env.reward_fn, terminal, gamma)
    # A constant terminal value does not change the ranking, so both see the same samples.
    _, _, sol_a, info_a = plain.plan_with_info(key, None, None, obs, plain.initial_plan)
    _, _, sol_b, info_b = with_value.plan_with_info(key, None, None, obs, with_value.initial_plan)
    np.testing.assert_allclose(sol_a, sol_b, atol=1e-6)
    np.testing.assert_allclose(info_b.best_return - info_a.best_return, gamma**5 * value, rtol=1e-4)


def _model_planner():
    """A tiny probabilistic-ensemble planner on PointMass, two different models and normalisers."""
    env = PointMass()
    mc = models.ModelConfig(kind="PE", obs_dim=2, action_dim=1, hidden_size=8, num_hidden_layers=1, ensemble_size=2)
    cem = CEMConfig(horizon=4, population_size=16, num_elites=4, num_iterations=2, propagation="ts1",
                    num_particles=2).for_env(env)
    planner = make_planner(cem, mc, env.reward_fn, env.termination_fn)
    norm_a = models.identity_normalizer(mc)
    norm_b = norm_a.replace(input_mean=norm_a.input_mean + 0.5, target_std=2.0 * norm_a.target_std)
    models_ab = ((models.init(jax.random.key(0), mc), norm_a), (models.init(jax.random.key(1), mc), norm_b))
    return env, planner, models_ab


def test_jitted_planner_does_not_retrace_for_new_params_obs_and_keys():
    env, planner, ((params_a, norm_a), (params_b, norm_b)) = _model_planner()
    traces = []

    def plan(key, params, norm, obs, prev_plan):
        traces.append(1)
        return planner(key, params, norm, obs, prev_plan)

    jitted = jax.jit(plan)
    obs_a, obs_b = jnp.asarray([1.0, 0.0]), jnp.asarray([-0.5, 0.3])
    key_a, key_b = jax.random.key(5), jax.random.key(6)
    with jit_work() as first:
        action_a, plan_a = jax.block_until_ready(jitted(key_a, params_a, norm_a, obs_a, planner.initial_plan))
    # the next step of an episode: another model, observation and key, and the shifted plan
    with jit_work() as second:
        action_b, plan_b = jax.block_until_ready(jitted(key_b, params_b, norm_b, obs_b, plan_a))
    assert first["trace"] >= 1 and first["lower"] >= 1  # the counter sees this program
    assert len(traces) == 1 and sum(second.values()) == 0, dict(second)
    assert action_b.shape == (1,) and plan_b.shape == (4, 1)
    assert np.all(np.abs(np.asarray(plan_b)) <= 1.0)
    # The new values are used, not baked in: each argument changes the plan.
    assert not np.allclose(action_a, action_b)
    for args in ((key_a, params_b, norm_b, obs_b, plan_a), (key_b, params_a, norm_b, obs_b, plan_a),
                 (key_b, params_b, norm_a, obs_b, plan_a), (key_b, params_b, norm_b, obs_a, plan_a)):
        assert not np.allclose(jitted(*args)[1], plan_b)
    assert len(traces) == 1


def test_jitted_mpc_episode_does_not_retrace_for_new_models_and_keys():
    env, planner, ((params_a, norm_a), (params_b, norm_b)) = _model_planner()
    traces = []

    def episode(key, params, norm):
        traces.append(1)
        return mpc_episode(key, env, planner, params, norm, 5)

    jitted = jax.jit(episode)
    key_a, key_b = jax.random.key(7), jax.random.key(8)  # made outside the counted blocks
    with jit_work() as first:
        traj_a, total_a = jax.block_until_ready(jitted(key_a, params_a, norm_a))
    with jit_work() as second:
        traj_b, total_b = jax.block_until_ready(jitted(key_b, params_b, norm_b))
    assert first["trace"] >= 1 and first["lower"] >= 1
    assert len(traces) == 1 and sum(second.values()) == 0, dict(second)
    assert traj_b.obs.shape == (5, 2) and traj_b.action.shape == (5, 1)
    np.testing.assert_allclose(total_b, traj_b.reward.sum(), rtol=1e-6)
    assert not np.allclose(traj_a.action, traj_b.action)
    # same key, other model: the start state is the same, the actions are not
    traj_c, _ = jitted(key_a, params_b, norm_b)
    np.testing.assert_array_equal(traj_c.obs[0], traj_a.obs[0])
    assert not np.allclose(traj_c.action, traj_a.action)
    assert len(traces) == 1


@pytest.mark.unit
def test_episode_salt_omitted_keeps_the_keys_and_the_resolved_config():
    import pytest

    from mismatch_jax.config_io import apply_overrides, from_dict, to_dict, to_toml
    from mismatch_jax.planning.mpc import EpisodeSettings
    from mismatch_jax.sweep.config import SweepConfig

    key = jax.random.key(3)
    plain, salted = EpisodeSettings(), EpisodeSettings(episode_salt=1)
    assert plain.salted(key) is key
    data = lambda k: np.asarray(jax.random.key_data(k))
    assert not np.array_equal(data(salted.salted(key)), data(key))
    np.testing.assert_array_equal(data(salted.salted(key)), data(jax.random.fold_in(key, 1)))
    np.testing.assert_array_equal(data(jax.vmap(plain.salted)(jax.random.split(key, 3))),
                                  data(jax.random.split(key, 3)))
    # Omitted, the field is not written, so an existing sweep's config hash (and --resume) is unchanged.
    assert "episode_salt" not in to_toml(SweepConfig(env="cartpole_swingup"))
    config = from_dict(SweepConfig, apply_overrides(to_dict(SweepConfig(env="cartpole_swingup")), ["evaluation.episode_salt=1"]))
    assert config.evaluation.episode_salt == 1 and "episode_salt = 1" in to_toml(config)
    with pytest.raises(ValueError, match="episode_salt"):
        EpisodeSettings(episode_salt=0)
