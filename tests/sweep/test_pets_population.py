"""The PETS population (``[population] source = "pets"``, Lambert et al. 2020 §4.1): its model index,
the per-(seed, trial) training data, the held-out evaluation sets, the config checks and the
paper-size config end to end at tiny size (slow). The README test runs the quickstart, a PETS
population, end to end in the default tier and checks every model's provenance."""

from pathlib import Path

import jax
import numpy as np
import pytest

from mismatch_jax.config_io import ConfigError, load_toml
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.pets_population import held_out_rows, prefix_datasets, seed_split

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "sweeps" / "cartpole_fig3_pets.toml"
CPU = ROOT / "sweeps" / "cartpole_fig3_pets_cpu.toml"


def _small(*overrides):
    return load_toml(SweepConfig, PAPER, ["datasets.pets.num_seeds=3", "datasets.pets.num_trials=4",
                                          "population.replicates=2", *overrides])


@pytest.mark.unit
def test_shipped_configs_are_the_papers_design_and_size():
    paper, cpu = load_toml(SweepConfig, PAPER), load_toml(SweepConfig, CPU)
    assert paper.pets_source and cpu.pets_source
    assert paper.num_models == 975                        # ~ the paper's M_cp = 1000
    assert paper.datasets.expert_min_reward == 179.0      # "cartpole r > 179"
    assert (paper.evaluation.trials, paper.evaluation.episode_length) == (10, 200)
    assert cpu.num_models >= 500
    assert paper.kinds[-1] == cpu.kinds[-1] == "PETS"


@pytest.mark.unit
def test_every_type_seed_trial_copy_appears_once_and_indexes_its_data():
    config = _small()
    seen = set()
    for index in range(config.num_models):
        kind, train, copy = config.model_spec(index)
        seed, trial, copy_again = config.pets_provenance(index)
        assert train == "pets" and copy == copy_again
        assert 0 <= seed < 3 and 1 <= trial <= 4
        assert config.model_dataset_index(index) == seed * 4 + trial - 1
        assert config.model_eval_group(index) == seed
        seen.add((kind, seed, trial, copy))
    assert len(seen) == config.num_models == 4 * 3 * 4 * 2 + 3 * 4
    assert {c for k, s, t, c in seen if k == "PETS"} == {0}
    assert [k for k, _, _ in config.type_ranges()] == ["P", "PE", "D", "DE", "PETS"]
    assert config.num_models == sum(count for _, _, count in config.type_ranges())


@pytest.mark.unit
@pytest.mark.parametrize("overrides, fragment", [
    (["datasets.pets.num_seeds=1"], "datasets.pets.num_seeds >= 2"),
    (["training.eval_epochs=[50, 100]"], "training.eval_epochs must list one epoch"),
    (['population.source="replay"'], "population.source"),
    (['population.deterministic_ll="unit_variance"'], "population.deterministic_ll"),
])
def test_bad_pets_population_configs_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        _small(*overrides)


def _runs(num_seeds=3, trials=3, length=4):
    """Synthetic PETS runs: obs encode (seed, trial, step); the last step of trial 1 is dead."""
    shape = (num_seeds, trials, length)
    s, t, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    code = (100 * s + 10 * t + k).astype(np.float32)
    alive = np.ones(shape, bool)
    alive[:, 1, -1] = False
    return {"obs": code[..., None], "next_obs": code[..., None] + 0.5, "action": -code[..., None],
            "reward": np.ones(shape, np.float32), "alive": alive,
            "trial_rewards": np.asarray([[0, 180, 150], [0, 175, 190], [0, 10, 20]], np.float32)[:num_seeds]}


