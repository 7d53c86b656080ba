"""The controller competence check: its rewards are the episodes it claims, its verdict follows
the targets, the PETS model round-trips through the dataset cache, and a sweep without PETS data
is refused naming the fix."""

import dataclasses

import jax
import numpy as np
import pytest

from mismatch_jax import models
from mismatch_jax.config_io import ConfigError, from_dict
from mismatch_jax.errors import InputError
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import make_planner, mpc_episode
from mismatch_jax.sweep.competence import CompetenceTarget, check_competence, episode_rewards, sweep_competence
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.study_data import MODEL_PREFIX, StudyData, pets_models
from point_mass import PointMass

ENV = PointMass()
CEM = CEMConfig(horizon=4, population_size=16, num_elites=4, num_iterations=2)
MODEL = models.ModelConfig(kind="P", hidden_size=8, num_hidden_layers=1).for_env(ENV)


def _model(seed):
    return models.init(jax.random.key(seed), MODEL), models.identity_normalizer(MODEL)


def test_vmapped_trials_equal_one_episode_at_a_time():
    params, norm = _model(1)
    key = jax.random.key(7)
    rewards, compile_s, run_s = episode_rewards(key, ENV, CEM, MODEL, params, norm, trials=3, episode_length=6)
    planner = make_planner(CEM.for_env(ENV), MODEL, ENV.reward_fn, ENV.termination_fn)
    one_by_one = [float(mpc_episode(k, ENV, planner, params, norm, 6)[1]) for k in jax.random.split(key, 3)]
    np.testing.assert_allclose(rewards, one_by_one, rtol=1e-5, atol=1e-5)
    assert rewards.shape == (3,) and compile_s > 0 and run_s > 0


@pytest.mark.parametrize("threshold, ceiling, expert_ok, untrained_ok", [
    (-1e9, 1e9, True, True),     # every reward clears a threshold of -inf and stays under +inf
    (1e9, 1e9, False, True),
    (-1e9, -1e9, True, False),
])
def test_verdict_follows_the_targets(threshold, ceiling, expert_ok, untrained_ok):
    target = CompetenceTarget(enabled=True, trials=2, expert_threshold=threshold, min_expert_successes=2,
                              untrained_ceiling=ceiling)
    lines = []
    report = check_competence(jax.random.key(0), ENV, CEM, 5, _model(2), MODEL, MODEL, target, lines.append)
    assert report["expert"]["passed"] is expert_ok and report["untrained"]["passed"] is untrained_ok
    assert report["passed"] is (expert_ok and untrained_ok)
    assert report["expert"]["successes"] == (2 if expert_ok else 0)
    assert len(report["expert"]["rewards"]) == 2 and any("competence" in line for line in lines)


@pytest.mark.unit
def test_more_required_successes_than_trials_is_refused():
    with pytest.raises(ValueError, match="min_expert_successes"):
        CompetenceTarget(trials=3, min_expert_successes=4)
    with pytest.raises(ConfigError, match="competence: CompetenceTarget.trials"):
        from_dict(SweepConfig, {"env": "pendulum", "competence": {"trials": 0}})


def test_pets_models_round_trip_through_the_cached_arrays():
    config = from_dict(SweepConfig, {"env": "pendulum", "datasets": {
        "pets": {"model": {"hidden_size": 8, "num_hidden_layers": 1, "ensemble_size": 2}}}})
    from mismatch_jax.envs import make
    env = make("pendulum")
    request = StudyData.of_sweep(config)
    model_config = dataclasses.replace(config.datasets.pets, env="pendulum").model_config(env)
    seeds = [models.init(jax.random.key(s), model_config) for s in range(2)]
    stacked = jax.tree.map(lambda *a: np.stack(a), *seeds), jax.tree.map(
        lambda *a: np.stack(a), *[models.identity_normalizer(model_config)] * 2)
    runs = {f"{MODEL_PREFIX}{i}": leaf for i, leaf in enumerate(jax.tree.leaves(stacked))}
    params, _ = pets_models(request, env, runs)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(seeds[1])):
        np.testing.assert_array_equal(np.asarray(got)[1], np.asarray(want))
    wrong = dict(runs, **{f"{MODEL_PREFIX}0": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="cached PETS model"):
        pets_models(request, env, wrong)


def test_a_sweep_without_pets_data_cannot_check_competence(tmp_path):
    config = from_dict(SweepConfig, {"env": "pendulum", "competence": {"enabled": True},
                                     "datasets": {"train": ["grid"], "eval": ["grid", "sampled"]}})
    with pytest.raises(InputError, match="competence.enabled"):
        sweep_competence(config, None, tmp_path, log=lambda s: None)
    off = dataclasses.replace(config, competence=CompetenceTarget())
    assert sweep_competence(off, None, tmp_path) is None
