"""BraxEnv adapter: shapes, brax's reward passes through, truncation, obs-based functions.

Brax programs take many seconds to compile on CPU, so everything that steps physics goes through
ONE jitted probe (reset, a few steps of our env and of raw brax side by side, state_from_obs) on
halfcheetah; hopper and walker2d are only constructed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import make
from mismatch_jax.envs.brax_adapter import DEFAULT_BACKEND, BraxEnv

NUM_STEPS = 5

# Brax serves only the GPU configs (hopper / halfcheetah); building its envs and compiling the
# probe costs 45-60 s of the default tier's 10-minute budget on 2 cores, so the module runs in the
# slow tier (`python -m pytest -m slow tests/envs/test_brax_adapter.py`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def halfcheetah():
    return make("halfcheetah")


@pytest.fixture(scope="module")
def probe(halfcheetah):
    """Runs NUM_STEPS random-action steps from reset with our env and with raw brax."""
    env = halfcheetah

    @jax.jit
    def run(key, start_time):
        reset_key, action_key = jax.random.split(key)
        actions = jax.random.uniform(
            action_key, (NUM_STEPS, env.action_dim), minval=-1.0, maxval=1.0
        )
        state = env.reset(reset_key).replace(time=start_time)
        with jax.numpy_rank_promotion("allow"):  # brax's own code broadcasts implicitly
            brax_state = env.brax_env.reset(reset_key)

        def body(carry, action):
            state, brax_state = carry
            next_state = env.step(state, action)
            with jax.numpy_rank_promotion("allow"):
                next_brax = env.brax_env.step(brax_state, action)
                rebuilt_obs = env.brax_env._get_obs(env.state_from_obs(next_state.obs).physics)
            surrogate = env.reward_fn(state.obs, action, next_state.obs)
            outputs = dict(
                obs=next_state.obs,
                reward=next_state.reward,
                done=next_state.done,
                truncated=next_state.truncated,
                time=next_state.time,
                brax_obs=next_brax.obs,
                brax_reward=next_brax.reward,
                brax_done=next_brax.done,
                rebuilt_obs=rebuilt_obs,
                surrogate_reward=surrogate,
            )
            return (next_state, next_brax), outputs

        (_, _), trajectory = jax.lax.scan(body, (state, brax_state), actions)
        return state, trajectory

    return run(jax.random.key(0), jnp.asarray(997, jnp.int32))


def test_default_backend_and_shapes(halfcheetah, probe):
    reset_state, trajectory = probe
    assert halfcheetah.backend == DEFAULT_BACKEND
    env = halfcheetah
    assert (env.obs_dim, env.action_dim, env.episode_length) == (17, 6, 1000)
    np.testing.assert_array_equal(halfcheetah.action_low, -np.ones(6))
    assert reset_state.obs.shape == (17,)
    assert reset_state.reward.shape == () and reset_state.time.dtype == jnp.int32
    assert trajectory["obs"].shape == (NUM_STEPS, 17)
    assert trajectory["reward"].shape == (NUM_STEPS,)
    assert trajectory["done"].dtype == bool


def test_step_reward_and_obs_equal_brax(probe):
    _, trajectory = probe
    np.testing.assert_allclose(trajectory["obs"], trajectory["brax_obs"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        trajectory["reward"], trajectory["brax_reward"], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(trajectory["done"], trajectory["brax_done"] > 0.5)
    assert np.abs(trajectory["reward"]).max() > 1e-3  # the comparison is not trivially 0 = 0


def test_truncation_at_episode_length(probe):
    _, trajectory = probe  # started at time 997 of a 1000-step episode
    np.testing.assert_array_equal(trajectory["time"], 998 + np.arange(NUM_STEPS))
    np.testing.assert_array_equal(trajectory["truncated"], [False, False, True, True, True])
    assert not trajectory["done"].any()  # halfcheetah never terminates


def test_state_from_obs_round_trip(probe):
    _, trajectory = probe
    np.testing.assert_allclose(trajectory["rebuilt_obs"], trajectory["obs"], atol=1e-5)


def test_obs_reward_approximates_brax(halfcheetah, probe):
    """The obs-only surrogate estimates Δx/dt by the mean velocity: close, not equal (measured
    RMS 0.18 over random-action rollouts; brax's forward velocity itself has std 0.65)."""
    _, trajectory = probe
    np.testing.assert_allclose(trajectory["surrogate_reward"], trajectory["reward"], atol=1.2)
    obs = jnp.zeros(17).at[8].set(2.0)
    next_obs = jnp.zeros(17).at[8].set(4.0)
    action = jnp.full(6, 0.5)  # 0.1 * 6 * 0.25 = 0.15
    assert halfcheetah.reward_fn(obs, action, next_obs) == pytest.approx(3.0 - 0.15, abs=1e-6)
    assert not halfcheetah.termination_fn(next_obs)


def test_wrong_action_shape(halfcheetah, probe):
    reset_state, _ = probe
    with pytest.raises(ValueError, match="action must have shape"):
        halfcheetah.step(reset_state, jnp.zeros(5))
    with pytest.raises(ValueError, match="observation must have shape"):
        halfcheetah.state_from_obs(jnp.zeros(16))


def test_hopper_termination_from_obs():
    env = make("hopper")
    healthy = np.zeros(11, np.float32)
    healthy[0] = 1.25  # torso height
    cases = {
        "healthy": (healthy, False),
        "low": (np.where(np.arange(11) == 0, 0.6, healthy), True),
        "tilted": (np.where(np.arange(11) == 1, 0.3, healthy), True),
        "tilted_back": (np.where(np.arange(11) == 1, -0.25, healthy), True),
    }
    for name, (obs, expected) in cases.items():
        assert bool(env.termination_fn(jnp.asarray(obs))) == expected, name
    batch = jnp.stack([jnp.asarray(obs) for obs, _ in cases.values()])
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(env.termination_fn))(batch), [e for _, e in cases.values()]
    )
    # forward velocity (obs[5]) + healthy reward 1 − 1e-3‖a‖²
    next_obs = jnp.asarray(healthy).at[5].set(1.0)
    assert env.reward_fn(jnp.asarray(healthy), jnp.ones(3), next_obs) == pytest.approx(
        0.5 + 1.0 - 3e-3, abs=1e-6
    )


def test_bad_configuration():
    with pytest.raises(ValueError, match="backend must be one of"):
        BraxEnv("halfcheetah", backend="physx")
    with pytest.raises(ValueError, match="not a brax environment"):
        BraxEnv("cheetah_typo")
    walker = BraxEnv("walker2d")
    with pytest.raises(ValueError, match="no observation-based reward"):
        obs = jnp.zeros(walker.obs_dim)
        walker.reward_fn(obs, jnp.zeros(walker.action_dim), obs)
    with pytest.raises(ValueError, match="no observation-based termination"):
        walker.termination_fn(jnp.zeros(walker.obs_dim))
    with pytest.raises(ValueError, match="state_from_obs is only defined"):
        walker.state_from_obs(jnp.zeros(walker.obs_dim))
