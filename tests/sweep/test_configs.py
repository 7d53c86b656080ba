"""Every shipped sweep config loads and round-trips through the resolved TOML."""

from pathlib import Path

import pytest

from mismatch_jax.config_io import to_toml
from mismatch_jax.sweep.config import SweepConfig, load
from mismatch_jax.config_io import from_dict

pytestmark = pytest.mark.unit  # every test here is in the fast tier

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ["quickstart.toml", "cartpole_ll_reward.toml", "cartpole_per_epoch.toml", "cpu_population_1000.toml",
          "cartpole_ll_reward_cpu.toml", "cartpole_study_cpu.toml", "cartpole_per_epoch_cpu.toml",
          "halfcheetah_ll_reward.toml", "halfcheetah_ll_reward_cpu.toml", "cartpole_fig3_pets.toml",
          "cartpole_fig3_pets_cpu.toml"]


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweeps_load_and_round_trip(name):
    import tomllib

    config = load(ROOT / "sweeps" / name)
    assert config.num_models >= 1
    assert from_dict(SweepConfig, tomllib.loads(to_toml(config))) == config


def test_model_index_layout_is_types_outermost():
    config = load(ROOT / "sweeps" / "cartpole_study_cpu.toml")  # one population per dataset
    specs = [config.model_spec(i) for i in range(config.num_models)]
    assert len(set(specs)) == config.num_models
    kinds = [s[0] for s in specs]
    assert kinds == sorted(kinds, key=config.population.model_types.index)
    with pytest.raises(IndexError):
        config.model_spec(config.num_models)


def test_cem_table_is_the_pets_planner_table_with_paper_defaults():
    from mismatch_jax.planning.cem import CEMConfig
    from mismatch_jax.config_io import ConfigError
    from mismatch_jax.envs import make

    config = from_dict(SweepConfig, {"env": "cartpole_balance", "cem": {"horizon": 7, "sampling": "clipped_normal"}})
    assert isinstance(config.cem, CEMConfig)
    assert (config.cem.horizon, config.cem.population_size, config.cem.num_elites) == (7, 400, 40)
    env = make("cartpole_balance")
    assert config.cem.for_env(env) == config.cem.with_bounds(env.action_low, env.action_high)
    assert config.cem.for_env(env).sampling == "clipped_normal"
    with pytest.raises(ConfigError, match="cem: .*num_elites"):
        from_dict(SweepConfig, {"env": "cartpole_balance", "cem": {"num_elites": 1}})
    with pytest.raises(ConfigError, match="cem.propagation"):
        from_dict(SweepConfig, {"env": "cartpole_balance", "cem": {"propagation": "mean"}})


def test_episode_length_omitted_means_the_env_default_and_zero_is_refused():
    from mismatch_jax.config_io import ConfigError, to_toml
    from mismatch_jax.envs import make
    from mismatch_jax.planning.mpc import EpisodeSettings

    env = make("cartpole_balance")
    assert EpisodeSettings().length(env) == env.episode_length
    assert EpisodeSettings(episode_length=7).length(env) == 7
    assert from_dict(SweepConfig, {"env": "cartpole_balance"}).evaluation.length(env) == 200
    assert "episode_length" not in to_toml(EpisodeSettings())
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="episode_length"):
            from_dict(SweepConfig, {"env": "cartpole_balance", "evaluation": {"episode_length": bad}})



def test_a_derived_chunk_is_no_larger_than_its_model_type():
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import chunk_size_for

    config = load(ROOT / "sweeps" / "cartpole_ll_reward.toml")  # run.chunk_size = 0: derived from memory_gb
    env = make(config.env)
    for devices in (1, 2, 8):
        for kind in config.kinds:
            size = chunk_size_for(config, env, kind, 10_000, devices)
            assert size % devices == 0 and size <= -(-config.count_of(kind) // devices) * devices
