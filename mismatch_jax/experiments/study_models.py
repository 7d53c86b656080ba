"""What the adversarial attack (``experiments.attack``) and the re-weighting study
(``experiments.reweight``) share: their ``[data]`` section and default ``[model]`` (the other
sections are the package's shared schemas: ``ModelConfig``, ``TrainingSection``, ``CEMConfig``,
``EpisodeSettings``), building and training on a study dataset, and scoring models by CEM-MPC
episodes in the true environment.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from mismatch_jax import models
from mismatch_jax.config_io import setting
from mismatch_jax.errors import InputError
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.sweep.config import DatasetBuild
from mismatch_jax.train.config import TrainingSection


@dataclasses.dataclass(frozen=True)
class DataSettings(DatasetBuild):
    """[data]: the dataset a model is trained on (its validation split scores the LL): ``kind``
    "sampled" / "grid" (cheap, true-env steps from the state-action box) or "on_policy" /
    "expert" (PETS runs, configured by the ``[data.pets]`` table), built as the sweep's
    ``[datasets]`` builds it (``sweep.config.DatasetBuild``)."""

    kind: Literal["sampled", "grid", "on_policy", "expert"] = "on_policy"
    validation_fraction: float = setting(0.1, gt=0.0, lt=1.0)


STUDY_MODEL = ModelConfig(kind="P", ensemble_size=1, angle_features=True)
"""The default ``[model]`` of the attack and the re-weighting study: one P model; with
angle_features the env's winding angles reach it as (sin, cos), as PETS and the sweep do for the
swing-up (without them a swing-up controller barely leaves the bottom)."""


def build_dataset(data: DataSettings, env_name: str, seed: int, env, log=print):
    """The ``Transitions`` of ``data.kind`` and the builder's notes (cached on disk like the
    sweep's datasets, ``sweep.study_data``)."""
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    request = StudyData(data, (data.kind,), env_name, seed, data.validation_fraction)
    built, notes = build_study_datasets(request, env, log=log)
    return built[data.kind], notes


def pets_runs_of(data: DataSettings, env_name: str, seed: int, env, log=print) -> dict:
    """The (cached) PETS runs behind ``data``'s on_policy / expert kinds (``sweep.study_data.pets_runs``)."""
    from pathlib import Path

    from mismatch_jax.sweep.study_data import StudyData, pets_runs

    request = StudyData(data, (data.kind,), env_name, seed, data.validation_fraction)
    return pets_runs(request, env, Path(data.cache_dir), log)


def train_model(key, model_config: models.ModelConfig, settings: TrainingSection, dataset):
    """Trains one model on ``dataset`` (Transitions) → (params, normalizer, TrainResult)."""
    from mismatch_jax.data.transitions import TransitionData
    from mismatch_jax.train.population import TrainHParams, make_train

    data = TransitionData.from_dataset(dataset)
    train = make_train(settings.train_config(model_config, data.capacity))
    hp = TrainHParams.population(1, settings.fixed("learning_rate"), settings.fixed("weight_decay"))
    result = train(key[None], None, data, hp, jnp.zeros(1, jnp.int32))
    if bool(result.diverged[0]):
        raise InputError("training diverged (non-finite loss); lower training.learning_rate")
    first = lambda tree: jax.tree.map(lambda a: a[0], tree)
    return first(result.params), first(result.normalizer), result


def make_episode_evaluator(env, planner, episode_length: int, env_params=None):
    """``rewards(params, normalizer, trial_keys [K]) -> [K]``: one model's CEM-MPC episodes in
    the true env, one per key. Pure; vmap it over models or candidates, then jit."""
    from mismatch_jax.planning.mpc import mpc_episode

    def rewards(params, normalizer, trial_keys):
        episode = lambda k: mpc_episode(k, env, planner, params, normalizer, episode_length, env_params)[1]
        return jax.vmap(episode)(trial_keys)

    return rewards


def make_population_evaluator(env, planner, episode_length: int, env_params=None, layout=None,
                              width: int | None = None):
    """``evaluate(params [N], normalizer [N], trial_keys [K]) -> rewards [N, K]``: one call runs
    N × K episodes (every model sees the same trial keys: common random numbers), the models laid
    out by ``layout`` (``mismatch_jax.population``; None = "auto" for models ``width`` wide) —
    inside each device's block when jitted with ``population.jit_sharded``. Pure."""
    from mismatch_jax.population import over_population

    one_model = make_episode_evaluator(env, planner, episode_length, env_params)
    return over_population(jax.vmap(one_model, in_axes=(0, 0, None)), layout, shared=(2,), width=width,
                           per_model=one_model)
