"""PETS configuration: TOML → frozen, validated dataclasses.

A PETS TOML file has top-level keys (``env``, ``num_trials``, ``trial_length``, ``seed``,
``num_seeds``) and three tables, ``[model]``, ``[train]`` and ``[planner]``. Loading is strict:

* an unknown key raises ``ConfigError`` (a ``ValueError``) naming the key, where it is, and the allowed keys;
* a value of the wrong type raises ``ValueError`` naming the key and the expected type
  (ints are accepted where floats are expected; bools are never accepted as numbers);
* impossible values (negative population, elites > population, …) raise ``ValueError`` from the
  dataclasses' own checks (``CEMConfig``, ``ModelConfig``, ``TrainConfig`` and the sections here).

Missing keys take the defaults below (the CPU quickstart values). ``PetsConfig.model_config(env)``
/ ``train_config(env)`` / ``cem_config(env)`` build the component configs once the environment's
dimensions are known.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
from typing import Any, Literal, Mapping, Optional, Union

from mismatch_jax.config_io import from_dict, load_toml
from mismatch_jax.models.core import MODEL_KINDS, ModelConfig
from mismatch_jax.planning.cem import CEMConfig

DEFAULT_CONFIG = "pets_cartpole_cpu.toml"
"""Package data (mismatch_jax/configs/) used when no config path is given."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """[model]: the dynamics model trained by PETS (see models.ModelConfig)."""

    kind: Literal["P", "PE", "D", "DE"] = "PE"
    ensemble_size: int = 5
    hidden_size: int = 200
    num_hidden_layers: int = 4
    activation: Literal["silu", "relu", "tanh", "elu"] = "silu"

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"[model] kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        for name in ("ensemble_size", "hidden_size", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"[model] {name} must be >= 1, got {getattr(self, name)}")
        if self.kind in ("P", "D") and self.ensemble_size != 1:
            raise ValueError(
                f"[model] ensemble_size must be 1 for kind {self.kind!r} (got {self.ensemble_size}); "
                f"use kind {self.kind + 'E'!r} for an ensemble"
            )


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """[train]: model training after every trial (see train.population.TrainConfig).

    num_epochs: epochs per trial (upper bound with patience). batch_size: minibatch size.
    patience: early-stopping patience in epochs (0 = never stop early).
    learning_rate / weight_decay: Adam step size and L2 weight decay.
    validation_fraction: probability that a collected transition becomes a validation row
        (0: early stopping scores the training rows, as mbrl-lib's PETS cartpole).
    keep_best: return the best-validation parameters (mbrl-lib) instead of the last.
    bootstrap: each ensemble member trains on its own bootstrap resample.
    continue_training: start each trial's training from the previous trial's weights (PETS,
        mbrl-lib) instead of a fresh initialisation.
    """

    num_epochs: int = 25
    batch_size: int = 256
    patience: int = 0
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5
    validation_fraction: float = 0.0
    keep_best: bool = True
    bootstrap: bool = True
    continue_training: bool = True

    def __post_init__(self):
        for name in ("num_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"[train] {name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"[train] patience must be >= 0 (0 = off), got {self.patience}")
        if not self.learning_rate > 0:
            raise ValueError(f"[train] learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"[train] weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"[train] validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class PlannerSection:
    """[planner]: CEM-MPC settings (see planning.cem.CEMConfig; bounds come from the env)."""

    horizon: int = 15
    population_size: int = 350
    num_elites: int = 35
    num_iterations: int = 5
    alpha: float = 0.1
    propagation: Literal["expectation", "ts1", "tsinf"] = "expectation"
    num_particles: int = 20
    sampling: Literal["truncated_normal", "clipped_normal"] = "truncated_normal"
    return_mean_elites: bool = True

    def __post_init__(self):
        # Validate now (with a dummy box) so that bad values fail at load time.
        self.to_cem((-1.0,), (1.0,))

    def to_cem(self, low, high) -> CEMConfig:
        return CEMConfig(**dataclasses.asdict(self)).with_bounds(low, high)


@dataclasses.dataclass(frozen=True)
class PetsConfig:
    """A whole PETS run.

    env: registered environment name. num_trials: planned trials after the random one.
    trial_length: steps per trial (0 = the env's episode_length). seed: root seed.
    num_seeds: independent runs (keys fold_in(key(seed), i), i < num_seeds).
    angle_dims: observation dims that are unbounded angles; the model sees each as (sin, cos)
        inputs (PETS's cart-pole preprocessing; [1] for cartpole_swingup's θ).
    """

    env: str = "cartpole_swingup"
    num_trials: int = 10
    trial_length: int = 0
    seed: int = 0
    num_seeds: int = 1
    angle_dims: tuple[int, ...] = ()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    planner: PlannerSection = PlannerSection()

    def __post_init__(self):
        if self.num_trials < 1:
            raise ValueError(f"num_trials must be >= 1, got {self.num_trials}")
        if self.trial_length < 0:
            raise ValueError(f"trial_length must be >= 0 (0 = env episode length), got {self.trial_length}")
        if self.num_seeds < 1:
            raise ValueError(f"num_seeds must be >= 1, got {self.num_seeds}")

        if any(d < 0 for d in self.angle_dims) or len(set(self.angle_dims)) != len(self.angle_dims):
            raise ValueError(f"angle_dims must be distinct non-negative indices, got {self.angle_dims}")

    def steps_per_trial(self, env) -> int:
        return self.trial_length or int(env.episode_length)

    def model_config(self, env) -> ModelConfig:
        m = self.model
        return ModelConfig(kind=m.kind, obs_dim=env.obs_dim, action_dim=env.action_dim,
                           hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                           ensemble_size=m.ensemble_size, activation=m.activation,
                           angle_dims=self.angle_dims)

    def cem_config(self, env) -> CEMConfig:
        return self.planner.to_cem(env.action_low, env.action_high)


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
