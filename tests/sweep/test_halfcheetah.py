"""The half-cheetah study (Lambert et al. 2020, Fig. 3d-f): the paper-size config compiles and runs
end to end at tiny size (slow: 5 min 37 s on 2 cores, one brax program compile per model type), and
its sampled data come from the PETS runs' visited states."""

from pathlib import Path

import numpy as np
import pytest

from mismatch_jax import data
from mismatch_jax.config_io import load_toml
from mismatch_jax.sweep.config import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "sweeps" / "halfcheetah_ll_reward.toml"
SMALL = {"planner": "horizon=3", "pop": "population_size=8", "elites": "num_elites=2", "iters": "num_iterations=1"}


def tiny_overrides(cache_dir) -> list[str]:
    """Shrinks the paper-size config: 1 replicate per (type, dataset), 8-wide models, 2 epochs,
    10-step episodes and PETS trials, a 3-step / 8-candidate planner."""
    planner = [f"{table}.{value}" for table in ("cem", "datasets.pets.planner") for value in SMALL.values()]
    return [
        "population.replicates=1", "population.model.hidden_size=8", "population.model.num_hidden_layers=1",
        "population.model.ensemble_size=2",
        "training.num_epochs=2", "training.eval_epochs=[2]", "training.batch_size=16",
        "datasets.expert_episodes=1", "datasets.sampled_size=64", f"datasets.cache_dir={cache_dir!s}",
        "datasets.pets.num_trials=1", "datasets.pets.trial_length=10", "datasets.pets.num_seeds=1",
        "datasets.pets.model.hidden_size=8", "datasets.pets.model.num_hidden_layers=1",
        "datasets.pets.model.ensemble_size=2", "datasets.pets.train.num_epochs=2", "datasets.pets.train.batch_size=8",
        "evaluation.trials=1", "evaluation.episode_length=10", "run.chunk_size=3",
        *planner,
    ]


@pytest.mark.unit
def test_paper_config_is_paper_size():
    config = load_toml(SweepConfig, PAPER)
    assert config.num_models == 2400                      # the paper's M_hc
    assert config.datasets.train == config.datasets.eval == ("expert", "on_policy", "sampled")
    assert config.datasets.expert_min_reward == 10000.0
    assert (config.evaluation.trials, config.evaluation.episode_length) == (10, 1000)
    assert config.cem == config.datasets.pets.planner     # the population is planned as PETS plans


@pytest.mark.slow
def test_paper_config_runs_end_to_end_at_tiny_size(tmp_path):
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.runner import run_sweep
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets, pets_runs

    config = load_toml(SweepConfig, PAPER, tiny_overrides(tmp_path / "cache"))
    assert config.num_models == 12
    table = run_sweep(config, tmp_path / "out", progress=False, log=lambda s: None)
    assert len(table) == 12 and set(table["model_type"]) == {"P", "PE", "D", "DE"}
    for name in ("expert", "on_policy", "sampled"):
        assert np.isfinite(table[f"ll_{name}"]).all()
    assert np.isfinite(table["reward_mean"]).all()
    assert (tmp_path / "out" / "results.parquet").is_file()

    # the sampled data's states are states PETS visited (read back from the cache)
    request, env = StudyData.of_sweep(config), make(config.env)
    built, _ = build_study_datasets(request, env, log=lambda s: None)
    visited = data.visited_states(pets_runs(request, env, tmp_path / "cache", lambda s: None))
    obs = np.asarray(built["sampled"].obs)
    assert (obs[:, None, :] == visited[None]).all(-1).any(1).all()


def test_grid_data_for_an_env_without_a_box_fails_before_pets(tmp_path):
    from types import SimpleNamespace

    from mismatch_jax.config_io import ConfigError
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    config = load_toml(SweepConfig, PAPER, tiny_overrides(tmp_path) + ['datasets.eval=["sampled", "grid"]'])
    cheetah = SimpleNamespace(name="halfcheetah")  # what the check reads; a brax env takes ~20 s to build
    with pytest.raises(ConfigError, match="datasets.train / datasets.eval: halfcheetah has no state-action box"):
        build_study_datasets(StudyData.of_sweep(config), cheetah, log=lambda s: None)
    assert not any(tmp_path.iterdir())  # nothing was run or cached
