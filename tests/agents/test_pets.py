"""PETS loop on a tiny env, and strict config loading."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mismatch_jax.agents.config import (
    PetsConfig,
    load_pets_config,
    pets_config_from_dict,
)
from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys
from point_mass import PointMass

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY = {
    "env": "point_mass",
    "num_trials": 2,
    "num_seeds": 2,
    "model": {"kind": "PE", "ensemble_size": 2, "hidden_size": 32, "num_hidden_layers": 2},
    "train": {"num_epochs": 60, "batch_size": 16, "learning_rate": 3e-3},
    "planner": {"horizon": 10, "population_size": 64, "num_elites": 8, "num_iterations": 3},
}


@pytest.mark.slow  # ~30 s; the default tier still runs PETS via the quickstart in tests/test_readme_commands.py
def test_pets_improves_over_random_and_seed_batching_matches_single_seed():
    config = pets_config_from_dict(TINY)
    env = PointMass()
    pets = make_pets(config, env)
    keys = seed_keys(config)
    result = jax.jit(pets.run_seeds)(keys)
    assert result.trial_rewards.shape == (2, 2)
    assert result.random_reward.shape == (2,)
    assert result.metrics.val_mse.shape == (2, 2)
    assert jnp.all(jnp.isfinite(result.trial_rewards))
    # Random actions drift around x≈1 (return ≈ −30); the planned trials drive x to 0.
    assert float(result.trial_rewards[:, -1].mean()) > float(result.random_reward.mean()) + 5.0
    # The host loop over the concurrently compiled trial_step (the CLI's path) reproduces the
    # scanned run.
    init, step = compile_trial_loop(pets, keys, donate_state=True)
    state, random_reward = init(keys)
    rewards = []
    for _ in range(config.num_trials):
        state, metrics = step(state)
        rewards.append(metrics.reward)
    np.testing.assert_allclose(random_reward, result.random_reward, rtol=1e-5)
    np.testing.assert_allclose(jnp.stack(rewards, 1), result.trial_rewards, rtol=1e-3, atol=1e-2)


@pytest.mark.unit
def test_packaged_configs_load():
    cpu = load_pets_config(None)
    assert cpu == load_pets_config(ROOT / "sweeps" / "pets_cartpole_cpu.toml")
    assert cpu.env == "cartpole_swingup"
    paper = load_pets_config(ROOT / "sweeps" / "pets_cartpole_paper.toml")
    assert paper.model.ensemble_size == 5 and paper.model.hidden_size == 200
    assert paper.model.num_hidden_layers == 4 and paper.model.activation == "silu"
    assert 400 <= paper.planner.population_size <= 500 and 40 <= paper.planner.num_elites <= 50
    assert 25 <= paper.planner.horizon <= 30 and paper.planner.num_iterations == 5
    assert paper.planner.alpha == 0.1 and paper.planner.propagation == "expectation"
    assert paper.num_trials == 15


@pytest.mark.unit
@pytest.mark.parametrize(
    "table, message",
    [
        ({"num_trails": 3}, r"num_trails.*allowed keys.*num_trials"),
        ({"planner": {"populaton_size": 3}}, r"planner\.populaton_size.*population_size"),
        ({"planner": {"population_size": "many"}}, r"planner\.population_size.*integer"),
        ({"planner": {"population_size": -4}}, r"population_size"),
        ({"planner": {"population_size": 10, "num_elites": 20}}, r"num_elites"),
        ({"planner": {"propagation": "mean"}}, r"propagation.*expectation"),
        ({"train": {"learning_rate": True}}, r"learning_rate.*number"),
        ({"train": {"learning_rate": -1.0}}, r"learning_rate"),
        ({"model": {"kind": "P", "ensemble_size": 5}}, r"ensemble_size"),
        ({"num_trials": 0}, r"num_trials"),
        ({"model": 3}, r"model.*table"),
    ],
)
def test_config_errors_name_the_key(table, message):
    with pytest.raises(ValueError, match=message):
        pets_config_from_dict(table)


@pytest.mark.unit
def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("env = 'cartpole_swingup'\n[planner]\nhorizon = 0\n")
    with pytest.raises(ValueError, match="horizon"):
        load_pets_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_pets_config(tmp_path / "missing.toml")


@pytest.mark.unit
def test_int_accepted_for_float_and_defaults():
    config = pets_config_from_dict({"train": {"learning_rate": 1}})
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert isinstance(config, PetsConfig) and config.planner == PetsConfig().planner


def test_angle_dims_reach_the_model_as_sin_cos_inputs():
    config = pets_config_from_dict({"env": "cartpole_swingup", "model": {"angle_dims": [1]}})
    env = PointMass()
    model = config.model_config(env)
    assert model.angle_dims == (1,) and model.input_dim == env.obs_dim + 1 + env.action_dim


_SPLIT_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import jax, jax.numpy as jnp, numpy as np
from mismatch_jax.agents.config import pets_config_from_dict
from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys
from mismatch_jax.planning import candidate_devices_for
from point_mass import PointMass
from test_pets import TINY
assert len(jax.devices()) == 2
config = pets_config_from_dict(TINY)
env = PointMass()
devices = candidate_devices_for(config.cem_config(env))
out = {{"candidate_devices": len(devices)}}
for name, devs in (("one", None), ("split", devices)):
    pets = make_pets(config, env, candidate_devices=devs)
    keys = seed_keys(config)
    init, step = compile_trial_loop(pets, keys, donate_state=True)
    state, _ = init(keys)
    rewards = []
    for _ in range(config.num_trials):
        state, metrics = step(state)
        rewards.append(np.asarray(metrics.reward).tolist())
    out[name] = {{"rewards": rewards, "actions": np.asarray(state.buffer.action).tolist(),
                 "params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(state.params)]}}
print(json.dumps(out))
"""


@pytest.mark.slow  # two PETS compiles in a two-device subprocess (~1 min)
def test_pets_with_candidates_split_over_two_devices_is_the_one_device_run(tmp_path):
    """Bit for bit: the fit stays a one-device program (compile_trial_loop), the episode's
    planning calls split their candidates; rewards, actions and fitted weights are identical."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "split.py"
    script.write_text(_SPLIT_SCRIPT.format(tests=str(pathlib.Path(__file__).resolve().parents[1])))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(pathlib.Path(__file__).resolve().parent))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["candidate_devices"] == 2
    assert out["split"]["rewards"] == out["one"]["rewards"]
    assert out["split"]["actions"] == out["one"]["actions"]
    assert out["split"]["params"] == out["one"]["params"]
