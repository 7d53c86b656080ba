"""Every shipped sweep config loads; the packaged default equals sweeps/quickstart.toml."""

from pathlib import Path

import pytest

from mismatch_jax.sweep.config import SweepConfig, load, load_packaged, to_toml
from mismatch_jax.config_io import from_dict

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ["quickstart.toml", "cartpole_ll_reward.toml", "cartpole_per_epoch.toml", "cpu_population_1000.toml"]


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweeps_load_and_round_trip(name):
    import tomllib

    config = load(ROOT / "sweeps" / name)
    assert config.num_models >= 1
    assert from_dict(SweepConfig, tomllib.loads(to_toml(config))) == config


def test_packaged_quickstart_is_the_repository_one():
    assert (ROOT / "mismatch_jax" / "configs" / "quickstart.toml").read_text() == \
        (ROOT / "sweeps" / "quickstart.toml").read_text()
    assert load_packaged("quickstart.toml") == load(ROOT / "sweeps" / "quickstart.toml")


def test_model_index_layout_is_types_outermost():
    config = load(ROOT / "sweeps" / "quickstart.toml")
    specs = [config.model_spec(i) for i in range(config.num_models)]
    assert len(set(specs)) == config.num_models
    kinds = [s[0] for s in specs]
    assert kinds == sorted(kinds, key=config.population.model_types.index)
    with pytest.raises(IndexError):
        config.model_spec(config.num_models)
