"""VaGraM distractor dimensions (Eq. 18): known values, reset rule, action independence,
jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import make
from mismatch_jax.envs.distractors import DistractedEnv, distractor_step, with_distractors


@pytest.fixture(scope="module")
def cartpole():
    return make("cartpole_balance")


def _with_constants(env, mixing, reset_state):
    return env.default_params.replace(
        mixing=jnp.asarray(mixing, jnp.float32), reset_state=jnp.asarray(reset_state, jnp.float32)
    )


def test_construction_facts(cartpole):
    env = with_distractors(cartpole, 3, jax.random.key(0))
    assert isinstance(env, DistractedEnv)
    assert (env.obs_dim, env.action_dim, env.episode_length) == (7, 1, cartpole.episode_length)
    assert env.default_params.mixing.shape == (3, 3)
    assert env.default_params.reset_state.shape == (3,)
    state = env.reset(jax.random.key(1))
    assert state.obs.shape == (7,)
    # every episode starts from the fixed d0
    np.testing.assert_array_equal(state.obs[4:], env.default_params.reset_state)
    # same key, same constants; different key, different constants
    again = with_distractors(cartpole, 3, jax.random.key(0))
    np.testing.assert_array_equal(again.default_params.mixing, env.default_params.mixing)
    other = with_distractors(cartpole, 3, jax.random.key(1))
    assert not np.allclose(other.default_params.mixing, env.default_params.mixing)
    with pytest.raises(ValueError, match="num_distractors"):
        with_distractors(cartpole, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="reset_mode"):
        with_distractors(cartpole, 2, jax.random.key(0), reset_mode="sometimes")


def test_constant_scales_are_standard_deviations(cartpole):
    env = with_distractors(cartpole, 60, jax.random.key(3))
    mixing = np.asarray(env.default_params.mixing)
    np.testing.assert_allclose(mixing.std(), 10.0, rtol=0.05)
    np.testing.assert_allclose(mixing.mean(), 0.0, atol=0.5)
    np.testing.assert_allclose(np.asarray(env.default_params.reset_state).std(), 0.1, rtol=0.25)


@pytest.mark.unit
def test_known_value_step(cartpole):
    mixing = np.array([[1.0, 2.0], [3.0, 4.0]])
    d = np.array([0.5, -1.0])
    expected = d + np.sin(mixing @ d)  # [0.5 + sin(-1.5), -1 + sin(-2.5)]
    out = distractor_step(
        jnp.asarray(d, jnp.float32), jnp.asarray(mixing, jnp.float32), jnp.zeros(2)
    )
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # the same through the env: obs [4 cartpole, 2 distractors]
    env = with_distractors(cartpole, 2, jax.random.key(0))
    params = _with_constants(env, mixing, [0.01, 0.02])
    obs = jnp.concatenate([jnp.zeros(4), jnp.asarray(d, jnp.float32)])
    next_state = env.step(env.state_from_obs(obs, params), jnp.array([0.3]), params)
    np.testing.assert_allclose(next_state.obs[4:], expected, rtol=0, atol=1e-6)
    base_next = cartpole.step(cartpole.state_from_obs(jnp.zeros(4)), jnp.array([0.3]))
    np.testing.assert_array_equal(next_state.obs[:4], base_next.obs)


def test_reset_rule_per_dimension_and_whole_vector(cartpole):
    # dimension 0 sits at 19.5 and A d gives pi/2 there, so d0' = 20.5 >= 20 -> back to d0[0];
    # dimension 1 has A d = 0, so it stays at 0.25 + sin(0) = 0.25.
    d = np.array([19.5, 0.25])
    mixing = np.array([[np.pi / 2 / 19.5, 0.0], [0.0, 0.0]])
    reset_state = np.array([-0.07, 0.11])
    d, mixing = jnp.asarray(d, jnp.float32), jnp.asarray(mixing, jnp.float32)
    reset_state = jnp.asarray(reset_state, jnp.float32)
    per_dim = distractor_step(d, mixing, reset_state)
    np.testing.assert_allclose(per_dim, [-0.07, 0.25], atol=1e-6)
    whole = distractor_step(d, mixing, reset_state, reset_mode="whole_vector")
    np.testing.assert_allclose(whole, reset_state, atol=1e-6)
    # just below the threshold: no reset
    below = distractor_step(jnp.array([18.5, 0.25]), mixing, reset_state)
    np.testing.assert_allclose(below, [18.5 + np.sin(np.pi / 2 * 18.5 / 19.5), 0.25], atol=1e-5)
    assert below[0] < 20.0
    # the lower side resets too (|d'| >= 20)
    low = distractor_step(jnp.array([-19.5, 0.25]), mixing, reset_state)
    np.testing.assert_allclose(low, [-0.07, 0.25], atol=1e-6)
    # and the env honours the mode it was built with
    env = with_distractors(cartpole, 2, jax.random.key(0), reset_mode="whole_vector")
    params = _with_constants(env, mixing, reset_state)
    obs = jnp.concatenate([jnp.zeros(4), jnp.asarray(d, jnp.float32)])
    next_obs = env.step(env.state_from_obs(obs, params), jnp.zeros(1), params).obs
    np.testing.assert_allclose(next_obs[4:], reset_state, atol=1e-6)


def test_long_run_stays_bounded_and_resets(cartpole):
    env = with_distractors(cartpole, 8, jax.random.key(5))
    params = env.default_params

    def body(d, _):
        d = distractor_step(d, params.mixing, params.reset_state)
        return d, d

    _, ds = jax.lax.scan(body, params.reset_state, None, length=2000)
    ds = np.asarray(ds)
    assert np.all(np.abs(ds) < 20.0)
    # resets happen: some component returns exactly to its d0 value after having left it
    assert np.any(ds[1:] == np.asarray(params.reset_state))


def test_action_independence(cartpole):
    env = with_distractors(cartpole, 5, jax.random.key(2))
    key = jax.random.key(7)
    actions_a = jax.random.uniform(jax.random.key(8), (60, 1), minval=-1, maxval=1)
    actions_b = -actions_a

    def run(actions):
        def body(state, action):
            # keep stepping past termination: the distractors must not care
            next_state = env.step(state, action)
            return next_state, next_state.obs

        return jax.lax.scan(body, env.reset(key), actions)[1]

    obs_a, obs_b = run(actions_a), run(actions_b)
    np.testing.assert_array_equal(obs_a[:, 4:], obs_b[:, 4:])
    assert not np.allclose(obs_a[:, :4], obs_b[:, :4])


def test_reward_and_termination_ignore_distractors(cartpole):
    env = with_distractors(cartpole, 3, jax.random.key(0))
    base_obs = jnp.array([0.1, 0.0, 0.3, 0.0])  # theta beyond 12 degrees: terminal
    for distractors in (jnp.zeros(3), jnp.full(3, 19.0), jnp.array([-5.0, 3.0, 1e3])):
        obs = jnp.concatenate([base_obs, distractors])
        assert bool(env.termination_fn(obs)) == bool(cartpole.termination_fn(base_obs))
        assert float(env.reward_fn(obs, jnp.zeros(1), obs)) == float(
            cartpole.reward_fn(base_obs, jnp.zeros(1), base_obs)
        )
    pendulum = make("pendulum")
    env = with_distractors(pendulum, 2, jax.random.key(0))
    obs = jnp.array([0.0, 1.0, 0.5, 7.0, -7.0])
    np.testing.assert_array_equal(
        env.reward_fn(obs, jnp.ones(1), obs), pendulum.reward_fn(obs[:3], jnp.ones(1), obs[:3])
    )


def test_state_from_obs_round_trip():
    pendulum = make("pendulum")
    env = with_distractors(pendulum, 2, jax.random.key(0))
    state = env.reset(jax.random.key(4))
    for _ in range(5):
        state = env.step(state, jnp.array([0.7]))
    rebuilt = env.state_from_obs(state.obs)
    np.testing.assert_array_equal(rebuilt.obs, state.obs)
    a = env.step(state, jnp.array([-1.0]))
    b = env.step(rebuilt, jnp.array([-1.0]))
    np.testing.assert_allclose(a.obs, b.obs, atol=1e-6)


def test_jit_vmap(cartpole):
    env = with_distractors(cartpole, 4, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 16)
    states = jax.jit(jax.vmap(env.reset))(keys)
    assert states.obs.shape == (16, 8)
    actions = jnp.linspace(-1, 1, 16)[:, None]
    jitted = jax.jit(jax.vmap(env.step))(states, actions)
    eager = jax.vmap(env.step)(states, actions)
    np.testing.assert_allclose(jitted.obs, eager.obs, atol=1e-6)
    np.testing.assert_array_equal(jitted.done, eager.done)
    # vmap over params: two distractor systems side by side
    params = jax.tree.map(lambda x: jnp.stack([x, x]), env.default_params)
    params = params.replace(mixing=params.mixing.at[1].multiply(0.0))
    out = jax.vmap(lambda p: env.step(env.reset(keys[0], p), jnp.zeros(1), p).obs)(params)
    np.testing.assert_allclose(out[1, 4:], env.default_params.reset_state, atol=1e-7)  # sin(0) = 0
    assert not np.allclose(out[0, 4:], out[1, 4:])