def test_prefix_datasets_hold_the_data_before_each_trial_split_once_per_seed():
    runs = _runs()
    is_val = seed_split(0, 3, (3, 4), 0.25)
    data = prefix_datasets(runs, is_val)
    assert data.num_datasets == 3 * 2 and data.capacity == 12
    train, val, obs = (np.asarray(a) for a in (data.train_mask, data.val_mask, data.obs[..., 0]))
    for seed in range(3):
        for trial in (1, 2):
            m = seed * 2 + trial - 1
            rows = obs[m][train[m] | val[m]]
            assert set((rows // 10 % 10).astype(int)) <= set(range(trial))   # trials before k only
            assert (rows // 100).astype(int).tolist() == [seed] * rows.size     # its own seed
            assert not (train[m] & val[m]).any()
            assert not np.isin(obs[m][train[m] | val[m]], 100 * seed + 10 + 3).any()  # dead step left out
            np.testing.assert_array_equal(val[m], is_val[seed].reshape(-1) & (train[m] | val[m]))
        # a longer prefix extends a shorter one, with the same split
        first, second = seed * 2, seed * 2 + 1
        assert (train[second] >= train[first]).all() and (val[second] >= val[first]).all()


def test_held_out_rows_leave_the_models_own_seed_out():
    runs = _runs()
    rows, note = held_out_rows(runs, 0, "on_policy", 170.0, 0)
    assert note is None and set((rows["obs"][:, 0] // 100).astype(int)) == {1, 2}
    assert rows["obs"].shape[0] == 2 * (3 * 4 - 1)          # alive rows of both other runs
    rows, note = held_out_rows(runs, 1, "expert", 175.0, 0)   # strictly above: 180 (seed 0) only
    assert note is None and set(np.unique(rows["obs"][:, 0] // 10).astype(int)) == {1}
    rows, _ = held_out_rows(runs, 2, "expert", 170.0, 0)      # 0 = every passing trial: 180, 175, 190
    assert set(np.unique(rows["obs"][:, 0] // 10).astype(int)) == {1, 11, 12}
    rows, _ = held_out_rows(runs, 2, "expert", 170.0, 1)      # the best one
    assert set(np.unique(rows["obs"][:, 0] // 10).astype(int)) == {12}
    rows, note = held_out_rows(runs, 0, "expert", 500.0, 2)   # none passes: the best two, said so
    assert "no other seed's trial exceeded" in note and set(np.unique(rows["obs"][:, 0] // 10).astype(int)) == {11, 12}


def tiny_paper_overrides(cache_dir) -> list[str]:
    """The paper-size PETS-population config shrunk to seconds: 2 seeds × 2 trials, 8-wide models."""
    small = ["horizon=3", "population_size=8", "num_elites=2", "num_iterations=1"]
    planner = [f"{table}.{value}" for table in ("cem", "datasets.pets.planner") for value in small]
    return [
        "env=cartpole_balance", "population.replicates=1", "population.model.hidden_size=8",
        "population.model.num_hidden_layers=1", "population.model.ensemble_size=2", "training.num_epochs=2",
        "training.eval_epochs=[2]", "training.batch_size=16", "datasets.grid_points=2", "datasets.sampled_size=64",
        "datasets.expert_min_reward=5.0", f"datasets.cache_dir={cache_dir!s}", "datasets.pets.num_trials=2",
        "datasets.pets.trial_length=20", "datasets.pets.num_seeds=2", "datasets.pets.model.angle_dims=[]",
        "datasets.pets.model.hidden_size=8", "datasets.pets.model.num_hidden_layers=1",
        "datasets.pets.model.ensemble_size=2", "datasets.pets.train.num_epochs=2", "datasets.pets.train.batch_size=8",
        "evaluation.trials=1", "evaluation.episode_length=10", "run.chunk_size=4", *planner,
    ]


def check_provenance(config: SweepConfig, table) -> None:
    """Every model of a PETS population is in the table once, with its (seed, trial, copy)."""
    assert sorted(table["model_id"]) == list(range(config.num_models))
    for row in table.itertuples():
        seed, trial, copy = config.pets_provenance(row.model_id)
        assert (row.pets_seed, row.pets_trial, row.copy) == (seed, trial, copy)
        assert row.model_type == config.model_spec(row.model_id)[0]
        assert row.train_dataset == "pets"


@pytest.mark.slow
def test_paper_config_end_to_end_at_tiny_size(tmp_path):
    from mismatch_jax.analysis.fig3 import fig3_panels
    from mismatch_jax.sweep.runner import run_sweep

    config = load_toml(SweepConfig, PAPER, tiny_paper_overrides(tmp_path / "cache"))
    assert config.num_models == 4 * 2 * 2 + 2 * 2
    table = run_sweep(config, tmp_path / "out", progress=False, log=lambda s: None)
    check_provenance(config, table)
    for name in config.datasets.eval:
        assert np.isfinite(table[f"ll_{name}"]).all()
    assert np.isfinite(table["reward_mean"]).all()
    # the data before trial 2 extend the data before trial 1
    rows = table.groupby(["pets_seed", "pets_trial"])["train_rows"].first().unstack()
    assert (rows[2] > rows[1]).all()
    content = fig3_panels(table, tmp_path / "out", num_bootstrap=50)
    assert [p["eval_dataset"] for p in content["panels"]] == ["expert", "on_policy", "grid", "sampled"]
    # scoring from outside the sweep: PETS's own models, their sweep keys → the table's rewards and grid LL
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import evaluation_keys
    from mismatch_jax.sweep.scoring import log_likelihoods, score
    from mismatch_jax.sweep.study_data import StudyData, pets_runs, pets_trial_models, study_dataset

    env, request = make(config.env), StudyData.of_sweep(config)
    params, norm = pets_trial_models(request, env, pets_runs(request, env, tmp_path / "cache", lambda s: None))
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    params, norm = jax.tree.map(flat, (params, norm))
    rows = table[table.model_type == "PETS"].sort_values("model_id")
    ids = rows["model_id"].to_numpy()
    keys = evaluation_keys(config, ids, (config.datasets.pets.train.num_epochs,))[:, 0]
    model_config = config.model_config_of("PETS", env)
    rewards = score(keys, env, model_config, params, norm, config.cem, config.evaluation)
    np.testing.assert_allclose(rewards, np.stack(rows["reward"].to_numpy()), rtol=1e-5)
    lls = log_likelihoods(model_config, params, norm, {"grid": study_dataset(request, env, "grid")})
    np.testing.assert_allclose(lls["grid"], rows["ll_grid"].to_numpy(), rtol=1e-5)


def test_study_dataset_builds_one_set_with_the_study_key_and_no_pets(tmp_path):
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets, study_dataset

    config = load_toml(SweepConfig, PAPER, tiny_paper_overrides(tmp_path / "cache"))
    request = StudyData(config.datasets, ("grid", "sampled"), config.env, config.seed, 0.1)
    env = make(config.env)
    whole, _ = build_study_datasets(request, env, log=lambda s: None)
    for name in ("sampled", "grid"):
        one = study_dataset(request, env, name)
        np.testing.assert_array_equal(np.asarray(one.is_validation), np.asarray(whole[name].is_validation))
        np.testing.assert_array_equal(np.asarray(one.next_obs), np.asarray(whole[name].next_obs))
    assert not any(p.name.startswith(f"{env.name}_pets_runs") for p in (tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match="not one of the study's datasets"):
        study_dataset(request, env, "expert")
