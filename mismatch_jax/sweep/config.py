"""Schema of a sweep config (one TOML file → frozen, validated ``SweepConfig``).

Example (``sweeps/quickstart.toml``)::

    name = "quickstart"
    env = "cartpole_swingup"
    seed = 0
    out_dir = "runs/quickstart"

    [population]            # which models: every (model type × train dataset) gets `replicates`
    model_types = ["P", "D"]
    replicates = 8
    hidden_size = 32
    num_hidden_layers = 2
    ensemble_size = 5         # members of PE/DE models

    [training]
    num_epochs = 20
    eval_epochs = [5, 20]     # rows of the results table: one per model × eval epoch
    batch_size = 64
    learning_rate = [3e-4, 3e-3]   # one value, or [low, high] sampled log-uniformly per model
    weight_decay = 5e-5

    [datasets]
    train = ["expert", "on_policy", "grid"]
    eval = ["expert", "on_policy", "grid", "sampled"]

    [cem]                     # the controller that scores each model
    horizon = 10
    ...

    [evaluation]
    trials = 2                # CEM episodes in the true env per model and eval epoch
    episode_length = 100

    [run]
    chunk_size = 64           # models per compiled call (0 = as large as memory_gb allows)
    memory_gb = 4.0

Every key is checked before anything is compiled: unknown keys, wrong types and impossible values
raise ``ConfigError`` naming the key (see ``mismatch_jax.config_io``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from mismatch_jax.agents.config import PetsConfig, PlannerSection
from mismatch_jax.config_io import load_toml, to_dict
from mismatch_jax.planning.cem import CEMConfig

DATASET_KINDS = ("expert", "on_policy", "grid", "sampled")


@dataclasses.dataclass(frozen=True)
class PopulationConfig:
    """Which models are trained: model_types × train datasets × replicates.
    angle_features: feed the env's winding angles (``Env.angle_obs_dims``) to the models as
    (sin, cos), as PETS does for the cart-pole; likelihoods stay in original units either way."""

    model_types: tuple[str, ...] = ("P", "PE", "D", "DE")
    replicates: int = 8
    hidden_size: int = 200
    num_hidden_layers: int = 4
    ensemble_size: int = 5
    activation: str = "silu"
    angle_features: bool = True

    def __post_init__(self):
        allowed = ("P", "PE", "D", "DE")
        if not self.model_types:
            raise ValueError("model_types must name at least one of P, PE, D, DE")
        for kind in self.model_types:
            if kind not in allowed:
                raise ValueError(f"model_types: {kind!r} is not one of {list(allowed)}")
        if len(set(self.model_types)) != len(self.model_types):
            raise ValueError(f"model_types has duplicates: {list(self.model_types)}")
        for name in ("replicates", "hidden_size", "num_hidden_layers", "ensemble_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How each model is trained. learning_rate / weight_decay: one value, or [low, high]
    drawn log-uniformly per model from its own key (a population of hyper-parameters)."""

    num_epochs: int = 50
    eval_epochs: tuple[int, ...] = (50,)
    batch_size: int = 256
    learning_rate: Union[float, tuple[float, float]] = 1e-3
    weight_decay: Union[float, tuple[float, float]] = 5e-5
    patience: Optional[int] = None
    validation_fraction: float = 0.1

    def __post_init__(self):
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}")
        if not self.eval_epochs:
            raise ValueError("eval_epochs must list at least one epoch")
        if list(self.eval_epochs) != sorted(set(self.eval_epochs)):
            raise ValueError(f"eval_epochs must be strictly increasing, got {list(self.eval_epochs)}")
        if self.eval_epochs[0] < 1 or self.eval_epochs[-1] > self.num_epochs:
            raise ValueError(f"eval_epochs must lie in [1, num_epochs={self.num_epochs}], got {list(self.eval_epochs)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if any(v < 0 for v in values) or (name == "learning_rate" and any(v == 0 for v in values)):
                raise ValueError(f"{name} must be positive, got {value}")
            if isinstance(value, tuple) and not values[0] <= values[1]:
                raise ValueError(f"{name} range must be [low, high] with low <= high, got {list(value)}")
            if isinstance(value, tuple) and values[0] == 0:
                raise ValueError(f"{name} range must be > 0 for log-uniform sampling, got {list(value)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or omitted), got {self.patience}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


@dataclasses.dataclass(frozen=True)
class DatasetsConfig:
    """Datasets to train on and to evaluate the one-step LL on, and how each is built.

    on_policy: every transition of the PETS runs configured by the ``[datasets.pets]`` table
    (a PETS config, see ``mismatch_jax.agents.config.PetsConfig``; its env and seed are replaced
    by the sweep's; ``num_seeds`` runs).
    expert: the ``expert_episodes`` best planned trials of those runs whose reward exceeds
    ``expert_min_reward`` (the paper: cartpole r > 179). If no trial passes, the best trials are
    used and the manifest says so.
    grid: ``grid_points`` per state-action dimension; sampled: ``sampled_size`` uniform tuples.
    """

    train: tuple[str, ...] = ("expert", "on_policy", "grid")
    eval: tuple[str, ...] = DATASET_KINDS
    pets: PetsConfig = PetsConfig()
    expert_episodes: int = 5
    expert_min_reward: float = 179.0
    grid_points: int = 6
    sampled_size: int = 5000
    cache_dir: str = "runs/datasets"

    def __post_init__(self):
        for field in ("train", "eval"):
            names = getattr(self, field)
            if not names:
                raise ValueError(f"{field} must list at least one of {list(DATASET_KINDS)}")
            for name in names:
                if name not in DATASET_KINDS:
                    raise ValueError(f"{field}: {name!r} is not one of {list(DATASET_KINDS)}")
        for name in ("expert_episodes", "sampled_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grid_points < 2:
            raise ValueError(f"grid_points must be >= 2, got {self.grid_points}")


@dataclasses.dataclass(frozen=True)
class CEMSettings(PlannerSection):
    """The CEM-MPC controller that turns each model into episode reward: PETS's ``[planner]``
    table (same keys and checks) with Lambert et al.'s settings (H = 25, 400 candidates, 40
    elites) as defaults."""

    horizon: int = 25
    population_size: int = 400
    num_elites: int = 40

    def for_env(self, env) -> CEMConfig:
        """The CEMConfig bound to ``env``'s action box."""
        return self.to_cem(env.action_low, env.action_high)


@dataclasses.dataclass(frozen=True)
class EpisodeSettings:
    """CEM-MPC episodes in the true env per scored model: ``trials`` episodes of
    ``episode_length`` steps (0 = the env's episode length). Shared with ``experiments.study_models``."""

    trials: int = 5
    episode_length: int = 0

    def __post_init__(self):
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.episode_length < 0:
            raise ValueError(f"episode_length must be >= 0 (0 = env default), got {self.episode_length}")

    def length(self, env) -> int:
        """Steps per episode in ``env``."""
        return self.episode_length or int(env.episode_length)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(EpisodeSettings):
    """Episodes in the true environment per model and evaluated epoch."""

    trials: int = 10
    episode_length: int = 200


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Execution: models per compiled chunk (0 = derive from memory_gb) and the memory cap."""

    chunk_size: int = 0
    memory_gb: float = 4.0

    def __post_init__(self):
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0 = automatic), got {self.chunk_size}")
        if not self.memory_gb > 0:
            raise ValueError(f"memory_gb must be > 0, got {self.memory_gb}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole LL-vs-reward population sweep (Lambert et al. 2020, Fig. 3–5)."""

    env: str
    name: str = "sweep"
    seed: int = 0
    out_dir: str = "runs/sweep"
    population: PopulationConfig = PopulationConfig()
    training: TrainingConfig = TrainingConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    cem: CEMSettings = CEMSettings()
    evaluation: EvaluationConfig = EvaluationConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self):
        from mismatch_jax.envs import available

        if self.env not in available():
            raise ValueError(f"env: unknown environment {self.env!r}; available: {', '.join(available())}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def num_models(self) -> int:
        """Models in the sweep: model types × train datasets × replicates."""
        return len(self.population.model_types) * len(self.datasets.train) * self.population.replicates

    def model_spec(self, index: int) -> tuple[str, str, int]:
        """(model type, train dataset, replicate) of global model ``index`` — types outermost,
        so every compiled chunk holds one model type."""
        if not 0 <= index < self.num_models:
            raise IndexError(f"model index {index} outside [0, {self.num_models})")
        per_type = len(self.datasets.train) * self.population.replicates
        kind = self.population.model_types[index // per_type]
        rest = index % per_type
        return kind, self.datasets.train[rest // self.population.replicates], rest % self.population.replicates


def load(path) -> SweepConfig:
    """Loads and validates a sweep TOML file."""
    return load_toml(SweepConfig, path)


def to_toml(config: SweepConfig) -> str:
    """The resolved config as TOML text (every default written out)."""
    data = to_dict(config)
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    def tables(prefix, table):
        lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items()
                     if v is not None and not isinstance(v, dict))
        for k, v in table.items():
            if isinstance(v, dict):
                tables(f"{prefix}.{k}", v)

    for key, value in data.items():
        if isinstance(value, dict):
            tables(key, value)
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
