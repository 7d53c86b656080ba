"""MBPO and its decision-aware variants: schedules, model-buffer helpers, config strictness, the
smallest whole run (default tier) and tiny whole runs (slow: shapes, schedule values written into
the metrics, vmapped seeds = single runs)."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.agents import mbpo
from mismatch_jax.agents import mbpo_config
from mismatch_jax.data import replay
from mismatch_jax.agents import sac_config
from mismatch_jax.config_io import ConfigError
from mismatch_jax.envs import registry
from mismatch_jax.experiments import mbpo_compare
from mismatch_jax.models import core as models

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = mbpo_config.MBPOConfig(
    sac=sac_config.SACConfig(total_env_steps=400, eval_interval=200, learning_starts=100, num_eval_episodes=1,
                          buffer_capacity=400, batch_size=16, hidden_size=16, updates_per_step=2),
    model=models.ModelConfig(kind="PE", ensemble_size=2, hidden_size=16, num_hidden_layers=2, angle_features=True),
    model_training=mbpo_config.ModelTraining(batch_size=32, num_epochs=2),
    model_train_freq=50, epoch_length=100, rollout_batch_size=8, rollout_schedule=(1, 3, 1, 3),
    model_share_ramp_epochs=2.0, classifier_hidden_size=16, classifier_steps=3, classifier_batch_size=16,
)
EPISODE = 40


@pytest.fixture(scope="module")
def env():
    return registry.make("pendulum", episode_length=EPISODE)


@pytest.fixture(scope="module")
def tiny(env):
    return mbpo.make_mbpo(TINY, env)


@pytest.fixture(scope="module")
def tiny_vmapped(tiny):
    keys = jax.random.split(jax.random.key(0), 2)
    return keys, jax.jit(jax.vmap(tiny.train))(keys)


# --------------------------------------------------------------------------- schedules


def test_rollout_length_schedule_known_values():
    config = dataclasses.replace(TINY, epoch_length=1000, rollout_schedule=(20, 100, 1, 15))
    steps = [0, 19_999, 20_000, 60_000, 99_000, 100_000, 500_000]
    got = [int(mbpo_config.rollout_length(config, s)) for s in steps]
    # MBPO: 1 until epoch 20, then 1 + (epoch − 20)/80 · 14 floored, 15 from epoch 100 on.
    assert got == [1, 1, 1, 8, 14, 15, 15]
    assert config.max_rollout_length == 15


def test_model_share_schedule_known_values():
    config = dataclasses.replace(TINY, epoch_length=1000, model_share_start=0.0, model_share_end=0.95,
                                 model_share_ramp_epochs=40.0)
    got = [float(mbpo_config.model_share(config, s)) for s in (0, 10_000, 20_000, 40_000, 80_000)]
    np.testing.assert_allclose(got, [0.0, 0.2375, 0.475, 0.95, 0.95], rtol=1e-6)
    fixed = dataclasses.replace(config, model_share_start=0.95)
    np.testing.assert_allclose([float(mbpo_config.model_share(fixed, s)) for s in (0, 5_000)], [0.95, 0.95], rtol=1e-6)


# --------------------------------------------------------------------------- model buffer


def test_add_valid_writes_only_valid_rows_in_order_and_wraps():
    buffer = replay.init(jnp.zeros(()), 5)
    buffer = replay.add_valid(buffer, jnp.arange(1.0, 5.0), jnp.asarray([True, False, True, True]))
    np.testing.assert_array_equal(buffer.data, [1, 3, 4, 0, 0])
    assert int(buffer.position) == 3 and int(buffer.size) == 3
    buffer = replay.add_valid(buffer, jnp.asarray([10.0, 11.0, 12.0, 13.0]), jnp.asarray([True, True, True, False]))
    np.testing.assert_array_equal(buffer.data, [12, 3, 4, 10, 11])  # wrapped; the invalid 13 dropped
    assert int(buffer.position) == 1 and int(buffer.size) == 5


def test_sample_recent_draws_only_the_newest_rows():
    buffer = replay.init(jnp.zeros(()), 6)
    buffer = replay.add_batch(buffer, jnp.arange(6.0))
    buffer = replay.add_batch(buffer, jnp.arange(6.0, 8.0))  # rows hold 6, 7, 2, 3, 4, 5; newest 7, 6, 5
    draws = replay.sample_recent(jax.random.key(0), buffer, 200, 3)
    assert set(np.asarray(draws).tolist()) == {5.0, 6.0, 7.0}
    everything = replay.sample_recent(jax.random.key(1), buffer, 400, 100)  # capped at size
    assert set(np.asarray(everything).tolist()) == set(range(2, 8))


def test_model_step_samples_with_mle_and_mnm_and_uses_the_mean_otherwise(env):
    """MnM's classifier rows and rollouts come from model_step: a P model's sample, not its mean
    (Eq. 4's s′ ~ q); the value-aware losses do not train the variance and use the mean."""
    obs = jax.random.normal(jax.random.key(1), (6, 3))
    action = jnp.zeros((6, 1))
    for loss, noisy in (("mle", True), ("mnm", True), ("vagram", False)):
        pieces = mbpo.make_mbpo(dataclasses.replace(TINY, model_loss=loss, model=dataclasses.replace(TINY.model, kind="P", ensemble_size=1)), env)
        params = models.init(jax.random.key(2), pieces.model_config)
        normalizer = models.identity_normalizer(pieces.model_config)
        nxt, reward = jax.jit(pieces.model_step)(jax.random.key(4), params, normalizer, obs, action)
        mean, _ = models.predict(pieces.model_config, params, normalizer, obs, action)
        assert nxt.shape == (6, 3) and reward.shape == (6,)
        assert np.allclose(nxt, mean[0, :, :3]) != noisy
        if not noisy:
            np.testing.assert_allclose(reward, mean[0, :, 3], rtol=1e-6)


# --------------------------------------------------------------------------- config


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*rollout_len"):
        mbpo_config.mbpo_config_from_dict({"rollout_len": 3})
    with pytest.raises(ConfigError, match="sac.batch_size: expected an integer"):
        mbpo_config.mbpo_config_from_dict({"sac": {"batch_size": 2.5}})
    with pytest.raises(ConfigError, match="model_loss"):
        mbpo_config.mbpo_config_from_dict({"model_loss": "vaml"})
    with pytest.raises(ConfigError, match="eval_interval.*multiple of model_train_freq"):
        mbpo_config.mbpo_config_from_dict({"model_train_freq": 300})
    with pytest.raises(ConfigError, match="rollout_schedule"):
        mbpo_config.mbpo_config_from_dict({"rollout_schedule": [5, 5, 1, 1]})
    with pytest.raises(ConfigError, match=r"mbpo: MBPOConfig.model_share_end must be in \[0, 1\]"):
        mbpo_compare.compare_config_from_dict({"mbpo": {"model_share_end": 1.5}})
    with pytest.raises(ConfigError, match="agents"):
        mbpo_compare.compare_config_from_dict({"agents": ["mbpo", "dreamer"]})
    bad = tmp_path / "bad.toml"
    bad.write_text("[mbpo.sac]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="mbpo.sac.learning_rate"):
        mbpo_compare.load_compare_config(bad)
    with pytest.raises(ValueError, match="unknown agent"):
        mbpo_config.agent_config("dreamer", TINY)


def test_packaged_configs_load():
    names = ("mbpo_pendulum", "mbpo_pendulum_quick", "vagram_distractors_cpu", "mnm_pendulum_cpu", "mnm_distractors_cpu", "mnm_fig4_halfcheetah",
             "mnm_fig4_hopper", "vagram_hopper")
    for name in names:
        config = mbpo_compare.load_compare_config(ROOT / "sweeps" / f"{name}.toml")
        for agent in config.agents:
            assert mbpo_config.agent_config(agent, config.mbpo).model_loss in ("mle", "vagram", "mnm")
    assert mbpo_config.agent_config("mnm", TINY).augmented_reward and not mbpo_config.agent_config("mnm_approx", TINY).augmented_reward


# --------------------------------------------------------------------------- hyper-parameters


def _sweep(train):
    """[hparams, seeds] sweep of ``train(key, hparams)`` (the hparams leaves [n])."""
    return jax.vmap(jax.vmap(train, in_axes=(0, None)), in_axes=(None, 0))


def _rate_sweep(hp: mbpo_config.MBPOHParams) -> mbpo_config.MBPOHParams:
    """[2] hparams: the defaults with two model, critic and classifier rates."""
    two = hp.broadcast(2)
    return two.replace(model_lr=jnp.asarray([1e-3, 1e-2]), classifier_lr=jnp.asarray([3e-4, 3e-3]),
                       sac=two.sac.replace(critic_lr=jnp.asarray([3e-4, 1e-3])))


def test_hparams_defaults_come_from_the_config_and_a_rate_sweep_traces(env):
    config = mbpo_config.agent_config("mnm", dataclasses.replace(
        TINY, model_training=dataclasses.replace(TINY.model_training, learning_rate=2e-3, weight_decay=1e-4)))
    pieces = mbpo.make_mbpo(config, env)
    hp = pieces.hparams
    np.testing.assert_array_equal([hp.model_lr, hp.model_weight_decay, hp.model_mse_weight, hp.classifier_lr],
                                  np.float32([2e-3, 1e-4, 0.0, 3e-4]))
    np.testing.assert_array_equal(hp.sac.actor_lr, np.float32(TINY.sac.actor_lr))
    assert all(leaf.shape == () and leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(hp))
    # Tracing only (no XLA compile): the rates are traced all the way into the model trainer and
    # the classifier (MnM), so a [2 rates, 2 seeds] sweep is one program.
    keys = jax.random.split(jax.random.key(0), 2)
    state, metrics = jax.eval_shape(_sweep(pieces.train), keys, _rate_sweep(hp))
    num_evals = TINY.sac.total_env_steps // TINY.sac.eval_interval
    assert metrics.eval_return.shape == metrics.classifier_loss.shape == (2, 2, num_evals)
    with pytest.raises(TypeError, match="MBPOHParams"):
        pieces.train(keys[0], hp.sac)


@pytest.mark.slow
def test_rate_sweep_cells_equal_single_runs(tiny):
    keys = jax.random.split(jax.random.key(0), 2)
    sweep = _rate_sweep(tiny.hparams)
    _, batched = jax.jit(_sweep(tiny.train))(keys, sweep)
    _, single = jax.jit(tiny.train)(keys[1], jax.tree_util.tree_map(lambda v: v[1], sweep))
    for name in ("eval_return", "critic_loss", "alpha", "model_val_mse", "rollout_rows"):
        np.testing.assert_allclose(getattr(batched, name)[1, 1], getattr(single, name), rtol=2e-3, atol=1e-3,
                                   err_msg=name)
    assert not np.allclose(batched.model_val_mse[0], batched.model_val_mse[1])


# --------------------------------------------------------------------------- whole run
# A whole run compiles SAC, the model trainer, rollouts and evaluation into one program (~1 min
# on 2 idle cores, several under load), so these tests are marked slow — except the smallest run
# below (one-layer nets, 1 model epoch, 2 intervals of 2 phases: ~40 s on 2 cores), which keeps a
# whole MBPO run with model phases, rollouts and SAC updates in the default tier.

SMALLEST = mbpo_config.MBPOConfig(
    sac=sac_config.SACConfig(total_env_steps=200, eval_interval=100, learning_starts=50, num_eval_episodes=1,
                          buffer_capacity=200, batch_size=16, hidden_size=16, num_hidden_layers=1, num_seeds=2),
    model=models.ModelConfig(kind="PE", ensemble_size=2, hidden_size=8, num_hidden_layers=1, angle_features=True),
    model_training=mbpo_config.ModelTraining(batch_size=32, num_epochs=1),
    model_train_freq=50, epoch_length=100, rollout_batch_size=8, rollout_schedule=(0, 1, 1, 2),
    model_share_start=0.5, model_share_end=0.5,
)


def test_smallest_vmapped_run_trains_model_rolls_out_and_updates(env):
    """Two seeds of the smallest MBPO run in one program: model phases at 50, 100 and 150 env
    steps (none before learning_starts), rollouts of the scheduled length into the model buffer,
    one SAC update per step from step 50 on half-model batches, finite losses, distinct seeds."""
    train = mbpo.make_agent("mbpo", SMALLEST, env)
    keys = mbpo.seed_keys(SMALLEST)
    assert keys.shape == (2,)
    state, metrics = jax.jit(jax.vmap(train))(keys)
    for field in dataclasses.fields(metrics):
        assert getattr(metrics, field.name).shape == (2, 2), field.name
    np.testing.assert_array_equal(metrics.env_steps, [[100, 200]] * 2)
    np.testing.assert_array_equal(state.env_steps, [200, 200])
    np.testing.assert_array_equal(state.real.size, [200, 200])
    np.testing.assert_array_equal(metrics.num_updates, [[50, 100]] * 2)
    np.testing.assert_allclose(metrics.model_share, [[0.5, 0.5]] * 2)
    np.testing.assert_array_equal(metrics.model_epochs, [[1, 1]] * 2)
    # last phase of each interval at 50 / 150 env steps: epochs 0.5 / 1.5 → lengths 1 / 2;
    # Pendulum never terminates, so every rollout step of the 8 rollouts is written
    np.testing.assert_array_equal(metrics.rollout_length, [[1, 2]] * 2)
    np.testing.assert_array_equal(metrics.rollout_rows, [[8, 16]] * 2)
    # model buffer: 8 rollouts · 2 steps · 2 phases per epoch = 32 rows; 8 + 16 + 16 = 40 written
    assert state.model_buffer.data.obs.shape == (2, 32, env.obs_dim)
    np.testing.assert_array_equal(state.model_buffer.size, [32, 32])
    np.testing.assert_array_equal(state.model_buffer.position, [40 % 32] * 2)
    assert np.isfinite(state.model_buffer.data.next_obs).all() and np.isfinite(state.model_buffer.data.reward).all()
    for name in ("eval_return", "train_return", "critic_loss", "actor_loss", "alpha", "q_mean", "model_val_mse",
                 "model_train_loss"):
        assert np.isfinite(getattr(metrics, name)).all(), name
    assert np.isnan(metrics.classifier_loss).all()
    assert not np.allclose(state.normalizer.input_std, 1.0)  # the trainer's normaliser replaced the identity
    assert (metrics.alpha != 1.0).all()  # the temperature moved: SAC updates ran (init_alpha = 1)
    assert not np.allclose(metrics.eval_return[0], metrics.eval_return[1])
    assert not np.allclose(state.model_params.layers[0][0][0], state.model_params.layers[0][0][1])
    assert not np.allclose(state.sac.params.actor[0][0][0], state.sac.params.actor[0][0][1])


@pytest.mark.slow
def test_tiny_run_shapes_and_schedule_metrics(tiny, tiny_vmapped):
    keys, (state, metrics) = tiny_vmapped
    num_evals = TINY.sac.total_env_steps // TINY.sac.eval_interval
    for field in dataclasses.fields(metrics):
        assert getattr(metrics, field.name).shape == (2, num_evals), field.name
    np.testing.assert_array_equal(metrics.env_steps, [[200, 400]] * 2)
    np.testing.assert_allclose(metrics.model_share, [[0.95, 0.95]] * 2)
    # last phase of each interval starts at 150 / 350 env steps: epochs 1.5 / 3.5 → lengths 1 / 3
    np.testing.assert_array_equal(metrics.rollout_length, [[1, 3]] * 2)
    # Pendulum never terminates: every rollout step is written
    np.testing.assert_array_equal(metrics.rollout_rows, [[8, 24]] * 2)
    np.testing.assert_array_equal(metrics.model_epochs, [[2, 2]] * 2)
    # updates from step 100 on: 100 steps in the first interval, 200 in the second
    np.testing.assert_array_equal(metrics.num_updates, [[100, 200]] * 2)
    assert np.isnan(metrics.classifier_loss).all()
    for name in ("eval_return", "critic_loss", "q_mean", "model_val_mse", "model_train_loss"):
        assert np.isfinite(getattr(metrics, name)).all(), name
    np.testing.assert_array_equal(state.real.size, [400, 400])
    # capacity: 8 rollouts · 3 steps · 2 phases per epoch · 1 retained epoch; 96 rows were written
    assert tiny.model_buffer_capacity == 8 * 3 * 2 * 1
    np.testing.assert_array_equal(state.model_buffer.size, [48, 48])
    np.testing.assert_array_equal(state.model_buffer.position, [96 % 48] * 2)
    assert not np.allclose(metrics.eval_return[0], metrics.eval_return[1])


@pytest.mark.slow
def test_vmapped_seeds_equal_single_runs(tiny, tiny_vmapped):
    keys, (_, batched) = tiny_vmapped
    _, single = jax.jit(tiny.train)(keys[1])
    for name in ("eval_return", "critic_loss", "alpha", "model_val_mse", "rollout_rows"):
        np.testing.assert_allclose(getattr(batched, name)[1], getattr(single, name), rtol=2e-3, atol=1e-3,
                                   err_msg=name)


@pytest.mark.slow
def test_jit_equals_no_jit_and_mnm_runs(env):
    config = mbpo_config.agent_config("mnm", TINY)
    train = mbpo.make_train(config, env)
    _, jitted = jax.jit(train)(jax.random.key(5))
    _, eager = train(jax.random.key(5))  # the scans compile their bodies, the glue runs eagerly
    for name in ("eval_return", "critic_loss", "classifier_loss", "model_train_loss"):
        np.testing.assert_allclose(getattr(jitted, name), getattr(eager, name), rtol=2e-3, atol=1e-3, err_msg=name)
    assert np.isfinite(jitted.classifier_loss).all()


@pytest.mark.slow
def test_main_mbpo_writes_json_and_png(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        'agents = ["mbpo", "vagram"]\n[mbpo]\nmodel_train_freq = 50\nepoch_length = 100\nrollout_batch_size = 8\n'
        '[mbpo.model]\nensemble_size = 2\nhidden_size = 16\n[mbpo.model_training]\nnum_epochs = 1\n'
        '[mbpo.sac]\ntotal_env_steps = 200\neval_interval = 100\nlearning_starts = 50\nnum_eval_episodes = 1\n'
        'buffer_capacity = 200\nbatch_size = 16\nhidden_size = 16\nnum_seeds = 2\n')
    from mismatch_jax import cli

    assert cli.main(["mbpo", str(config), "--out", str(tmp_path / "out")]) == 0
    import json

    summary = json.loads((tmp_path / "out" / "mbpo_compare.json").read_text())
    assert [a["agent"] for a in summary["agents"]] == ["mbpo", "vagram"]
    assert np.asarray(summary["agents"][1]["eval_return"]).shape == (2, 2)
    assert (tmp_path / "out" / "mbpo_compare.png").stat().st_size > 0


@pytest.mark.slow  # two processes, two compiles (~1 min)
def test_mbpo_seeds_sharded_over_two_host_devices_equal_one_device(tmp_path):
    import json
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(
        'agents = ["mbpo"]\n[mbpo]\nmodel_train_freq = 50\nepoch_length = 100\nrollout_batch_size = 8\n'
        '[mbpo.model]\nensemble_size = 2\nhidden_size = 16\n[mbpo.model_training]\nnum_epochs = 1\n'
        '[mbpo.sac]\ntotal_env_steps = 200\neval_interval = 100\nlearning_starts = 50\nnum_eval_episodes = 1\n'
        'buffer_capacity = 200\nbatch_size = 16\nhidden_size = 16\nnum_seeds = 2\n')
    returns = []
    for devices in ("1", "2"):
        out = tmp_path / f"out{devices}"
        done = subprocess.run([sys.executable, "-m", "mismatch_jax.cli", "mbpo", str(config), "--out", str(out),
                               "--devices", devices], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        agent = json.loads((out / "mbpo_compare.json").read_text())["agents"][0]
        assert agent["seed_devices"] == int(devices)
        returns.append(agent["eval_return"])
    np.testing.assert_allclose(returns[1], returns[0], rtol=1e-3, atol=1e-2)


# --------------------------------------------------------------------------- VaGraM options


def _filled_state(pieces, env, rows=100):
    """A fresh MBPO state whose real buffer holds ``rows`` random Pendulum-shaped transitions."""
    ts = pieces.init(jax.random.key(21), jax.random.key(22))
    k = jax.random.split(jax.random.key(23), 3)
    obs = jax.random.normal(k[0], (rows, env.obs_dim))
    action = jax.random.uniform(k[1], (rows, env.action_dim), minval=-2.0, maxval=2.0)
    items = replay.Transition(obs=obs, action=action, reward=-jnp.sum(obs**2, -1),
                              next_obs=obs + 0.1 * jax.random.normal(k[2], obs.shape), done=jnp.zeros(rows))
    return ts.replace(real=replay.add_batch(ts.real, items))


@pytest.mark.slow  # seven compiled model phases (~1 min)
def test_vagram_options_reach_the_model_phase(env):
    """One VaGraM model phase from the same state and key: the MSE warm-up changes it inside its
    epochs only; the clip scope, the action gradient, the critic reduction and the released
    code's gradient scale and output mean each change it."""
    base = dataclasses.replace(SMALLEST, model_loss="vagram",
                               model_training=dataclasses.replace(SMALLEST.model_training, num_epochs=4))

    def phase(env_steps, **vagram):
        config = dataclasses.replace(base, vagram=dataclasses.replace(base.vagram, **vagram))
        pieces = mbpo.make_mbpo(config, env)
        ts, metrics = jax.jit(pieces.model_phase)(jax.random.key(24), _filled_state(pieces, env),
                                                 jnp.asarray(env_steps, jnp.int32))
        flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ts.model_params)])
        return flat, float(metrics.model_train_loss)

    default_in, loss_in = phase(50)
    default_after, _ = phase(100)
    no_warmup_in, loss_no_warmup = phase(50, mse_warmup_epochs=0)
    no_warmup_after, _ = phase(100, mse_warmup_epochs=0)
    assert not np.allclose(default_in, no_warmup_in) and loss_in > loss_no_warmup  # + MSE in epoch 0
    np.testing.assert_array_equal(default_after, no_warmup_after)  # epoch 1: no warm-up either way
    for option in ({"clip_scope": "buffer"}, {"action_gradient": "through_policy"}, {"critic_reduce": "mean"},
                   {"gradient_scale": "running_mean"}, {"output_reduce": "mean"}):
        changed, _ = phase(100, **option)
        assert np.abs(changed - default_after).max() > 1e-4, option


