"""PETS cart-pole swing-up on MJX vs. the CPU MuJoCo reference (tests/fixtures/pets_cartpole.npz,
recorded by tests/fixtures/record_pets_cartpole.py with mbrl-lib pets_cartpole semantics).

The unjitted MJX step takes about a minute per call on CPU (op-by-op dispatch of the RK4 graph), so
"jit vs no-jit" is checked on the cheap pure functions and the step is checked jit-single vs
jit-vmap; every compiled function is built once per module.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.envs import EnvState, make
from mismatch_jax.envs.cartpole_swingup import CartpoleSwingup, CartpoleSwingupParams

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pets_cartpole.npz"


@pytest.fixture(scope="module")
def env():
    return make("cartpole_swingup")


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def batched_step(env):
    """jit(vmap(step)) over states, actions and params."""
    return jax.jit(jax.vmap(env.step))


def broadcast_params(params, batch):
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (batch,) + leaf.shape), params)


def states_from(env, obs):
    return jax.vmap(env.state_from_obs)(jnp.asarray(obs, jnp.float32))


def test_model_facts(env):
    model = env.mj_model
    np.testing.assert_allclose(model.body_mass[1:], [10.472, 5.019], atol=1e-3)
    np.testing.assert_allclose(model.jnt_range[0], [-2.5, 2.5])
    np.testing.assert_allclose(model.dof_damping, [1.0, 1.0])
    assert model.opt.integrator == 1  # mjINTEGRATOR_RK4
    assert env.dt == pytest.approx(0.04)
    np.testing.assert_allclose(env.action_low, [-3.0])
    np.testing.assert_allclose(env.action_high, [3.0])
    assert (env.obs_dim, env.action_dim, env.episode_length) == (4, 1, 200)


def test_one_step_matches_cpu_mujoco(env, reference, batched_step):
    obs = reference["transition_obs"]
    assert np.abs(obs[:, 0]).max() < 2.1  # the slider limit (2.5) stays inactive
    batch = obs.shape[0]
    states = states_from(env, obs)
    actions = jnp.asarray(reference["transition_action"], jnp.float32)
    next_states = batched_step(states, actions, broadcast_params(env.default_params, batch))
    np.testing.assert_allclose(next_states.obs, reference["transition_next_obs"], atol=1e-3)
    # Includes actions beyond ±3: the physics clamps them, the action cost does not.
    np.testing.assert_allclose(next_states.reward, reference["transition_reward"], atol=1e-4)
    assert not np.asarray(next_states.done).any()
    assert not np.asarray(next_states.truncated).any()
    np.testing.assert_array_equal(next_states.time, np.ones(batch))


def test_jit_single_step_equals_vmapped_step(env, reference, batched_step):
    obs = reference["transition_obs"][:3]
    actions = jnp.asarray(reference["transition_action"][:3], jnp.float32)
    batched = batched_step(states_from(env, obs), actions, broadcast_params(env.default_params, 3))
    single_step = jax.jit(env.step)
    for i in range(3):
        single = single_step(env.state_from_obs(obs[i]), actions[i])
        np.testing.assert_allclose(single.obs, batched.obs[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(single.reward, batched.reward[i], rtol=1e-6, atol=1e-6)


def test_params_are_real_and_vmappable(env, batched_step):
    """At rest with zero action: no gravity → nothing moves; with gravity the tilted pole falls."""
    obs = np.array([[0.0, 0.5, 0.0, 0.0]] * 2, np.float32)
    params = broadcast_params(env.default_params, 2)
    params = params.replace(gravity=jnp.array([0.0, 9.81], jnp.float32))
    next_states = batched_step(states_from(env, obs), jnp.zeros((2, 1)), params)
    np.testing.assert_allclose(next_states.obs[0], obs[0], atol=1e-6)
    assert next_states.obs[1, 3] < -0.1  # gravity swings the pole back towards θ = 0


def test_truncation_at_episode_length_without_termination(env, batched_step):
    states = states_from(env, np.zeros((2, 4)))
    states = states.replace(time=jnp.array([198, 199], jnp.int32))
    next_states = batched_step(states, jnp.zeros((2, 1)), broadcast_params(env.default_params, 2))
    np.testing.assert_array_equal(next_states.truncated, [False, True])
    np.testing.assert_array_equal(next_states.done, [False, False])
    assert not env.termination_fn(jnp.array([100.0, 50.0, -30.0, 20.0]))


def test_episodes_match_cpu_mujoco(env, reference):
    """Replays the recorded actions from the recorded reset states with lax.scan.

    Observed (float32 MJX vs float64 MuJoCo): ~1e-4 after 200 steps when the cart never reaches
    the slider limit; episodes that hit the limit (a constraint solved iteratively, with a
    different warm start) stay within 2e-4 for 100 steps and drift up to ~0.15 by step 200 as the
    swinging pole amplifies the difference."""

    def episode(obs0, actions):
        def body(state, action):
            state = env.step(state, action)
            return state, (state.obs, state.reward)

        _, trajectory = jax.lax.scan(body, env.state_from_obs(obs0), actions)
        return trajectory

    obs, rewards = jax.jit(jax.vmap(episode))(
        jnp.asarray(reference["episode_obs"][:, 0], jnp.float32),
        jnp.asarray(reference["episode_action"], jnp.float32),
    )
    expected = reference["episode_obs"][:, 1:]
    hits_limit = (np.abs(expected[..., 0]) > 2.5).any(axis=1)
    assert (~hits_limit).any() and hits_limit.any()
    np.testing.assert_allclose(obs[~hits_limit], expected[~hits_limit], atol=1e-3)
    np.testing.assert_allclose(obs[:, :100], expected[:, :100], atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(rewards).sum(axis=1), reference["episode_reward"].sum(axis=1), atol=0.05
    )


def test_reward_known_values(env):
    upright = jnp.array([0.0, jnp.pi, 0.0, 0.0])
    hanging = jnp.zeros(4)
    assert env.reward_fn(hanging, jnp.zeros(1), upright) == pytest.approx(1.0, abs=1e-6)
    # hanging: tip (0, −0.6), squared distance 1.44, exp(−1.44 / 0.36) = exp(−4)
    assert env.reward_fn(upright, jnp.zeros(1), hanging) == pytest.approx(np.exp(-4.0), abs=1e-7)
    # pole horizontal at x = 0.6: tip (0, 0) → exp(−1); action cost 0.01 · 2² = 0.04
    sideways = jnp.array([0.6, jnp.pi / 2, 1.0, 2.0])
    assert env.reward_fn(hanging, jnp.array([2.0]), sideways) == pytest.approx(
        np.exp(-1.0) - 0.04, abs=1e-6
    )
    batch_obs = jnp.stack([upright, hanging])
    jitted = jax.jit(jax.vmap(env.reward_fn))(batch_obs, jnp.ones((2, 1)), batch_obs)
    eager = jnp.stack([env.reward_fn(o, jnp.ones(1), o) for o in batch_obs])
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_state_from_obs_round_trip(env):
    obs = jnp.array([1.2, -3.0, 0.5, 7.0], jnp.float32)
    state = env.state_from_obs(obs)
    assert isinstance(state, EnvState)
    np.testing.assert_array_equal(state.obs, obs)
    np.testing.assert_array_equal(jnp.concatenate([state.physics.qpos, state.physics.qvel]), obs)
    jitted = jax.jit(env.state_from_obs)(obs)
    np.testing.assert_array_equal(jitted.physics.qpos, state.physics.qpos)
    with pytest.raises(ValueError, match="observation must have shape"):
        env.state_from_obs(jnp.zeros(5))


def test_reset_distribution(env):
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), 4000))
    assert states.obs.shape == (4000, 4)
    np.testing.assert_allclose(states.obs.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(states.obs.std(axis=0), 0.1, rtol=0.05)
    np.testing.assert_array_equal(jnp.concatenate([states.physics.qpos, states.physics.qvel], -1), states.obs)


def test_bad_inputs(env):
    state = env.state_from_obs(jnp.zeros(4))
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(state, jnp.zeros(2))
    with pytest.raises(ValueError, match="episode_length"):
        CartpoleSwingup(episode_length=0)
    assert isinstance(env.default_params, CartpoleSwingupParams)
