"""PETS configuration: TOML → frozen, validated dataclasses.

A PETS TOML file has top-level keys (``env``, ``num_trials``, ``trial_length``, ``seed``,
``num_seeds``) and three tables, ``[model]``, ``[train]`` and ``[planner]``. Loading is strict:

* an unknown key raises ``ConfigError`` (a ``ValueError``) naming the key, where it is, and the allowed keys;
* a value of the wrong type raises ``ValueError`` naming the key and the expected type
  (ints are accepted where floats are expected; bools are never accepted as numbers);
* impossible values (negative population, elites > population, …) raise ``ValueError`` from the
  shared schemas' declared bounds (``CEMConfig``, ``ModelConfig``, ``TrainingSection``).

Missing keys take the defaults below (the CPU quickstart values). ``PetsConfig.model_config(env)``
/ ``train_config(env)`` / ``cem_config(env)`` build the component configs once the environment's
dimensions are known.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from typing import Any, Mapping, Optional, Union

from mismatch_jax.config_io import Schema, from_dict, load_toml, setting
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.train.config import TrainingSection

DEFAULT_CONFIG = "pets_cartpole_cpu.toml"
"""Package data (mismatch_jax/configs/) used when no config path is given."""


@dataclasses.dataclass(frozen=True)
class PetsTraining(TrainingSection):
    """[train]: model training after every trial — the shared ``TrainingSection`` plus:

    validation_fraction: probability that a collected transition becomes a validation row
        (0: early stopping scores the training rows, as mbrl-lib's PETS cartpole).
    continue_training: start each trial's training from the previous trial's weights (PETS,
        mbrl-lib) instead of a fresh initialisation.
    """

    validation_fraction: float = setting(0.0, ge=0.0, lt=1.0)
    continue_training: bool = True

    def check(self):
        super().check()
        for name in ("learning_rate", "weight_decay"):
            if isinstance(getattr(self, name), tuple):
                raise ValueError(f"PETS trains one model per seed: {name} must be one value, "
                                 f"got {list(getattr(self, name))}")


@dataclasses.dataclass(frozen=True)
class PetsConfig(Schema):
    """A whole PETS run.

    env: registered environment name. num_trials: planned trials after the random one.
    trial_length: steps per trial (0 = the env's episode_length). seed: root seed.
    num_seeds: independent runs (keys fold_in(key(seed), i), i < num_seeds).
    model: the ensemble (``[model] angle_dims = [1]`` gives the cart-pole's θ to the model as
    (sin, cos) inputs, PETS's preprocessing); train: ``PetsTraining``; planner: ``CEMConfig``.
    """

    env: str = "cartpole_swingup"
    num_trials: int = setting(10, ge=1)
    trial_length: int = setting(0, ge=0)
    seed: int = setting(0, ge=0)
    num_seeds: int = setting(1, ge=1)
    model: ModelConfig = ModelConfig(kind="PE", ensemble_size=5)
    train: PetsTraining = PetsTraining(num_epochs=25)
    planner: CEMConfig = CEMConfig()

    def steps_per_trial(self, env) -> int:
        """Steps per trial in ``env``."""
        return self.trial_length or int(env.episode_length)

    def model_config(self, env) -> ModelConfig:
        """The model bound to ``env``'s sizes."""
        return self.model.for_env(env)

    def cem_config(self, env) -> CEMConfig:
        """The planner bound to ``env``'s action box."""
        return self.planner.for_env(env)


# ------------------------------------------------------------------------------------------------
# Strict loading (shared machinery: mismatch_jax.config_io)
# ------------------------------------------------------------------------------------------------


def pets_config_from_dict(table: Mapping[str, Any]) -> PetsConfig:
    """Strictly validated PetsConfig from a parsed TOML mapping (raises ConfigError ⊂ ValueError)."""
    return from_dict(PetsConfig, table)


def load_pets_config(path: Optional[Union[str, os.PathLike]] = None) -> PetsConfig:
    """Loads a PETS TOML file (None: the packaged CPU quickstart ``configs/pets_cartpole_cpu.toml``)."""
    if path is not None:
        return load_toml(PetsConfig, path)
    text = importlib.resources.files("mismatch_jax").joinpath("configs", DEFAULT_CONFIG).read_text()
    return from_dict(PetsConfig, tomllib.loads(text))
