"""Planners built on planner_from_returns: the value planner (any step function, discount,
terminal value) against the true-dynamics planner, and the terminal value's effect."""

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax import envs
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import make_true_dynamics_planner, make_value_planner, true_env_step


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