def test_vagram_and_value_weighted_options_are_strict():
    config = mbpo_config.mbpo_config_from_dict({"vagram": {"clip_scope": "minibatch", "mse_warmup_epochs": 2},
                                                "value_weighted": {"direction": "proportional"}})
    assert config.vagram.clip_scope == "minibatch" and config.vagram.mse_warmup_epochs == 2
    assert config.value_weighted.direction == "proportional"
    defaults = mbpo_config.MBPOConfig().vagram
    assert (defaults.clip_scope, defaults.action_gradient, defaults.critic_reduce, defaults.mse_warmup_epochs) == \
        ("minibatch", "detached", "sum", 1)
    with pytest.raises(ConfigError, match="vagram.clip_scope"):
        mbpo_config.mbpo_config_from_dict({"vagram": {"clip_scope": "batch"}})
    with pytest.raises(ConfigError, match="value_weighted.direction"):
        mbpo_config.mbpo_config_from_dict({"value_weighted": {"direction": "up"}})
    with pytest.raises(ConfigError, match="vagram_clip_percentile"):
        mbpo_config.mbpo_config_from_dict({"vagram_clip_percentile": 95.0})


# --------------------------------------------------------------------------- MnM


def test_mnm_batch_reward_balance_and_rows():
    """Eq. 3's balance, the classifier's logit on model rows only (real rows keep the reward part
    on the same scale), and the earlier unit balance on every row as options."""
    reward = jnp.asarray([-2.0, -1.0, -4.0])
    logits = jnp.asarray([0.5, -1.5, 2.0])
    from_model = jnp.asarray([True, False, True])
    got = mbpo.mnm_batch_reward(TINY, reward, logits, from_model, 0.99)
    want = 0.01 * np.asarray(reward) + np.asarray([0.5, 0.0, 2.0]) - 0.01 * np.log(0.01)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    old = dataclasses.replace(TINY, mnm_reward_balance="unit", mnm_classifier_rows="all")
    np.testing.assert_allclose(mbpo.mnm_batch_reward(old, reward, logits, from_model, 0.99), reward + logits)


