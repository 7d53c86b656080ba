"""Registry and env-contract checks shared by the classic environments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import available, make
from mismatch_jax.envs.cartpole import CartpoleBalance, CartpoleParams
from mismatch_jax.envs.distractors import with_distractors
from mismatch_jax.envs.pendulum import Pendulum, PendulumParams

CLASSIC = ["cartpole_balance", "pendulum"]


@pytest.mark.unit
def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        make("cartpole_balanse")
    message = str(info.value)
    assert "cartpole_balanse" in message
    for name in available():
        assert name in message


@pytest.mark.unit
def test_make_builds_the_right_classes():
    assert isinstance(make("cartpole_balance"), CartpoleBalance)
    assert isinstance(make("pendulum"), Pendulum)
    assert set(CLASSIC) <= set(available())
    # constructor kwargs pass through
    assert make("pendulum", episode_length=50).episode_length == 50


@pytest.mark.unit
@pytest.mark.parametrize("name", CLASSIC)
def test_wrong_action_shape_raises(name):
    env = make(name)
    state = env.reset(jax.random.key(0))
    for bad in (jnp.zeros(()), jnp.zeros((2,)), jnp.zeros((3, 1))):
        with pytest.raises(ValueError, match="action must have shape"):
            env.step(state, bad)
    with pytest.raises(ValueError, match="observation must have shape"):
        env.state_from_obs(jnp.zeros(env.obs_dim + 1))
    distracted = with_distractors(env, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="action must have shape"):
        distracted.step(distracted.reset(jax.random.key(0)), jnp.zeros((2,)))


def _random_episode(env, key, jit):
    """30 steps of uniform actions with a Python loop (so jit vs no-jit is per call)."""
    reset = jax.jit(env.reset) if jit else env.reset
    step = jax.jit(env.step) if jit else env.step
    reset_key, action_key = jax.random.split(key)
    state = reset(reset_key)
    low, high = jnp.asarray(env.action_low), jnp.asarray(env.action_high)
    states = []
    for action_key in jax.random.split(action_key, 30):
        action = jax.random.uniform(action_key, (env.action_dim,), minval=low, maxval=high)
        state = step(state, action)
        states.append(state)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@pytest.mark.parametrize("name", CLASSIC + ["pendulum+distractors"])
def test_jit_matches_no_jit_and_scan_matches_loop(name):
    if name == "pendulum+distractors":
        env = with_distractors(make("pendulum"), 3, jax.random.key(9))
    else:
        env = make(name)
    key = jax.random.key(3)
    eager = _random_episode(env, key, jit=False)
    jitted = _random_episode(env, key, jit=True)
    np.testing.assert_allclose(jitted.obs, eager.obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jitted.reward, eager.reward, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(jitted.done, eager.done)
    np.testing.assert_array_equal(jitted.time, np.arange(1, 31))

    # the same episode with lax.scan
    reset_key, action_key = jax.random.split(key)
    low, high = jnp.asarray(env.action_low), jnp.asarray(env.action_high)
    actions = jax.vmap(
        lambda k: jax.random.uniform(k, (env.action_dim,), minval=low, maxval=high)
    )(jax.random.split(action_key, 30))

    def body(state, action):
        state = env.step(state, action)
        return state, state

    _, scanned = jax.jit(lambda k, a: jax.lax.scan(body, env.reset(k), a))(reset_key, actions)
    np.testing.assert_allclose(scanned.obs, jitted.obs, rtol=1e-6, atol=1e-6)


def test_vmap_over_gravity():
    gravities = jnp.array([4.9, 9.8, 19.6], jnp.float32)
    cartpole = make("cartpole_balance")
    params = jax.vmap(lambda g: CartpoleParams.create().replace(gravity=g))(gravities)
    obs = jnp.array([0.0, 0.0, 0.1, 0.0], jnp.float32)

    def theta_acc(p):
        next_obs = cartpole.step(cartpole.state_from_obs(obs, p), jnp.zeros(1), p).obs
        return next_obs[3] / p.tau  # theta_dot started at 0

    acc = jax.jit(jax.vmap(theta_acc))(params)
    # with no force and no angular velocity, theta_acc is proportional to g
    np.testing.assert_allclose(acc / gravities, acc[1] / gravities[1], rtol=1e-5)
    assert acc[0] < acc[1] < acc[2]

    pendulum = make("pendulum")
    p_params = jax.vmap(lambda g: PendulumParams.create().replace(gravity=g))(gravities)
    keys = jax.random.split(jax.random.key(0), 3)
    # vmap over params and keys together, then a full jitted step
    states = jax.vmap(pendulum.reset)(keys, p_params)
    out = jax.jit(jax.vmap(pendulum.step))(states, jnp.zeros((3, 1)), p_params)
    assert out.obs.shape == (3, 3)


@pytest.mark.unit
def test_state_is_a_pytree_with_stable_dtypes():
    for name in CLASSIC:
        env = make(name)
        state = env.reset(jax.random.key(0))
        assert state.obs.dtype == jnp.float32 and state.reward.dtype == jnp.float32
        assert state.done.dtype == jnp.bool_ and state.time.dtype == jnp.int32
        next_state = env.step(state, jnp.zeros(env.action_dim))
        # no weak types / dtype drift, so a scan carry keeps its type
        assert jax.tree.structure(next_state) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(next_state)):
            assert a.dtype == b.dtype and a.shape == b.shape
