"""Pendulum against Gymnasium's Pendulum-v1 (float64 numpy reference), to 1e-5."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import make
from mismatch_jax.envs.pendulum import Pendulum, PendulumParams, angle_normalize

ATOL = 1e-5


@pytest.fixture(scope="module")
def env():
    return make("pendulum")


@pytest.fixture(scope="module")
def step_from_obs(env):
    return jax.jit(jax.vmap(lambda obs, action: env.step(env.state_from_obs(obs), action)))


def test_static_facts(env):
    assert (env.obs_dim, env.action_dim, env.episode_length) == (3, 1, 200)
    np.testing.assert_array_equal(env.action_low, [-2.0])
    np.testing.assert_array_equal(env.action_high, [2.0])
    gym_env = gym.make("Pendulum-v1")
    assert gym_env.spec.max_episode_steps == env.episode_length
    np.testing.assert_array_equal(gym_env.action_space.high, env.action_high)


def test_one_step_table(env, step_from_obs):
    """Many random states (including unwrapped angles and out-of-box torques) set directly."""
    rng = np.random.default_rng(0)
    n = 3000
    thetas = rng.uniform(-12.0, 12.0, n)  # Gymnasium lets theta leave [-pi, pi]
    theta_dots = rng.uniform(-8.0, 8.0, n)
    actions = rng.uniform(-3.0, 3.0, (n, 1)).astype(np.float32)  # some get clipped to +-2
    gym_env = gym.make("Pendulum-v1").unwrapped
    gym_env.reset(seed=0)
    obs, next_obs, rewards = [], [], []
    for theta, theta_dot, action in zip(thetas, theta_dots, actions):
        gym_env.state = np.array([theta, theta_dot])
        obs.append(gym_env._get_obs())
        o, r, terminated, truncated, _ = gym_env.step(action)
        assert not terminated and not truncated
        next_obs.append(o)
        rewards.append(r)
    out = step_from_obs(jnp.asarray(np.stack(obs)), jnp.asarray(actions))
    np.testing.assert_allclose(out.obs, np.stack(next_obs), rtol=0, atol=ATOL)
    np.testing.assert_allclose(out.reward, np.array(rewards), rtol=0, atol=ATOL)
    assert not np.any(out.done) and not np.any(out.truncated)
    # the velocity clip (|theta_dot| <= 8) is exercised
    assert np.any(np.abs(np.stack(next_obs)[:, 2]) == 8.0)


def test_whole_episodes(env):
    """200-step episodes with random (partly out-of-box) torques, from Gymnasium's own resets."""
    rng = np.random.default_rng(1)
    num_episodes, horizon = 6, env.episode_length
    gym_env = gym.make("Pendulum-v1")  # with TimeLimit(200)
    reset_obs, gym_obs, gym_rewards, gym_truncated = [], [], [], []
    actions = rng.uniform(-2.5, 2.5, (num_episodes, horizon, 1)).astype(np.float32)
    for i in range(num_episodes):
        o, _ = gym_env.reset(seed=100 + i)
        reset_obs.append(o)
        obs_i, rew_i, trunc_i = [], [], []
        for t in range(horizon):
            o, r, terminated, truncated, _ = gym_env.step(actions[i, t])
            assert not terminated
            obs_i.append(o)
            rew_i.append(r)
            trunc_i.append(truncated)
        gym_obs.append(obs_i)
        gym_rewards.append(rew_i)
        gym_truncated.append(trunc_i)

    def replay(obs0, action_seq):
        def body(state, action):
            next_state = env.step(state, action)
            return next_state, next_state

        return jax.lax.scan(body, env.state_from_obs(obs0), action_seq)[1]

    traj = jax.jit(jax.vmap(replay))(jnp.asarray(np.stack(reset_obs)), jnp.asarray(actions))
    np.testing.assert_allclose(traj.obs, np.array(gym_obs), rtol=0, atol=ATOL)
    np.testing.assert_allclose(traj.reward, np.array(gym_rewards), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(traj.truncated, np.array(gym_truncated))
    assert np.all(np.array(gym_truncated)[:, -1]) and not np.any(traj.done)


def test_reward_uses_pre_step_state_and_clipped_torque(env):
    obs = jnp.array([np.cos(3.0), np.sin(3.0), 1.5], jnp.float32)
    next_obs = jnp.array([1.0, 0.0, 0.0], jnp.float32)  # irrelevant to the reward
    reward = env.reward_fn(obs, jnp.array([5.0]), next_obs)
    expected = -(3.0**2 + 0.1 * 1.5**2 + 0.001 * 2.0**2)
    np.testing.assert_allclose(reward, expected, rtol=1e-6)


def test_reset_distribution(env):
    states = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 4000))
    theta, theta_dot = np.asarray(states.physics.theta), np.asarray(states.physics.theta_dot)
    assert np.all(np.abs(theta) <= np.pi) and np.all(np.abs(theta_dot) <= 1.0)
    np.testing.assert_allclose(theta.std(), np.pi / np.sqrt(3), rtol=0.05)
    np.testing.assert_allclose(theta_dot.std(), 1 / np.sqrt(3), rtol=0.05)
    np.testing.assert_allclose(states.obs[:, 0], np.cos(theta), atol=1e-6)
    np.testing.assert_allclose(states.obs[:, 1], np.sin(theta), atol=1e-6)
    np.testing.assert_array_equal(states.obs[:, 2], theta_dot)


def test_state_from_obs_recovers_angle(env):
    theta = jnp.linspace(-3.1, 3.1, 13)
    obs = jnp.stack([jnp.cos(theta), jnp.sin(theta), jnp.full_like(theta, 0.5)], axis=-1)
    states = jax.vmap(env.state_from_obs)(obs)
    np.testing.assert_allclose(states.physics.theta, theta, atol=1e-6)
    np.testing.assert_array_equal(states.obs, obs)


def test_angle_stays_wrapped_while_spinning(env):
    # Full torque forever: the pendulum spins at max speed; theta must stay in [-pi, pi].
    def body(state, _):
        next_state = env.step(state, jnp.array([2.0]))
        return next_state, next_state.physics.theta

    state = env.state_from_obs(jnp.array([1.0, 0.0, 8.0]))
    _, thetas = jax.lax.scan(body, state, None, length=400)
    assert np.all(np.abs(np.asarray(thetas)) <= np.pi + 1e-6)
    np.testing.assert_allclose(angle_normalize(jnp.array([3 * np.pi + 0.1])), [-np.pi + 0.1], atol=1e-5)


def test_params_vmap_over_gravity():
    env = Pendulum()
    gravities = jnp.array([5.0, 10.0, 20.0])
    params = jax.vmap(lambda g: PendulumParams.create().replace(gravity=g))(gravities)
    obs = jnp.array([0.0, 1.0, 0.0], jnp.float32)  # horizontal, at rest
    speeds = jax.vmap(lambda p: env.step(env.state_from_obs(obs, p), jnp.zeros(1), p).obs[2])(
        params
    )
    # theta_dot' = 3 g / (2 l) * sin(theta) * dt, sin(pi/2) = 1
    np.testing.assert_allclose(speeds, 1.5 * gravities * 0.05, rtol=1e-6)
    with pytest.raises(ValueError, match="max_torque"):
        Pendulum(max_torque=0.0)
