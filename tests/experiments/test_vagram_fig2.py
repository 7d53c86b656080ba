"""VaGraM Fig. 2 experiment: config validation, loss wiring, shapes, seed vmapping, continuation."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.models import nets
from mismatch_jax.data import replay
from mismatch_jax.agents import sac as sac_lib
from mismatch_jax.data.replay import Transition
from mismatch_jax.config_io import ConfigError
from mismatch_jax.envs import registry
from mismatch_jax.experiments import vagram_fig2 as fig2
from mismatch_jax.experiments import vagram_fig2_config as fig2_config
from mismatch_jax.models import value_aware
from mismatch_jax.models.core import mse_per_sample

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "sac": {"total_env_steps": 1400, "learning_starts": 1000, "eval_interval": 200,
            "hidden_size": 8, "num_eval_episodes": 1, "buffer_capacity": 2000, "batch_size": 16},
    "models": {"num_seeds": 2, "num_train": 64, "num_held_out": 24, "held_out_chunk": 10,
               "steps_per_value_function": 6, "evals_per_value_function": 3, "batch_size": 8,
               "hidden_size": 4},
}


@pytest.fixture(scope="module")
def env():
    return registry.make("pendulum")


@pytest.fixture(scope="module")
def tiny_config():
    return fig2_config.config_from_dict(TINY)


@pytest.fixture(scope="module")
def fake_snapshots(env, tiny_config):
    """Three untrained-but-different SAC parameter sets stacked as [S=3, ...] (no SAC run;
    built from ``mlp_init`` directly because compiling ``sac.init`` costs more)."""
    hidden = (tiny_config.sac.hidden_size,) * tiny_config.sac.num_hidden_layers
    actor_sizes, critic_sizes = (3,) + hidden + (2,), (4,) + hidden + (1,)
    stack = lambda trees: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)
    snapshots = []
    for key in jax.random.split(jax.random.key(3), 3):
        actor_key, critic_key = jax.random.split(key)
        critic = stack([nets.mlp_init(k, critic_sizes) for k in jax.random.split(critic_key, 2)])
        snapshots.append(sac_lib.SACParams(actor=nets.mlp_init(actor_key, actor_sizes), critic=critic,
                                           target_critic=critic, log_alpha=jnp.zeros(())))
    return stack(snapshots)


def _with(section, **values):
    data = {k: dict(v) for k, v in TINY.items()}
    data.setdefault(section, {}).update(values)
    return data


@pytest.mark.unit
@pytest.mark.parametrize("data, key", [
    (_with("models", bogus=1), "models.bogus"),
    (_with("models", batch_size="big"), "models.batch_size"),
    (_with("models", evals_per_value_function=4), "models.evals_per_value_function"),
    (_with("models", losses=["mse", "nll"]), "models.losses"),
    (_with("models", model_types=["linear", "linear"]), "models.model_types"),
    (_with("models", critics="some"), "models.critics"),
    (_with("sac", env="cartpole_swingup"), "sac.env"),
    (_with("sac", learning_starts=900), "sac.learning_starts"),
    (_with("models", data_source="replay", num_train=1500), "models.num_train"),
    ({**TINY, "snapshot_stride": 0}, "snapshot_stride"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        fig2_config.config_from_dict(data)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["vagram_fig2.toml", "vagram_fig2_quick.toml"])
def test_sweep_configs_load(name):
    config = fig2_config.load_config(REPO / "sweeps" / name)
    assert config.models.num_seeds == 8
    assert config.num_snapshots >= 10


def test_uniform_transitions_follow_the_true_dynamics(env):
    data = jax.jit(fig2.uniform_transitions, static_argnums=(1, 2))(jax.random.key(0), env, 256)
    assert data.obs.shape == (256, 3) and data.action.shape == (256, 1)
    expected = jax.vmap(lambda o, a: env.step(env.state_from_obs(o), a).obs)(data.obs, data.action)
    np.testing.assert_allclose(data.next_obs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(data.obs[:, :2], axis=-1), 1.0, atol=1e-5)
    assert float(jnp.abs(data.obs[:, 2]).max()) > 6.0  # the whole speed range, not just resets
    assert float(jnp.abs(data.action).max()) <= 2.0


def test_replay_split_is_disjoint_and_uses_valid_rows(env, tiny_config):
    config = fig2_config.config_from_dict(_with("models", data_source="replay", num_train=300, num_held_out=100))
    example = Transition(obs=jnp.zeros(3), action=jnp.zeros(1), reward=jnp.zeros(()),
                         next_obs=jnp.zeros(3), done=jnp.zeros(()))
    buffer = replay.init(example, 2000)
    rows = jnp.arange(1, 1401, dtype=jnp.float32)  # row id + 1 in obs[0]: 0 marks an empty row
    items = Transition(obs=jnp.stack([rows, rows, rows], -1), action=rows[:, None], reward=rows,
                       next_obs=jnp.stack([rows, rows, rows], -1), done=0 * rows)
    buffer = replay.add_batch(buffer, items)
    train, held = fig2.split_dataset(jax.random.key(1), config.models, env, buffer)
    ids_train, ids_held = np.asarray(train.obs[:, 0]), np.asarray(held.obs[:, 0])
    assert ids_train.shape == (300,) and ids_held.shape == (100,)
    assert np.all(ids_train > 0) and np.all(ids_held > 0)
    assert len(set(ids_train) | set(ids_held)) == 400


@pytest.mark.parametrize("loss", fig2.LOSSES)
def test_loss_wiring_equals_value_aware(env, tiny_config, fake_snapshots, loss):
    sac = sac_lib.make_sac(tiny_config.sac, env)
    params = jax.tree_util.tree_map(lambda x: x[0], fake_snapshots)
    value_fn = lambda s: sac.value(params, s, critics="all")
    data = jax.jit(fig2.uniform_transitions, static_argnums=(1, 2))(jax.random.key(2), env, 32)
    pred = data.next_obs + 0.1 * jax.random.normal(jax.random.key(4), data.next_obs.shape)
    grads = jax.jit(lambda t: value_aware.value_gradient_cache(value_fn, t).grads)(data.next_obs)
    got = jax.jit(lambda i: fig2.model_loss_per_sample(i, pred, data.next_obs, value_fn, grads, 0.1))(
        jnp.int32(fig2.LOSSES.index(loss)))
    expected = {
        "mse": lambda: mse_per_sample(pred, data.next_obs),
        "vaml": lambda: value_aware.vaml_per_sample(value_fn, pred, data.next_obs),
        "vagram": lambda: value_aware.vagram_per_sample(pred, data.next_obs, grads, 0.1),
    }[loss]()
    assert got.shape == (32,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def mlp_run(env, tiny_config):
    """One seed: (loss_index, key, snapshots, buffer) → Curves [S, E + 1]."""
    return jax.jit(fig2.make_model_learning(tiny_config, env, "mlp"))


@pytest.fixture(scope="module")
def mlp_run_seeds(env, tiny_config):
    """Seeds vmapped: keys [N] → Curves [N, S, E + 1] (the program run_fig2 compiles)."""
    return jax.jit(jax.vmap(fig2.make_model_learning(tiny_config, env, "mlp"), in_axes=(None, 0, None, None)))


@pytest.mark.slow  # ~17 s; the vmapped-seeds equivalence test runs the same program in the default tier
def test_curves_shapes_and_finite(tiny_config, fake_snapshots, mlp_run_seeds):
    keys = fig2.model_seed_keys(tiny_config.models)
    for loss in fig2.LOSSES:
        curves = mlp_run_seeds(jnp.int32(fig2.LOSSES.index(loss)), keys, fake_snapshots, None)
        for name in ("mse", "vaml", "train_loss"):
            assert getattr(curves, name).shape == (2, 3, 4), name
        assert np.all(np.isfinite(curves.mse)) and np.all(np.isfinite(curves.vaml))
        assert np.all(np.isnan(curves.train_loss[..., 0])) and np.all(np.isfinite(curves.train_loss[..., 1:]))
        assert not np.allclose(curves.mse[0], curves.mse[1])  # seeds differ (data and init)


def test_vmapped_seeds_equal_individual_seeds(tiny_config, fake_snapshots, mlp_run, mlp_run_seeds):
    keys = fig2.model_seed_keys(tiny_config.models)
    index = jnp.int32(fig2.LOSSES.index("vagram"))
    together = mlp_run_seeds(index, keys, fake_snapshots, None)
    for i in range(keys.shape[0]):
        alone = mlp_run(index, keys[i], fake_snapshots, None)
        for a, b in zip(alone, together):
            np.testing.assert_allclose(a, b[i], rtol=2e-5, atol=1e-6)


def test_model_continues_across_value_functions(tiny_config, fake_snapshots, mlp_run_seeds):
    """With the same value function every time, the evaluation right after the 'update' equals
    the last one before it: the model and optimiser state carry over, nothing is re-initialised."""
    same = jax.tree_util.tree_map(lambda x: jnp.stack([x[0]] * 3), fake_snapshots)  # no recompile
    keys = fig2.model_seed_keys(tiny_config.models)
    curves = mlp_run_seeds(jnp.int32(fig2.LOSSES.index("vaml")), keys, same, None)
    np.testing.assert_allclose(curves.mse[:, 1:, 0], curves.mse[:, :-1, -1], rtol=1e-6)
    np.testing.assert_allclose(curves.vaml[:, 1:, 0], curves.vaml[:, :-1, -1], rtol=1e-6)
    assert not np.allclose(curves.mse[:, 0, 0], curves.mse[:, 0, -1])  # training moved the model


@pytest.mark.slow  # compiles SAC and a model-learning program (~1 min on 2 cores)
def test_sac_snapshots_and_main_end_to_end(tmp_path, env):
    config = {**TINY, "models": {**TINY["models"], "model_types": ["linear"], "losses": ["mse", "vaml"]}}
    toml = tmp_path / "tiny.toml"
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    toml.write_text("\n".join(lines) + "\n")
    from mismatch_jax import cli

    assert cli.main(["vagram-fig2", str(toml), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "fig2.json").read_text())
    assert (tmp_path / "out" / "fig2.png").stat().st_size > 0
    assert data["sac"]["env_steps"] == [1200, 1400]
    assert set(data["summary"]["linear"]) == {"mse", "vaml"}
    assert np.asarray(data["curves"]["linear"]["vaml"]["mse"]).shape == (2, 2, 4)
    summary = data["summary"]["linear"]["vaml"]["mse"]
    assert summary["first"] > 0 and np.isfinite(summary["ratio_final_to_first"])
