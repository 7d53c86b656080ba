"""CEM-MPC: known optima, bounds, propagation modes, vmapping, jit, true-dynamics planning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.models import core as models
from mismatch_jax.planning import (
    CEMConfig,
    cem_optimize,
    initial_dispersion,
    make_planner,
    make_true_dynamics_planner,
    model_returns,
    mpc_episode,
    sample_candidates,
    shift_plan,
)
from point_mass import PointMass


TARGET = jnp.array([0.3, -0.5])


def quadratic_reward(obs, action, next_obs):
    return -jnp.sum((action - TARGET) ** 2)


def identity_model(kind="D", ensemble_size=1, obs_dim=3, action_dim=2):
    """Model whose prediction is next_obs = obs (all weights zero, identity normaliser)."""
    config = models.ModelConfig(kind=kind, obs_dim=obs_dim, action_dim=action_dim, hidden_size=8,
                                num_hidden_layers=1, ensemble_size=ensemble_size)
    params = models.init(jax.random.key(0), config)
    params = params.replace(layers=jax.tree.map(jnp.zeros_like, params.layers))
    return config, params, models.identity_normalizer(config)


def small_cem(**kw):
    base = dict(horizon=5, population_size=200, num_elites=20, num_iterations=8, alpha=0.1,
                num_particles=5)
    base.update(kw)
    return CEMConfig(**base).with_bounds([-1.0, -1.0], [1.0, 1.0])


@pytest.mark.parametrize("sampling", ["truncated_normal", "clipped_normal"])
@pytest.mark.parametrize("return_mean_elites", [True, False])
def test_finds_quadratic_optimum(sampling, return_mean_elites):
    cem = small_cem(sampling=sampling, return_mean_elites=return_mean_elites)
    mc, params, norm = identity_model()
    planner = make_planner(cem, mc, quadratic_reward)
    action, next_plan, solution, info = jax.jit(planner.plan_with_info)(
        jax.random.key(1), params, norm, jnp.zeros(3), planner.initial_plan)
    np.testing.assert_allclose(solution, jnp.broadcast_to(TARGET, solution.shape), atol=0.08)
    np.testing.assert_allclose(action, solution[0])
    np.testing.assert_allclose(next_plan[:-1], solution[1:])
    np.testing.assert_allclose(next_plan[-1], jnp.zeros(2))  # middle of the box
    assert float(info.best_return) > -0.05


def test_optimum_outside_box_is_clamped_to_bound():
    cem = small_cem()
    target = jnp.array([5.0, -5.0])

    def objective(key, actions):
        return -jnp.sum((actions - target[None, None]) ** 2, axis=(1, 2))

    solution, _ = cem_optimize(jax.random.key(0), objective, jnp.zeros((5, 2)), cem)
    assert jnp.all(solution <= 1.0) and jnp.all(solution >= -1.0)
    # The truncated normal's variance is capped by the distance to the bound, so the mean creeps
    # towards a bound geometrically (mbrl-lib behaves the same) rather than jumping onto it.
    assert jnp.all(solution[:, 0] > 0.65) and jnp.all(solution[:, 1] < -0.65)


@pytest.mark.parametrize("sampling", ["truncated_normal", "clipped_normal"])
def test_samples_respect_bounds(sampling):
    cem = CEMConfig(horizon=3, population_size=4000, num_elites=10, sampling=sampling).with_bounds(
        [-1.0, 0.0], [1.0, 2.0])
    mean = jnp.array([[-1.0, 2.0], [0.99, 0.01], [0.0, 1.0]])  # on, near and inside the bounds
    disp = initial_dispersion(cem, mean.shape) * 4.0
    samples = sample_candidates(jax.random.key(0), cem, mean, disp)
    assert samples.shape == (4000, 3, 2)
    assert jnp.all(samples >= jnp.array([[[-1.0, 0.0]]])) and jnp.all(samples <= jnp.array([[[1.0, 2.0]]]))
    if sampling == "truncated_normal":
        # Variance capped by the distance to the bound: a mean on the bound does not move.
        np.testing.assert_array_equal(samples[:, 0], jnp.broadcast_to(mean[0], (4000, 2)))
        # Inside: std = sqrt(min(var, (room/2)²)) of a ±2σ truncated normal (std factor 0.880).
        np.testing.assert_allclose(samples[:, 2, 0].std(), 0.5 * 0.8796, rtol=0.05)


@pytest.mark.unit
def test_initial_dispersion_matches_mbrl_lib():
    cem = CEMConfig().with_bounds([-3.0], [3.0])
    np.testing.assert_allclose(initial_dispersion(cem, (2, 1)), jnp.full((2, 1), 36.0 / 16.0))
    np.testing.assert_allclose(shift_plan(cem, jnp.ones((4, 1))), jnp.array([[1.0], [1.0], [1.0], [0.0]]))


def test_propagation_shapes_and_agreement_for_deterministic_model():
    # Members share weights, so every propagation sees the same deterministic dynamics.
    mc = models.ModelConfig(kind="DE", obs_dim=3, action_dim=2, hidden_size=16, num_hidden_layers=2,
                            ensemble_size=5)
    one = models.init(jax.random.key(3), dataclasses.replace(mc, kind="D", ensemble_size=1))
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (5,) + a.shape[1:]) if a.ndim > 1 else a, one)
    params = params.replace(max_logvar=one.max_logvar, min_logvar=one.min_logvar)
    norm = models.identity_normalizer(mc)
    obs = jnp.array([0.1, -0.2, 0.3])
    actions = jax.random.uniform(jax.random.key(4), (40, 6, 2), minval=-1, maxval=1)
    returns = {}
    for propagation in ("expectation", "ts1", "tsinf"):
        cem = small_cem(propagation=propagation, population_size=40, num_particles=5)
        r = model_returns(cem, mc, quadratic_reward, None, jax.random.key(5), params, norm, obs, actions)
        assert r.shape == (40,)
        returns[propagation] = r
    np.testing.assert_allclose(returns["ts1"], returns["expectation"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns["tsinf"], returns["expectation"], rtol=1e-5, atol=1e-5)


def test_trajectory_sampling_differs_for_probabilistic_ensemble():
    mc = models.ModelConfig(kind="PE", obs_dim=3, action_dim=2, hidden_size=16, num_hidden_layers=2,
                            ensemble_size=5)
    params = models.init(jax.random.key(3), mc)
    norm = models.identity_normalizer(mc)

    def reward(obs, action, next_obs):  # depends on the state, so noise matters
        return -jnp.sum(next_obs**2)

    actions = jnp.zeros((10, 4, 2))
    out = {}
    for propagation in ("expectation", "ts1", "tsinf"):
        cem = small_cem(propagation=propagation, population_size=10, num_elites=2, num_particles=5)
        out[propagation] = model_returns(cem, mc, reward, None, jax.random.key(0), params, norm,
                                         jnp.zeros(3), actions)
        assert jnp.all(jnp.isfinite(out[propagation]))
    # Expectation is deterministic: identical candidates get identical returns.
    np.testing.assert_allclose(out["expectation"], out["expectation"][0])
    assert float(jnp.std(out["ts1"])) > 0 and float(jnp.std(out["tsinf"])) > 0


def test_indivisible_particles_raise():
    mc, params, norm = identity_model(kind="DE", ensemble_size=3)
    cem = small_cem(propagation="ts1", population_size=10, num_elites=2, num_particles=5)
    with pytest.raises(ValueError, match="divisible"):
        model_returns(cem, mc, quadratic_reward, None, jax.random.key(0), params, norm,
                      jnp.zeros(3), jnp.zeros((10, 5, 2)))


def test_termination_stops_reward():
    mc, params, norm = identity_model(obs_dim=1, action_dim=1)
    cem = CEMConfig(horizon=4, population_size=2, num_elites=2).with_bounds([-1.0], [1.0])
    # reward 1 per step; terminate immediately: only the terminating step counts (mbrl-lib).
    r = model_returns(cem, mc, lambda o, a, n: jnp.ones(()), lambda n: jnp.ones((), bool),
                      jax.random.key(0), params, norm, jnp.zeros(1), jnp.zeros((2, 4, 1)))
    np.testing.assert_allclose(r, jnp.ones(2))


@pytest.mark.slow  # ~35 s of compile; the sweep's chunk tests vmap planners over models by default
def test_vmap_over_start_states_and_models_and_jit():
    cem = small_cem(population_size=50, num_elites=5, num_iterations=3, propagation="tsinf",
                    num_particles=5)
    mc = models.ModelConfig(kind="PE", obs_dim=3, action_dim=2, hidden_size=16, num_hidden_layers=2,
                            ensemble_size=5)
    planner = make_planner(cem, mc, quadratic_reward)
    params = jax.vmap(lambda k: models.init(k, mc))(jax.random.split(jax.random.key(0), 4))
    norms = jax.vmap(lambda _: models.identity_normalizer(mc))(jnp.arange(4))
    obs = jax.random.normal(jax.random.key(1), (4, 3))
    plans = jnp.broadcast_to(planner.initial_plan, (4, 5, 2))
    keys = jax.random.split(jax.random.key(2), 4)
    # Over models (shared obs), over start states (shared model), and both.
    by_model = jax.vmap(planner, in_axes=(0, 0, 0, None, 0))(keys, params, norms, obs[0], plans)
    one_params = jax.tree.map(lambda a: a[0], params)
    one_norm = jax.tree.map(lambda a: a[0], norms)
    by_state = jax.vmap(planner, in_axes=(0, None, None, 0, 0))(keys, one_params, one_norm, obs, plans)
    both = jax.jit(jax.vmap(planner))(keys, params, norms, obs, plans)
    assert by_model[0].shape == (4, 2) and by_model[1].shape == (4, 5, 2)
    assert by_state[0].shape == (4, 2) and both[1].shape == (4, 5, 2)
    # vmapped results equal the per-item calls, jitted or not.
    for i in range(4):
        p_i = jax.tree.map(lambda a: a[i], params)
        n_i = jax.tree.map(lambda a: a[i], norms)
        a_i, plan_i = planner(keys[i], p_i, n_i, obs[i], plans[i])
        np.testing.assert_allclose(both[0][i], a_i, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(both[1][i], plan_i, rtol=1e-4, atol=1e-5)
        a_m, _ = planner(keys[i], p_i, n_i, obs[0], plans[i])
        np.testing.assert_allclose(by_model[0][i], a_m, rtol=1e-4, atol=1e-5)
        a_s, _ = planner(keys[i], one_params, one_norm, obs[i], plans[i])
        np.testing.assert_allclose(by_state[0][i], a_s, rtol=1e-4, atol=1e-5)


def test_true_dynamics_planner_beats_random_and_vmaps():
    env = PointMass()
    cem = CEMConfig(horizon=10, population_size=64, num_elites=8, num_iterations=3)
    planner = make_true_dynamics_planner(env, cem)
    episode = jax.jit(jax.vmap(lambda k: mpc_episode(k, env, planner, None, None, env.episode_length)))
    keys = jax.random.split(jax.random.key(0), 3)
    trajectory, planned = episode(keys)
    assert trajectory.obs.shape == (3, env.episode_length, 2)
    assert trajectory.action.shape == (3, env.episode_length, 1)
    assert jnp.all(jnp.abs(trajectory.action) <= 1.0)
    np.testing.assert_allclose(planned, trajectory.reward.sum(1), rtol=1e-5)

    def random_return(key):
        reset_key, action_key = jax.random.split(key)
        state = env.reset(reset_key)
        actions = jax.random.uniform(action_key, (env.episode_length, 1), minval=-1, maxval=1)

        def body(s, a):
            s = env.step(s, a)
            return s, s.reward

        return jax.lax.scan(body, state, actions)[1].sum()

    random = jax.vmap(random_return)(keys)
    assert float(planned.mean()) > float(random.mean()) + 3.0
    # The planner drives x towards 0 (starts at ~1).
    assert float(jnp.abs(trajectory.obs[:, -1, 0]).mean()) < 0.3


def test_mpc_episode_on_model_jit_vs_no_jit():
    env = PointMass()
    mc = models.ModelConfig(kind="PE", obs_dim=2, action_dim=1, hidden_size=8, num_hidden_layers=1,
                            ensemble_size=2)
    params = models.init(jax.random.key(0), mc)
    norm = models.identity_normalizer(mc)
    cem = CEMConfig(horizon=5, population_size=20, num_elites=4, num_iterations=2,
                    propagation="ts1", num_particles=2).for_env(env)
    planner = make_planner(cem, mc, env.reward_fn, env.termination_fn)
    episode = lambda k: mpc_episode(k, env, planner, params, norm, 6)
    traj_jit, total_jit = jax.jit(episode)(jax.random.key(7))
    traj, total = episode(jax.random.key(7))
    assert traj.obs.shape == (6, 2) and traj.alive.all()
    np.testing.assert_allclose(total, total_jit, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(traj.action, traj_jit.action, rtol=1e-4, atol=1e-4)


@pytest.mark.unit
def test_config_validation():
    with pytest.raises(ValueError, match="population_size"):
        CEMConfig(population_size=-5)
    with pytest.raises(ValueError, match="num_elites"):
        CEMConfig(population_size=10, num_elites=20)
    with pytest.raises(ValueError, match="propagation"):
        CEMConfig(propagation="mean")
    with pytest.raises(ValueError, match="alpha"):
        CEMConfig(alpha=1.5)
    with pytest.raises(ValueError, match="action_high"):
        CEMConfig().with_bounds([1.0], [-1.0])
    mc, _, _ = identity_model()
    with pytest.raises(ValueError, match="bounds"):
        make_planner(CEMConfig(), mc, quadratic_reward)


_CANDIDATE_SPLIT_SCRIPT = """
import json
import jax, jax.numpy as jnp
from mismatch_jax.models import core as models
from mismatch_jax.planning import CEMConfig, make_planner
assert len(jax.devices()) == 2
mc = models.ModelConfig(kind="PE", obs_dim=3, action_dim=2, hidden_size=16, num_hidden_layers=2,
                        ensemble_size=3)