@pytest.mark.slow  # three compiled MnM model phases (~22 s); the trainer's context_step is tested by default
def test_mnm_phase_alternates_classifier_and_model_and_logs_log_ratios(env):
    """An MnM model phase with k = 1 classifier step per model step ends with a different
    classifier than one whose classifier is frozen during the phase (k = 0), from the same state
    and key; both report a finite classifier loss and mean logits on real and model rows."""
    base = dataclasses.replace(SMALLEST, model_loss="mnm", classifier_steps=2, classifier_hidden_size=8,
                               classifier_batch_size=16, mnm_mle_warmup_epochs=0)  # Eq. 9 from the start

    def phase(k):
        config = dataclasses.replace(base, classifier_steps_per_model_step=k)
        pieces = mbpo.make_mbpo(config, env)
        return jax.jit(pieces.model_phase)(jax.random.key(31), _filled_state(pieces, env), jnp.asarray(60, jnp.int32))

    leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    alternating, alt_metrics = phase(1)
    frozen, frozen_metrics = phase(0)
    base = dataclasses.replace(base, mnm_value_clip="data_range")  # V sees the buffer's state box
    clipped, clipped_metrics = phase(1)
    assert np.isfinite(float(clipped_metrics.model_train_loss))
    assert np.abs(leaves(clipped.model_params) - leaves(alternating.model_params)).max() > 0
    assert np.abs(leaves(alternating.classifier) - leaves(frozen.classifier)).max() > 1e-4
    assert int(alternating.classifier_opt_state[0].count) > int(frozen.classifier_opt_state[0].count) == 2
    for metrics in (alt_metrics, frozen_metrics):
        for name in ("classifier_loss", "classifier_logit_real", "classifier_logit_model"):
            assert np.isfinite(float(getattr(metrics, name))), name


