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


BATCH = 256  # every batched call is padded (or chunked) to this size: jit(vmap(step)) compiles once


@pytest.fixture(scope="module")
def step_batch(env):
    """(obs [n, 4], actions [n, 1], params with leading [n] or None, time [n] or None) -> EnvState
    batch of n next states; runs one jit(vmap(env.step)) over states, actions and params."""

    @jax.jit
    def compiled(obs, actions, params, time):
        states = jax.vmap(env.state_from_obs)(obs).replace(time=time)
        return jax.vmap(env.step)(states, actions, params)

    def run(obs, actions, params=None, time=None):
        n = len(obs)
        if n > BATCH:  # chunks support default params and time only
            chunks = [
                run(obs[i : i + BATCH], actions[i : i + BATCH]) for i in range(0, n, BATCH)
            ]
            return jax.tree.map(lambda *parts: jnp.concatenate(parts), *chunks)
        params = broadcast_params(env.default_params, n) if params is None else params
        time = np.zeros(n, np.int32) if time is None else time

        def pad(x):
            x = jnp.asarray(x)
            return jnp.concatenate([x, jnp.broadcast_to(x[:1], (BATCH - n,) + x.shape[1:])])

        out = compiled(
            pad(jnp.asarray(obs, jnp.float32)),
            pad(jnp.asarray(actions, jnp.float32)),
            jax.tree.map(pad, params),
            pad(jnp.asarray(time, jnp.int32)),
        )
        return jax.tree.map(lambda x: x[:n], out)

    return run


def broadcast_params(params, batch):
    return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (batch,) + leaf.shape), params)


@pytest.mark.unit
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


def test_one_step_matches_cpu_mujoco(reference, step_batch):
    obs = reference["transition_obs"]
    assert np.abs(obs[:, 0]).max() < 2.1  # the slider limit (2.5) stays inactive
    batch = obs.shape[0]
    next_states = step_batch(obs, reference["transition_action"])
    np.testing.assert_allclose(next_states.obs, reference["transition_next_obs"], atol=1e-3)
    # Includes actions beyond ±3: the physics clamps them, the action cost does not.
    np.testing.assert_allclose(next_states.reward, reference["transition_reward"], atol=1e-4)
    assert not np.asarray(next_states.done).any()
    assert not np.asarray(next_states.truncated).any()
    np.testing.assert_array_equal(next_states.time, np.ones(batch))


def test_single_forward_rk4_equals_cpu_mujoco_rk4_in_the_slider_limit(env, step_batch):
    """The env's scanned RK4 (one mjx.forward in the program) gives CPU MuJoCo's RK4 states
    (mj_step, float64) also where the cart hits the slider limit and the constraint solver acts,
    which the recorded fixture leaves out."""
    import mujoco

    from mismatch_jax.envs.cartpole_swingup import load_mj_model

    rng = np.random.default_rng(3)
    n = 48
    obs = rng.uniform([-2.7, -np.pi, -6, -15], [2.7, np.pi, 6, 15], (n, 4)).astype(np.float32)
    obs[:16, 0] = rng.uniform(2.45, 2.55, 16)  # at the +2.5 limit, moving into it
    obs[:16, 2] = rng.uniform(1.0, 5.0, 16)
    actions = rng.uniform(-3.5, 3.5, (n, 1)).astype(np.float32)
    model = load_mj_model()
    data = mujoco.MjData(model)
    expected = []
    for o, a in zip(obs, actions):
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = o[:2], o[2:], a
        for _ in range(env.frame_skip):
            mujoco.mj_step(model, data)
        expected.append(np.concatenate([data.qpos, data.qvel]))
    expected = np.asarray(expected)
    assert (expected[:16, 2] < obs[:16, 2] - 0.5).all()  # the limit really pushed back
    ours = np.asarray(step_batch(obs, actions).obs)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # ~20 s of mjx.step compile; the CPU MuJoCo comparisons cover the same physics
