"""SAC: replay buffer, update rules on hand-made batches, the one-scan training loop."""

import dataclasses
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.data import replay
from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.agents import sac_config
from mismatch_jax.agents import sac_loop
from mismatch_jax.data.replay import Transition
from mismatch_jax.config_io import ConfigError
from mismatch_jax.envs import registry
from jit_counts import jit_work

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = sac_config.SACConfig(
    total_env_steps=300, eval_interval=100, learning_starts=50, num_eval_episodes=2,
    buffer_capacity=1000, batch_size=16, hidden_size=32, num_hidden_layers=2,
)
EPISODE = 40  # short episodes so that the tiny run crosses several time limits


@pytest.fixture(scope="module")
def env():
    return registry.make("pendulum", episode_length=EPISODE)


@pytest.fixture(scope="module")
def tiny_train(env):
    return jax.jit(sac_loop.make_train(TINY, env))


@pytest.fixture(scope="module")
def tiny_run(tiny_train):
    keys = jax.random.split(jax.random.key(0), 2)
    return keys, tiny_train(keys[0])


def _batch(env, key, n=8):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.normal(k1, (n, env.obs_dim))
    return Transition(
        obs=obs,
        action=jax.random.uniform(k2, (n, env.action_dim), minval=-2.0, maxval=2.0),
        reward=jnp.linspace(-3.0, 0.0, n),
        next_obs=obs + 0.1 * jax.random.normal(k3, obs.shape),
        done=jnp.zeros((n,)),
    )


# --------------------------------------------------------------------------- replay buffer


@pytest.mark.unit
def test_replay_wraps_around_with_known_values():
    example = {"x": jnp.zeros(()), "v": jnp.zeros((2,))}
    buf = replay.init(example, capacity=4)
    for i in range(6):
        buf = replay.add(buf, {"x": jnp.float32(i), "v": jnp.full((2,), float(i))})
    np.testing.assert_array_equal(buf.data["x"], [4.0, 5.0, 2.0, 3.0])
    np.testing.assert_array_equal(buf.data["v"][:, 0], [4.0, 5.0, 2.0, 3.0])
    assert int(buf.position) == 2 and int(buf.size) == 4 and buf.capacity == 4

    buf = replay.add_batch(buf, {"x": jnp.array([6.0, 7.0, 8.0]), "v": jnp.zeros((3, 2))})
    np.testing.assert_array_equal(buf.data["x"], [8.0, 5.0, 6.0, 7.0])
    assert int(buf.position) == 1 and int(buf.size) == 4

    partial = replay.add_batch(replay.init(example, 5), {"x": jnp.array([1.0, 2.0]), "v": jnp.ones((2, 2))})
    assert int(partial.size) == 2 and int(partial.position) == 2
    with pytest.raises(ValueError, match="capacity"):
        replay.add_batch(replay.init(example, 2), {"x": jnp.zeros(3), "v": jnp.zeros((3, 2))})
    with pytest.raises(ValueError, match="capacity"):
        replay.init(example, 0)


@pytest.mark.unit
def test_replay_samples_only_valid_rows():
    buf = replay.init(jnp.zeros(()), capacity=10)
    for i in range(3):
        buf = replay.add(buf, jnp.float32(i + 1))
    drawn = replay.sample(jax.random.key(0), buf, 500)
    assert drawn.shape == (500,)
    assert set(np.unique(np.asarray(drawn))) == {1.0, 2.0, 3.0}


def test_replay_is_jittable_and_scannable():
    def body(buf, i):
        return replay.add(buf, i.astype(jnp.float32)), None

    buf, _ = jax.jit(lambda b: jax.lax.scan(body, b, jnp.arange(7)))(replay.init(jnp.zeros(()), 5))
    np.testing.assert_array_equal(buf.data, [5.0, 6.0, 2.0, 3.0, 4.0])


# --------------------------------------------------------------------------- update rules