# --------------------------------------------------------------------------- GPU-size configs


def shrunk(config: mbpo_config.MBPOConfig) -> mbpo_config.MBPOConfig:
    """A paper-size config at tiny size: same env, agent losses and options, every size cut."""
    sac = dataclasses.replace(config.sac, total_env_steps=20, eval_interval=10, learning_starts=10,
                              buffer_capacity=20, batch_size=8, updates_per_step=1, hidden_size=8,
                              num_eval_episodes=1, num_seeds=1)
    return dataclasses.replace(
        config, sac=sac, model=dataclasses.replace(config.model, ensemble_size=2, hidden_size=8, num_hidden_layers=1),
        model_training=dataclasses.replace(config.model_training, num_epochs=1, batch_size=8),
        model_train_freq=10, epoch_length=10, rollout_batch_size=4, rollout_schedule=(1, 2, 1, 2),
        classifier_hidden_size=8, classifier_steps=2, classifier_batch_size=8)


@pytest.mark.slow  # brax hopper / halfcheetah programs: ~1 min of compile each
@pytest.mark.parametrize("name", ["mnm_fig4_halfcheetah", "mnm_fig4_hopper", "vagram_hopper"])
def test_gpu_configs_compile_at_tiny_size(name):
    """The paper-size MnM Fig. 4/6 and VaGraM hopper configs stay runnable: every agent's whole
    run compiles on its brax env with the sizes cut (the GPU run changes only sizes)."""
    config = mbpo_compare.load_compare_config(ROOT / "sweeps" / f"{name}.toml")
    for agent in config.agents:
        tiny = mbpo_config.agent_config(agent, shrunk(config.mbpo))
        env = mbpo_config.make_env(tiny)
        train = mbpo.make_train(tiny, env)
        compiled = jax.jit(jax.vmap(train)).lower(mbpo.seed_keys(tiny)).compile()
        assert compiled is not None