def test_scan_rk4_equals_mjx_step_integrator():
    """integrator="scan_rk4" and "mjx_step" (MJX's own RK4) give the same states (one jitted
    single-state step each: the mjx.step program is the slow one to compile)."""
    reference_env = CartpoleSwingup(integrator="mjx_step")
    env = CartpoleSwingup()
    state = env.state_from_obs(jnp.asarray([2.48, 2.0, 4.0, -7.0]))
    action = jnp.asarray([1.7])
    ours = jax.jit(env.step)(state, action).obs
    expected = jax.jit(reference_env.step)(state, action).obs
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_jit_single_step_equals_vmapped_step(env, reference, step_batch):
    obs = reference["transition_obs"][:3]
    actions = jnp.asarray(reference["transition_action"][:3], jnp.float32)
    batched = step_batch(obs, actions)
    single_step = jax.jit(env.step)
    for i in range(3):
        single = single_step(env.state_from_obs(obs[i]), actions[i])
        np.testing.assert_allclose(single.obs, batched.obs[i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(single.reward, batched.reward[i], rtol=1e-6, atol=1e-6)


def test_params_are_real_and_vmappable(env, step_batch):
    """At rest with zero action: no gravity → nothing moves; with gravity the tilted pole falls."""
    obs = np.array([[0.0, 0.5, 0.0, 0.0]] * 2, np.float32)
    params = broadcast_params(env.default_params, 2)
    params = params.replace(gravity=jnp.array([0.0, 9.81], jnp.float32))
    next_states = step_batch(obs, jnp.zeros((2, 1)), params)
    np.testing.assert_allclose(next_states.obs[0], obs[0], atol=1e-6)
    assert next_states.obs[1, 3] < -0.1  # gravity swings the pole back towards θ = 0


def test_truncation_at_episode_length_without_termination(env, step_batch):
    next_states = step_batch(np.zeros((2, 4)), np.zeros((2, 1)), time=[198, 199])
    np.testing.assert_array_equal(next_states.truncated, [False, True])
    np.testing.assert_array_equal(next_states.done, [False, False])
    assert not env.termination_fn(jnp.array([100.0, 50.0, -30.0, 20.0]))


def test_episodes_match_cpu_mujoco(reference, step_batch):
    """Replays the recorded actions from the recorded reset states, one batched step at a time
    (the scan path is the same env.step; a second compile would double this file's run time).

    Observed (float32 MJX vs float64 MuJoCo): ~1e-4 after 200 steps when the cart never reaches
    the slider limit; episodes that hit the limit (a constraint solved iteratively, with a
    different warm start) stay within ~2e-4 (one transient 2e-3 on a 7 rad/s velocity) for 100
    steps and drift up to ~0.15 by step 200 as the swinging pole amplifies the difference;
    returns agree to < 5e-3."""

    obs_t = reference["episode_obs"][:, 0]
    observations, rewards = [], []
    for t in range(reference["episode_action"].shape[1]):
        next_states = step_batch(obs_t, reference["episode_action"][:, t])
        obs_t = next_states.obs
        observations.append(next_states.obs)
        rewards.append(next_states.reward)
    obs, rewards = np.stack(observations, axis=1), np.stack(rewards, axis=1)
    expected = reference["episode_obs"][:, 1:]
    hits_limit = (np.abs(expected[..., 0]) > 2.5).any(axis=1)
    assert (~hits_limit).any() and hits_limit.any()
    np.testing.assert_allclose(obs[~hits_limit], expected[~hits_limit], atol=1e-3)
    # At a limit impact velocities jump by several units and float32 rounding (which depends on
    # the XLA program, e.g. the batch size) shifts it slightly: relative tolerance there.
    np.testing.assert_allclose(obs[:, :100], expected[:, :100], rtol=1e-3, atol=1e-3)
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
    physics = jnp.concatenate([states.physics.qpos, states.physics.qvel], axis=-1)
    np.testing.assert_array_equal(physics, states.obs)


@pytest.mark.unit
def test_bad_inputs(env):
    state = env.state_from_obs(jnp.zeros(4))
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(state, jnp.zeros(2))
    with pytest.raises(ValueError, match="episode_length"):
        CartpoleSwingup(episode_length=0)
    with pytest.raises(ValueError, match="integrator"):
        CartpoleSwingup(integrator="euler")
    assert isinstance(env.default_params, CartpoleSwingupParams)
