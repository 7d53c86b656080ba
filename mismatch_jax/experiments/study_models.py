"""What the adversarial attack (``experiments.attack``) and the re-weighting study
(``experiments.reweight``) share: the ``[model]``, ``[training]`` and ``[data]`` config sections
(their ``[cem]`` and evaluation sections build on ``sweep.config``'s ``CEMSettings`` and
``EpisodeSettings``), building and training on a study dataset, and scoring models by CEM-MPC
episodes in the true environment.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from mismatch_jax.errors import InputError
from mismatch_jax import models
from mismatch_jax.agents.config import ModelSection, PetsConfig


def check_env(name: str) -> None:
    """Raises ValueError unless ``name`` is a registered environment."""
    from mismatch_jax.envs import available

    if name not in available():
        raise ValueError(f"env: unknown environment {name!r}; available: {', '.join(available())}")


@dataclasses.dataclass(frozen=True)
class ModelSettings(ModelSection):
    """[model]: the dynamics model trained for the study — PETS's ``[model]`` table (same keys
    and checks) with one P model as the default. angle_features: feed the env's winding angles
    (``Env.angle_obs_dims``) to the model as (sin, cos), as PETS and the sweep do for the
    swing-up (without them a swing-up controller barely leaves the bottom)."""

    kind: Literal["P", "PE", "D", "DE"] = "P"
    ensemble_size: int = 1
    angle_features: bool = True

    def model_config(self, env) -> models.ModelConfig:
        """The ModelConfig for ``env``'s dimensions."""
        return models.ModelConfig(kind=self.kind, obs_dim=env.obs_dim, action_dim=env.action_dim,
                                  hidden_size=self.hidden_size,
                                  num_hidden_layers=self.num_hidden_layers,
                                  ensemble_size=self.ensemble_size, activation=self.activation,
                                  angle_dims=tuple(env.angle_obs_dims) if self.angle_features else ())


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """[training]: how a model is trained (``train.population``). patience 0 = no early stopping."""

    num_epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5
    patience: int = 0

    def __post_init__(self):
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")

    def train_config(self, model_config: models.ModelConfig, capacity: int):
        """The ``TrainConfig`` for datasets of ``capacity`` rows (the batch never exceeds it)."""
        from mismatch_jax.train.population import TrainConfig

        return TrainConfig(model=model_config, num_epochs=self.num_epochs,
                           batch_size=min(self.batch_size, capacity),
                           patience=self.patience or None, keep_best=True)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """[data]: the dataset a model is trained on (its validation split scores the LL).

    kind: "sampled" / "grid" (cheap, true-env steps from the state-action box) or "on_policy" /
    "expert" (PETS runs, configured by the ``[data.pets]`` table, a ``PetsConfig`` whose env and
    seed are replaced by the study's); the other keys are those of the sweep's ``[datasets]``
    table (``mismatch_jax.sweep.config``).
    """

    kind: Literal["sampled", "grid", "on_policy", "expert"] = "on_policy"
    validation_fraction: float = 0.1
    sampled_size: int = 5000
    grid_points: int = 6
    pets: PetsConfig = PetsConfig()
    expert_episodes: int = 5
    expert_min_reward: float = 179.0
    cache_dir: str = "runs/datasets"

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        for name in ("sampled_size", "expert_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grid_points < 2:
            raise ValueError(f"grid_points must be >= 2, got {self.grid_points}")


def build_dataset(data: DataSettings, env_name: str, seed: int, env, log=print):
    """The ``Transitions`` of ``data.kind`` and the builder's notes (cached on disk like the
    sweep's datasets, ``sweep.study_data``)."""
    from mismatch_jax.sweep.config import DatasetsConfig, SweepConfig, TrainingConfig
    from mismatch_jax.sweep.study_data import build_study_datasets

    sweep = SweepConfig(
        env=env_name, seed=seed,
        training=TrainingConfig(validation_fraction=data.validation_fraction),
        datasets=DatasetsConfig(train=(data.kind,), eval=(data.kind,), pets=data.pets,
                                expert_episodes=data.expert_episodes,
                                expert_min_reward=data.expert_min_reward, grid_points=data.grid_points,
                                sampled_size=data.sampled_size, cache_dir=data.cache_dir))
    built, notes = build_study_datasets(sweep, env, log=log)
    return built[data.kind], notes


def train_model(key, model_config: models.ModelConfig, settings: TrainSettings, dataset):
    """Trains one model on ``dataset`` (Transitions) → (params, normalizer, TrainResult)."""
    from mismatch_jax.data.transitions import TransitionData
    from mismatch_jax.train.population import TrainHParams, make_train

    data = TransitionData.from_dataset(dataset)
    train = make_train(settings.train_config(model_config, data.capacity))
    hp = TrainHParams.population(1, settings.learning_rate, settings.weight_decay)
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


def make_population_evaluator(env, planner, episode_length: int, env_params=None):
    """``evaluate(params [N], normalizer [N], trial_keys [K]) -> rewards [N, K]``: one call runs
    N × K episodes (every model sees the same trial keys: common random numbers). Pure."""
    return jax.vmap(make_episode_evaluator(env, planner, episode_length, env_params), in_axes=(0, 0, None))
