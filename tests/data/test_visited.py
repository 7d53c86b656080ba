"""Grid / sampled data from visited states: rows come from the visited set, actions from the box,
next states from the true dynamics; on the study's half-cheetah a rebuilt state steps exactly as
the original one (slow: two brax compiles)."""

import jax
import numpy as np
import pytest

from mismatch_jax import data, envs


@pytest.fixture(scope="module")
def env():
    return envs.make("cartpole_balance")


@pytest.fixture(scope="module")
def runs(env):
    """Fake PETS runs [S=2, R=3, T=5] with the last two steps of one trial dead."""
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.1, 0.1, (2, 3, 5, env.obs_dim)).astype(np.float32)
    alive = np.ones((2, 3, 5), bool)
    alive[1, 2, 3:] = False
    return {"obs": obs, "alive": alive}


def test_visited_states_keeps_alive_rows_only(runs):
    states = data.visited_states(runs)
    assert states.shape == (2 * 3 * 5 - 2, runs["obs"].shape[-1])
    np.testing.assert_array_equal(states[0], runs["obs"][0, 0, 0])
    np.testing.assert_array_equal(states[-1], runs["obs"][1, 2, 2])
    with pytest.raises(ValueError, match="disagree"):
        data.visited_states({"obs": runs["obs"], "alive": runs["alive"][..., :4]})
    with pytest.raises(ValueError, match="no alive step"):
        data.visited_states({"obs": runs["obs"], "alive": np.zeros_like(runs["alive"])})


def test_sampled_draws_visited_states_and_box_actions(env, runs):
    visited = data.visited_states(runs)
    ds = data.visited_sampled_dataset(jax.random.key(1), env, visited, 300, validation_fraction=0.2)
    again = data.visited_sampled_dataset(jax.random.key(1), env, visited, 300, validation_fraction=0.2)
    np.testing.assert_array_equal(ds.action, again.action)
    assert ds.obs.shape == (300, env.obs_dim) and ds.action.shape == (300, env.action_dim)
    assert ds.reward.shape == ds.done.shape == ds.is_validation.shape == (300,)
    obs = np.asarray(ds.obs)
    # every state is a visited one, and many distinct ones are used
    matches = (obs[:, None, :] == visited[None]).all(-1)
    assert matches.any(1).all()
    assert matches.any(0).sum() > visited.shape[0] // 2
    action = np.asarray(ds.action)
    assert (action >= env.action_low).all() and (action <= env.action_high).all()
    assert action.std() > 0.4  # uniform on [-1, 1]: std 0.577, not the visited actions
    i = 11
    ref = env.step(env.state_from_obs(ds.obs[i]), ds.action[i])
    np.testing.assert_allclose(ds.next_obs[i], ref.obs, rtol=1e-6, atol=1e-7)
    assert int(ds.is_validation.sum()) == 60


def test_grid_is_states_times_action_grid(env, runs):
    visited = data.visited_states(runs)
    ds = data.visited_grid_dataset(jax.random.key(2), env, visited, num_states=4, action_points=3)
    assert ds.size == 4 * 3 ** env.action_dim
    obs = np.asarray(ds.obs).reshape(4, 3 ** env.action_dim, env.obs_dim)
    assert (obs == obs[:, :1]).all()                       # state-major blocks
    assert len({tuple(row) for row in obs[:, 0]}) == 4      # distinct states
    actions = np.asarray(ds.action).reshape(4, -1, env.action_dim)
    np.testing.assert_array_equal(actions[0], actions[3])   # the same action grid per state
    np.testing.assert_allclose(np.unique(actions), [-1.0, 0.0, 1.0])


def test_bad_inputs_name_the_argument(env, runs):
    visited = data.visited_states(runs)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="visited_obs must be"):
        data.visited_sampled_dataset(key, env, visited[:, :2], 10)
    with pytest.raises(ValueError, match="num_samples"):
        data.visited_sampled_dataset(key, env, visited, 1)
    with pytest.raises(ValueError, match="num_states"):
        data.visited_grid_dataset(key, env, visited, visited.shape[0] + 1, 3)
    with pytest.raises(ValueError, match="action_points"):
        data.visited_grid_dataset(key, env, visited, 2, 1)
    with pytest.raises(ValueError, match="NaN"):
        data.visited_sampled_dataset(key, env, np.full_like(visited, np.nan), 10)


@pytest.mark.slow
def test_halfcheetah_rebuilt_states_step_like_the_trajectory():
    """On the study's half-cheetah (generalized coordinates) the next states of visited-state data
    are the trajectory's own next states: state_from_obs loses nothing the dynamics need."""
    cheetah = envs.make("halfcheetah_generalized")
    assert (cheetah.name, cheetah.backend, cheetah.obs_dim, cheetah.action_dim) == ("halfcheetah", "generalized", 17, 6)

    @jax.jit
    def roll(key):
        reset_key, action_key = jax.random.split(key)
        actions = jax.random.uniform(action_key, (40, cheetah.action_dim), minval=-1.0, maxval=1.0)

        def body(state, action):
            nxt = cheetah.step(state, action)
            return nxt, (state.obs, action, nxt.obs, nxt.reward)

        return jax.lax.scan(body, cheetah.reset(reset_key), actions)[1]

    obs, action, next_obs, reward = (np.asarray(a) for a in roll(jax.random.key(0)))
    stepped, stepped_reward, _ = data.step_from(cheetah, obs, action)
    np.testing.assert_allclose(stepped, next_obs, atol=2e-3, rtol=1e-3)  # float32 over 4 substeps
    np.testing.assert_allclose(stepped_reward, reward, atol=1e-3)
    ds = data.visited_sampled_dataset(jax.random.key(1), cheetah, obs, 64)
    assert ds.obs.shape == (64, 17) and np.isfinite(np.asarray(ds.next_obs)).all()
