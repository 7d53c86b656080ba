"""CartpoleBalance against transitions recorded from mbrl-lib 0.2.0's cartpole_continuous.

The fixture comes from tests/fixtures/record_cartpole_continuous.py (see its docstring to re-run).
mbrl-lib integrates in float64, we in float32; everything must agree to 1e-6.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import make, rollout
from mismatch_jax.envs.cartpole import THETA_THRESHOLD_RADIANS, CartpoleBalance, CartpoleParams

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cartpole_continuous.npz"
ATOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def env():
    return make("cartpole_balance")


def test_constants_match_mbrl(ref, env):
    assert THETA_THRESHOLD_RADIANS == float(ref["theta_threshold"])
    assert env.x_threshold == float(ref["x_threshold"])
    assert env.episode_length == int(ref["episode_length"]) == 200
    assert (env.obs_dim, env.action_dim) == (4, 1)
    np.testing.assert_array_equal(env.action_low, [-1.0])
    np.testing.assert_array_equal(env.action_high, [1.0])


@pytest.mark.unit
def test_one_step_table(ref, env):
    @jax.jit
    @jax.vmap
    def one_step(state, action):
        return env.step(env.state_from_obs(state), action)

    out = one_step(jnp.asarray(ref["step_states"], jnp.float32), ref["step_actions"])
    np.testing.assert_allclose(out.obs, ref["step_next_states"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(out.done, ref["step_terminated"])
    np.testing.assert_array_equal(out.reward, ref["step_rewards"])
    assert ref["step_terminated"].any() and not ref["step_terminated"].all()
    # reward 1.0 on terminating steps too, as mbrl-lib's env does
    assert np.all(ref["step_rewards"][ref["step_terminated"]] == 1.0)
    # actions outside [-1, 1] are in the table and are not clipped (mbrl-lib does not clip)
    assert np.any(np.abs(ref["step_actions"]) > 1.0)
    assert not np.any(out.truncated)
    np.testing.assert_array_equal(out.time, 1)


@pytest.mark.unit
def test_pure_functions_agree_with_step(ref, env):
    next_obs = jnp.asarray(ref["step_next_states"], jnp.float32)
    done = jax.vmap(env.termination_fn)(next_obs)
    np.testing.assert_array_equal(done, ref["step_terminated"])
    obs = jnp.asarray(ref["step_states"], jnp.float32)
    actions = jnp.asarray(ref["step_actions"], jnp.float32)
    np.testing.assert_array_equal(jax.vmap(env.reward_fn)(obs, actions, next_obs), 1.0)
    # mbrl-lib's planning reward (reward_fns.cartpole): 0 exactly on terminating transitions
    alive = jax.vmap(env.alive_reward_fn)(obs, actions, next_obs)
    np.testing.assert_array_equal(alive, 1.0 - ref["step_terminated"])


def _replay_open_loop(env, reset_state, actions):
    """Steps the env through a fixed action sequence [T, 1] with lax.scan."""

    def body(state, action):
        next_state = env.step(state, action)
        return next_state, next_state

    _, traj = jax.lax.scan(body, env.state_from_obs(reset_state), actions)
    return traj


def _check_episode(traj, obs, rewards, terminated_at, length, episode_length):
    """Compares a replayed trajectory with one recorded mbrl-lib episode (valid steps only)."""
    np.testing.assert_allclose(traj.obs[:length], obs[1 : length + 1], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(traj.reward[:length], rewards[:length])
    done = np.asarray(traj.done[:length])
    expected_done = np.zeros(length, bool)
    if terminated_at >= 0:
        expected_done[terminated_at] = True
    np.testing.assert_array_equal(done, expected_done)
    truncated = np.asarray(traj.truncated[:length])
    expected_truncated = np.zeros(length, bool)
    if terminated_at < 0:
        assert length == episode_length
        expected_truncated[-1] = True
    np.testing.assert_array_equal(truncated, expected_truncated)


def test_open_loop_episodes(ref, env):
    replay = jax.jit(jax.vmap(lambda s, a: _replay_open_loop(env, s, a)))
    traj = replay(jnp.asarray(ref["open_reset_states"], jnp.float32), ref["open_actions"])
    assert np.all(ref["open_terminated_at"] >= 0)  # random actions drop the pole
    for i in range(len(ref["open_lengths"])):
        episode = jax.tree.map(lambda x: x[i], traj)
        _check_episode(
            episode,
            ref["open_obs"][i],
            ref["open_rewards"][i],
            int(ref["open_terminated_at"][i]),
            int(ref["open_lengths"][i]),
            env.episode_length,
        )


def test_closed_loop_episodes_reach_time_limit(ref, env):
    gain = jnp.asarray(ref["closed_gain"], jnp.float32)

    def replay(reset_state, noise):
        def body(state, noise_t):
            action = jnp.clip(gain @ state.obs + noise_t, -1.0, 1.0)[None]
            next_state = env.step(state, action)
            return next_state, (next_state, action)

        _, out = jax.lax.scan(body, env.state_from_obs(reset_state), noise)
        return out

    traj, actions = jax.jit(jax.vmap(replay))(
        jnp.asarray(ref["closed_reset_states"], jnp.float32),
        jnp.asarray(ref["closed_noise"], jnp.float32),
    )
    np.testing.assert_allclose(actions, ref["closed_actions"], rtol=0, atol=ATOL)
    assert np.all(ref["closed_lengths"] == env.episode_length)
    for i in range(len(ref["closed_lengths"])):
        episode = jax.tree.map(lambda x: x[i], traj)
        _check_episode(
            episode,
            ref["closed_obs"][i],
            ref["closed_rewards"][i],
            int(ref["closed_terminated_at"][i]),
            int(ref["closed_lengths"][i]),
            env.episode_length,
        )


def test_reset_distribution(env):
    states = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 4000))
    obs = np.asarray(states.obs)
    assert obs.shape == (4000, 4) and obs.dtype == np.float32
    assert np.all(np.abs(obs) <= 0.05)
    # uniform on [-0.05, 0.05]: mean 0, std 0.05/sqrt(3) per component
    np.testing.assert_allclose(obs.mean(0), 0.0, atol=0.003)
    np.testing.assert_allclose(obs.std(0), 0.05 / np.sqrt(3), rtol=0.05)
    np.testing.assert_array_equal(states.physics, states.obs)
    assert not np.any(states.done) and not np.any(states.truncated)
    np.testing.assert_array_equal(states.time, 0)


def test_state_from_obs_round_trip(env):
    obs = jnp.array([0.3, -1.2, 0.1, 0.7], jnp.float32)
    state = env.state_from_obs(obs)
    np.testing.assert_array_equal(state.obs, obs)
    np.testing.assert_array_equal(state.physics, obs)


def test_euler_uses_old_velocities(env):
    # With zero angle and zero force the accelerations vanish; positions advance by tau * v_old.
    obs = jnp.array([0.0, 1.5, 0.0, -2.0], jnp.float32)
    next_obs = env.step(env.state_from_obs(obs), jnp.zeros(1)).obs
    np.testing.assert_allclose(next_obs[0], 0.02 * 1.5, rtol=1e-6)
    np.testing.assert_allclose(next_obs[2], 0.02 * -2.0, rtol=1e-6)


@pytest.mark.unit
def test_rollout_stops_counting_after_termination(env):
    # Always push right: the pole falls within a few dozen steps; total reward = steps alive.
    traj, total = rollout(env, lambda key, obs: jnp.ones(1), jax.random.key(1), 200)
    first_done = int(np.argmax(np.asarray(traj.done)))
    assert traj.done[first_done]
    assert float(total) == first_done + 1


def test_params_validation_and_vmap():
    with pytest.raises(ValueError, match="gravity"):
        CartpoleParams.create(gravity=-1.0)
    with pytest.raises(ValueError, match="episode_length"):
        CartpoleBalance(episode_length=0)
    env = CartpoleBalance()
    params = jax.vmap(lambda m: CartpoleParams.create().replace(pole_mass=m))(
        jnp.array([0.1, 0.5], jnp.float32)
    )
    obs = jnp.array([0.0, 0.0, 0.1, 0.0], jnp.float32)
    next_obs = jax.vmap(lambda p: env.step(env.state_from_obs(obs, p), jnp.zeros(1), p).obs)(params)
    assert next_obs.shape == (2, 4)
    # a heavier pole makes the cart recoil more (different x acceleration)
    assert next_obs[0, 1] != next_obs[1, 1]