params = models.init(jax.random.key(0), mc)
norm = models.identity_normalizer(mc)
cem = CEMConfig(horizon=4, population_size=40, num_elites=6, num_iterations=3,
                propagation="expectation").with_bounds([-1.0, -1.0], [1.0, 1.0])
reward = lambda obs, action, next_obs: -jnp.sum((action - 0.3) ** 2) - jnp.sum(next_obs ** 2)
done = lambda next_obs: next_obs[0] > 0.5
one = make_planner(cem, mc, reward, done)
split = make_planner(cem, mc, reward, done, candidate_devices=jax.devices())
keys = jax.random.split(jax.random.key(1), 2)
obs = jax.random.normal(jax.random.key(2), (2, 3))
plans = jnp.stack([one.initial_plan] * 2)
batched = lambda p: jax.jit(jax.vmap(p.plan_with_info, in_axes=(0, None, None, 0, 0)))(keys, params, norm, obs, plans)
a, b = batched(one), batched(split)
diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
jaxpr = str(jax.make_jaxpr(split.plan_with_info)(keys[0], params, norm, obs[0], plans[0]))
print(json.dumps(dict(diff=diff, shard_map="shard_map" in jaxpr)))
"""


def test_candidates_split_over_two_devices_plan_the_same(tmp_path):
    """Expectation CEM with its candidates split over 2 host devices (a subprocess: XLA_FLAGS is read
    at start-up) gives the one-device plan, returns and std, vmapped over start states as PETS
    runs it (the slow PETS test checks whole runs bit for bit)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "split.py"
    script.write_text(_CANDIDATE_SPLIT_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shard_map"]
    assert out["diff"] < 1e-5


def test_candidate_split_refuses_particles_and_indivisible_populations():
    mc, _, _ = identity_model(kind="PE", ensemble_size=5)
    two = [jax.devices()[0]] * 2  # the checks run before any device is used
    with pytest.raises(ValueError, match="only under 'expectation' propagation"):
        make_planner(small_cem(propagation="tsinf"), mc, quadratic_reward, candidate_devices=two)
    with pytest.raises(ValueError, match=r"population_size \(201\) must be a multiple of the 2"):
        make_planner(small_cem(propagation="expectation", population_size=201), mc, quadratic_reward,
                     candidate_devices=two)
    one = make_planner(small_cem(propagation="tsinf"), mc, quadratic_reward, candidate_devices=two[:1])
    assert one.config.propagation == "tsinf"  # one device: no split, any propagation