@pytest.mark.unit
def test_polyak_update_known_values():
    online = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(10.0)}
    target = {"w": jnp.array([0.0, 0.0]), "b": jnp.array(0.0)}
    out = sac_lib.polyak_update(online, target, 0.1)
    np.testing.assert_allclose(out["w"], [0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 1.0, rtol=1e-6)


@pytest.mark.slow  # ~14 s; the update itself is checked jit vs no-jit in the default tier
def test_update_moves_targets_by_tau(env):
    sac = sac_lib.make_sac(TINY, env)
    state = sac.init(jax.random.key(1))
    # jitted: op-by-op the update takes ~30 s on 2 cores (jit vs eager is its own test)
    new_state, _ = jax.jit(sac.sac_update)(jax.random.key(2), state, _batch(env, jax.random.key(3)))
    expected = sac_lib.polyak_update(new_state.params.critic, state.params.target_critic, TINY.tau)
    for a, b in zip(jax.tree_util.tree_leaves(new_state.params.target_critic),
                    jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(new_state.num_updates) == 1


def _constant_critic(critic, value):
    """Zero the last layer's weights and set its bias: Q ≡ value for both critics."""
    (*hidden, (w, b)) = critic
    return tuple(hidden) + ((jnp.zeros_like(w), jnp.full_like(b, value)),)


def test_td_target_bootstraps_truncation_not_termination(env):
    sac = sac_lib.make_sac(TINY, env)
    state = sac.init(jax.random.key(4))
    params = state.params.replace(
        target_critic=_constant_critic(state.params.target_critic, 5.0),
        log_alpha=jnp.log(jnp.float32(0.5)),
    )
    batch = _batch(env, jax.random.key(5), n=4)
    # rows 0-1 terminated; rows 2-3 truncated by the time limit (stored with done = 0)
    batch = batch._replace(done=jnp.array([1.0, 1.0, 0.0, 0.0]), reward=jnp.array([-1.0, -2.0, -3.0, -4.0]))
    key = jax.random.key(6)
    target = sac.td_target(key, params, batch)
    _, next_log_prob = sac.sample_action(key, params.actor, batch.next_obs)
    expected = np.array(batch.reward) + TINY.gamma * (1 - np.array(batch.done)) * (
        5.0 - 0.5 * np.array(next_log_prob)
    )
    np.testing.assert_allclose(target, expected, rtol=1e-5)
    np.testing.assert_allclose(target[:2], [-1.0, -2.0])  # no bootstrap through termination


@pytest.mark.parametrize("target_entropy, direction", [(10.0, +1), (-10.0, -1)])
def test_entropy_tuning_direction(env, target_entropy, direction):
    """α rises when the policy's entropy is below the target and falls when above."""
    config = dataclasses.replace(TINY, target_entropy=target_entropy)
    sac = sac_lib.make_sac(config, env)
    state = sac.init(jax.random.key(7))
    new_state, metrics = sac.sac_update(jax.random.key(8), state, _batch(env, jax.random.key(9)))
    assert float(metrics.entropy) < 10.0 and float(metrics.entropy) > -10.0
    change = float(new_state.params.log_alpha - state.params.log_alpha)
    assert np.sign(change) == direction
    np.testing.assert_allclose(abs(change), TINY.alpha_lr, rtol=1e-3)  # Adam's first step = lr


@pytest.mark.unit
def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean, log_std = jnp.array([0.3, -0.2]), jnp.array([-0.5, 0.1])
    u = jnp.array([0.7, -1.9])
    std = np.exp(np.array(log_std))
    gauss = -0.5 * ((np.array(u) - np.array(mean)) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    expected = np.sum(gauss - np.log(1 - np.tanh(np.array(u)) ** 2))
    np.testing.assert_allclose(sac_lib.tanh_gaussian_log_prob(u, mean, log_std), expected, rtol=1e-5)


def test_tanh_gaussian_log_prob_equals_distrax_transformed_normal():
    """distrax (the pinned reference for distributions) gives the same density: a Normal over
    the pre-tanh sample minus the Tanh bijector's log-Jacobian, for extreme means and scales too.
    (The policy keeps its closed form: distrax's op order differs in the last ulp on about a
    quarter of the samples, which would change every SAC / MBPO number bit for bit.)"""
    import distrax

    k = jax.random.split(jax.random.key(0), 3)
    mean = 3.0 * jax.random.normal(k[0], (2000, 2))
    log_std = jax.random.uniform(k[1], (2000, 2), minval=-5.0, maxval=2.0)
    u = mean + jnp.exp(log_std) * jax.random.normal(k[2], (2000, 2))
    theirs = jnp.sum(distrax.Normal(mean, jnp.exp(log_std)).log_prob(u)
                     - distrax.Tanh().forward_log_det_jacobian(u), axis=-1)
    np.testing.assert_allclose(sac_lib.tanh_gaussian_log_prob(u, mean, log_std), theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.unit
def test_shapes_and_action_box(env):
    sac = sac_lib.make_sac(TINY, env)
    state = sac.init(jax.random.key(10))
    obs = jax.random.normal(jax.random.key(11), (7, env.obs_dim))
    action, log_prob = sac.sample_action(jax.random.key(12), state.params.actor, obs)
    assert action.shape == (7, 1) and log_prob.shape == (7,)
    assert np.all(np.abs(np.asarray(action)) <= 2.0)
    assert sac.q_apply(state.params.critic, obs, action).shape == (2, 7)
    assert sac.value(state.params, obs).shape == (4, 7)
    assert sac.value(state.params, obs, critics="online").shape == (2, 7)
    assert sac.value(state.params, obs[0], key=jax.random.key(0)).shape == (4,)
    np.testing.assert_allclose(sac.value(state.params, obs, reduce="min"),
                               sac.value(state.params, obs).min(0), rtol=1e-6)
    grad = jax.grad(lambda s: sac.value(state.params, s).sum())(obs[0])
    assert grad.shape == (env.obs_dim,) and np.all(np.isfinite(grad))
    # detached action: ∂Q(s, a)/∂s at a = π(s) fixed, the partial derivative in the state input
    action0 = sac.deterministic_action(state.params.actor, obs[0])
    partial = jax.grad(lambda s: sac.q_apply(state.params.critic, s, action0).sum())(obs[0])
    detached = jax.grad(lambda s: sac.value(state.params, s, critics="online", detach_action=True).sum())(obs[0])
    total = jax.grad(lambda s: sac.value(state.params, s, critics="online").sum())(obs[0])
    np.testing.assert_allclose(detached, partial, rtol=1e-5, atol=1e-7)
    assert not np.allclose(detached, total)  # the policy's path is gone
    np.testing.assert_array_equal(sac.value(state.params, obs, detach_action=True), sac.value(state.params, obs))
    with pytest.raises(ValueError, match="critics"):
        sac.value(state.params, obs, critics="both")
    with pytest.raises(ValueError, match="reduce"):
        sac.value(state.params, obs, reduce="mean")
    # a saturated policy maps to the box edges
    big = sac_lib.SACParams(actor=_constant_critic(state.params.actor, 50.0), critic=state.params.critic,
                            target_critic=state.params.target_critic, log_alpha=state.params.log_alpha)
    np.testing.assert_allclose(sac.deterministic_action(big.actor, obs), 2.0)


def test_update_jit_equals_no_jit(env):
    sac = sac_lib.make_sac(TINY, env)
    state = sac.init(jax.random.key(13))
    batch = _batch(env, jax.random.key(14))
    eager, m1 = sac.sac_update(jax.random.key(15), state, batch)
    jitted, m2 = jax.jit(sac.sac_update)(jax.random.key(15), state, batch)
    for a, b in zip(jax.tree_util.tree_leaves((eager, m1)), jax.tree_util.tree_leaves((jitted, m2))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jitted_update_does_not_retrace_on_new_batches(env):
    """A jitted update fed its own output state, a new key and a batch with new values runs the
    program it already has: no trace, lowering or compile — and uses the new values."""
    sac = sac_lib.make_sac(TINY, env)
    traces = []

    def update(key, state, batch):
        traces.append(1)
        return sac.sac_update(key, state, batch)

    jitted = jax.jit(update)
    state0 = sac.init(jax.random.key(16))
    batch1, batch2 = _batch(env, jax.random.key(17)), _batch(env, jax.random.key(18))
    batch2 = batch2._replace(done=jnp.ones_like(batch2.done), reward=batch2.reward + 1.0)
    key1, key2 = jax.random.key(19), jax.random.key(20)
    with jit_work() as first:
        state1, m1 = jax.block_until_ready(jitted(key1, state0, batch1))
    with jit_work() as second:
        state2, m2 = jax.block_until_ready(jitted(key2, state1, batch2))
    assert first["trace"] >= 1 and first["lower"] >= 1  # the counter sees this program
    assert len(traces) == 1 and sum(second.values()) == 0, dict(second)
    assert int(state1.num_updates) == 1 and int(state2.num_updates) == 2
    assert np.isfinite(m2.critic_loss) and np.isfinite(m2.actor_loss)
    # The batch and the key are arguments, not constants baked into the program.
    _, same_state_old_batch = jitted(key2, state1, batch1)
    _, same_state_old_key = jitted(key1, state1, batch2)
    assert float(same_state_old_batch.critic_loss) != float(m2.critic_loss)
    assert float(same_state_old_key.entropy) != float(m2.entropy)
    assert len(traces) == 1


# --------------------------------------------------------------------------- training loop


def test_tiny_run_shapes_metrics_and_stored_transitions(env, tiny_run):
    _, (final, metrics) = tiny_run
    num_evals = TINY.total_env_steps // TINY.eval_interval
    for leaf in jax.tree_util.tree_leaves(metrics):
        assert leaf.shape == (num_evals,)
    np.testing.assert_array_equal(metrics.env_steps, [100, 200, 300])
    # updates start once learning_starts transitions are stored
    np.testing.assert_array_equal(metrics.num_updates, [51, 100, 100])
    assert int(final.sac.num_updates) == 251
    for name in ("eval_return", "train_return", "critic_loss", "actor_loss", "alpha", "entropy", "q_mean"):
        assert np.all(np.isfinite(getattr(metrics, name))), name
    assert np.all(np.asarray(metrics.eval_return) <= 0.0)

    data = jax.tree_util.tree_map(lambda x: np.asarray(x[: TINY.total_env_steps]), final.buffer.data)
    assert int(final.buffer.size) == TINY.total_env_steps
    np.testing.assert_array_equal(data.done, 0.0)  # Pendulum never terminates: truncation only
    # every stored transition follows the true dynamics, including the last step before a reset
    step = jax.vmap(lambda o, a: env.step(env.state_from_obs(o), a).obs)
    np.testing.assert_allclose(step(data.obs, data.action), data.next_obs, atol=1e-4)
    # the environment was reset exactly at the time limits
    breaks = np.nonzero(np.abs(data.next_obs[:-1] - data.obs[1:]).max(-1) > 1e-5)[0]
    np.testing.assert_array_equal(breaks, np.arange(EPISODE - 1, TINY.total_env_steps - 1, EPISODE))
    # train_return averages the episodes that ended in each interval
    rewards = np.asarray(data.reward)[:280].reshape(-1, EPISODE).sum(-1)  # the 7 full episodes
    np.testing.assert_allclose(metrics.train_return[0], rewards[:2].mean(), rtol=1e-4)


def test_vmap_over_seeds_equals_single_runs(env, tiny_train, tiny_run):
    keys, (_, single0) = tiny_run
    _, batched = jax.jit(jax.vmap(sac_loop.make_train(TINY, env)))(keys)
    _, single1 = tiny_train(keys[1])
    for name in ("eval_return", "critic_loss", "alpha", "entropy"):
        np.testing.assert_allclose(getattr(batched, name)[0], getattr(single0, name), rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(getattr(batched, name)[1], getattr(single1, name), rtol=2e-3, atol=1e-3)
    assert not np.allclose(batched.eval_return[0], batched.eval_return[1])


# --------------------------------------------------------------------------- hyper-parameters

SWEEP = sac_config.SACConfig(
    total_env_steps=200, eval_interval=100, learning_starts=50, num_eval_episodes=1,
    buffer_capacity=200, batch_size=16, hidden_size=16, num_hidden_layers=2,
)
LRS = (1e-4, 3e-4, 1e-3, 3e-3)


def _lr_hparams(env, lrs):
    """[len(lrs)] SACHParams: the SWEEP defaults with actor, critic and alpha rates = lrs."""
    lrs = jnp.asarray(lrs, jnp.float32)
    base = sac_config.SACHParams.from_config(SWEEP, env.action_dim).broadcast(lrs.shape[0])
    return base.replace(actor_lr=lrs, critic_lr=lrs, alpha_lr=lrs)


def test_hparams_defaults_come_from_the_config(env):
    config = dataclasses.replace(TINY, actor_lr=1e-3, tau=0.01, init_alpha=0.5)
    hp = sac_config.SACHParams.from_config(config, env.action_dim)
    for leaf in jax.tree_util.tree_leaves(hp):
        assert leaf.shape == () and leaf.dtype == jnp.float32
    np.testing.assert_array_equal(
        [hp.actor_lr, hp.critic_lr, hp.gamma, hp.tau, hp.init_alpha, hp.target_entropy],
        np.float32([1e-3, 3e-4, 0.99, 0.01, 0.5, -1.0]))  # target_entropy None → −action_dim
    sac = sac_lib.make_sac(config, env)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, sac.hparams, hp))
    np.testing.assert_allclose(sac.init(jax.random.key(0)).params.log_alpha, math.log(0.5), rtol=1e-6)
    stacked = hp.broadcast(3)
    assert all(leaf.shape == (3,) for leaf in jax.tree_util.tree_leaves(stacked))
    with pytest.raises(TypeError, match="SACHParams"):
        sac.init(jax.random.key(0), {"actor_lr": 1e-3})


@pytest.mark.slow  # ~36 s; the default tier keeps MBPO's rate-sweep trace test (same mechanism)
def test_lr_sweep_of_4_seeds_by_4_rates_compiles_once_and_equals_separate_runs(env):
    train = sac_loop.make_train(SWEEP, env)
    keys = jax.random.split(jax.random.key(20), 4)

    def sweep(keys, hparams):  # [lrs, seeds]
        return jax.vmap(jax.vmap(train, in_axes=(0, None)), in_axes=(None, 0))(keys, hparams)

    sweep = jax.jit(sweep)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            _, metrics = sweep(keys, _lr_hparams(env, LRS))
            _, other = sweep(keys, _lr_hparams(env, [2e-4, 5e-4, 2e-3, 5e-3]))  # new rates, same program
            jax.block_until_ready((metrics, other))
    finally:
        logger.removeHandler(handler)
    compiles = [r for r in records if "Finished XLA compilation of jit(sweep)" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
    assert metrics.eval_return.shape == (4, 4, 2) and other.eval_return.shape == (4, 4, 2)
    assert not np.allclose(metrics.critic_loss, other.critic_loss)
    assert len({float(v) for v in np.asarray(metrics.critic_loss[:, 0, -1])}) == 4  # the rates matter

    # (lr, seed) cells equal separate single runs with those hparams (one more compile:
    # the hparams are a traced argument of the single run too).
    single = jax.jit(train)
    for i, j in ((0, 0), (1, 3), (2, 1), (3, 2)):  # every rate and every seed once (a Latin square's row)
        hp = jax.tree_util.tree_map(lambda v: v[i], _lr_hparams(env, LRS))
        _, cell = single(keys[j], hp)
        for name in ("eval_return", "critic_loss", "actor_loss", "alpha", "q_mean"):
            np.testing.assert_allclose(getattr(metrics, name)[i, j], getattr(cell, name), rtol=1e-5,
                                       atol=1e-5, err_msg=f"{name} lr={LRS[i]} seed={j}")

    # hparams=None means the config's numbers: a config with lr 1e-3 resolves to the hparams of
    # cell 2 (the resolution is the whole None path, so no extra compile is needed to check it).
    config = dataclasses.replace(SWEEP, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3)
    from_config = sac_config.SACHParams.from_config(config, env.action_dim)
    cell_two = jax.tree_util.tree_map(lambda v: v[2], _lr_hparams(env, LRS))
    for field in ("actor_lr", "critic_lr", "alpha_lr", "gamma", "tau", "init_alpha", "target_entropy"):
        np.testing.assert_array_equal(getattr(from_config, field), getattr(cell_two, field), err_msg=field)
    defaults = sac_lib.make_sac(config, env).hparams  # what train(key, None) resolves None to
    assert all(bool(a == b) for a, b in zip(jax.tree_util.tree_leaves(defaults), jax.tree_util.tree_leaves(from_config)))


# --------------------------------------------------------------------------- config


@pytest.mark.unit
def test_config_loading_is_strict(tmp_path):
    config = sac_config.load_sac_config(ROOT / "sweeps" / "sac_pendulum.toml")
    assert config.env == "pendulum" and config.num_seeds == 5
    assert config.total_env_steps % config.eval_interval == 0
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        sac_config.sac_config_from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        sac_config.sac_config_from_dict({"batch_size": 2.5})
    with pytest.raises(ConfigError, match="multiple of eval_interval"):
        sac_config.sac_config_from_dict({"total_env_steps": 1500, "eval_interval": 1000})
    with pytest.raises(ConfigError, match="tau"):
        sac_config.sac_config_from_dict({"tau": 0.0})
    bad = tmp_path / "bad.toml"
    bad.write_text("gamma = 1.5\n")
    with pytest.raises(ConfigError, match="gamma"):
        sac_config.load_sac_config(bad)
    assert sac_config.seed_keys(config).shape == (5,)


# --------------------------------------------------------------------------- acceptance (slow)


@pytest.mark.slow
def test_sac_solves_pendulum_five_seeds_in_one_vmapped_call():
    config = sac_config.load_sac_config(ROOT / "sweeps" / "sac_pendulum.toml")
    env = sac_config.make_env(config)
    train = jax.jit(jax.vmap(sac_loop.make_train(config, env)))
    _, metrics = train(sac_config.seed_keys(config))
    final = np.asarray(metrics.eval_return[:, -1])
    assert final.shape == (5,)
    assert final.mean() > -200.0, final
