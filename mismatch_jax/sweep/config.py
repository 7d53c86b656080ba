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

    [run.layout]              # vmap / map over groups of models / auto (the backend's default)
    strategy = "auto"

Every key is checked before anything is compiled: unknown keys, wrong types and impossible values
raise ``ConfigError`` naming the key (see ``mismatch_jax.config_io``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from mismatch_jax.agents.config import PetsConfig
from mismatch_jax.config_io import Schema, load_toml, setting
from mismatch_jax.envs.registry import check_env
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import EpisodeSettings
from mismatch_jax.population import PopulationLayout
from mismatch_jax.sweep.competence import CompetenceTarget
from mismatch_jax.sweep.env_params import EnvParamsConfig, check_for_env
from mismatch_jax.train.config import TrainingSection

DATASET_KINDS = ("expert", "on_policy", "grid", "sampled")


@dataclasses.dataclass(frozen=True)
class PopulationConfig(Schema):
    """Which models are trained: model_types × train datasets × replicates, each with the
    architecture of ``model`` (``[population.model]``; its kind is set by model_types and its
    ensemble_size applies to the ensemble types PE / DE). With ``model.angle_features`` the env's
    winding angles (``Env.angle_obs_dims``) reach the models as (sin, cos), as PETS does for the
    cart-pole; likelihoods stay in original units either way."""

    model_types: tuple[Literal["P", "PE", "D", "DE"], ...] = ("P", "PE", "D", "DE")
    replicates: int = setting(8, ge=1)
    model: ModelConfig = ModelConfig(kind="PE", ensemble_size=5, angle_features=True)

    def check(self):
        if not self.model_types:
            raise ValueError("model_types must name at least one of P, PE, D, DE")
        if len(set(self.model_types)) != len(self.model_types):
            raise ValueError(f"model_types has duplicates: {list(self.model_types)}")

    def model_of(self, kind: str, env) -> ModelConfig:
        """The bound ModelConfig of model type ``kind`` for ``env``."""
        ensemble = self.model.ensemble_size if kind.endswith("E") else 1
        return dataclasses.replace(self.model, kind=kind, ensemble_size=ensemble).for_env(env)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(TrainingSection):
    """[training]: the shared ``TrainingSection`` (learning_rate / weight_decay: one value, or
    [low, high] drawn log-uniformly per model from its own key — a population of
    hyper-parameters) plus the epochs that become rows of the results table, the fraction of
    every dataset held out for validation (the LL axis), and ``divergence_factor``: a model whose
    validation MSE on its own dataset rises above this many times its untrained value (or whose
    metrics are not finite) is flagged diverged on all its rows and left out of correlations."""

    eval_epochs: tuple[int, ...] = (50,)
    validation_fraction: float = setting(0.1, gt=0.0, lt=1.0)
    keep_best: bool = False  # the rows are the kept eval epochs, not a best epoch
    divergence_factor: float = setting(1e3, gt=1.0)

    def check(self):
        super().check()
        if not self.eval_epochs:
            raise ValueError("eval_epochs must list at least one epoch")
        if list(self.eval_epochs) != sorted(set(self.eval_epochs)):
            raise ValueError(f"eval_epochs must be strictly increasing, got {list(self.eval_epochs)}")
        if self.eval_epochs[0] < 1 or self.eval_epochs[-1] > self.num_epochs:
            raise ValueError(f"eval_epochs must lie in [1, num_epochs={self.num_epochs}], got {list(self.eval_epochs)}")


@dataclasses.dataclass(frozen=True)
class DatasetBuild(Schema):
    """How each study dataset is built (shared by the sweep's ``[datasets]`` and the attack's /
    re-weighting's ``[data]``).

    on_policy: every transition of the PETS runs configured by the ``pets`` table (a PETS
    config, see ``mismatch_jax.agents.config.PetsConfig``; its env and seed are replaced by the
    study's; ``num_seeds`` runs).
    expert: the ``expert_episodes`` best planned trials of those runs whose reward exceeds
    ``expert_min_reward`` (the paper: cartpole r > 179). If no trial passes, the best trials are
    used and the manifest says so.
    grid: ``grid_points`` per state-action dimension; sampled: ``sampled_size`` uniform tuples.
    """

    pets: PetsConfig = PetsConfig()
    expert_episodes: int = setting(5, ge=1)
    expert_min_reward: float = 179.0
    grid_points: int = setting(6, ge=2)
    sampled_size: int = setting(5000, ge=1)
    cache_dir: str = "runs/datasets"


@dataclasses.dataclass(frozen=True)
class DatasetsConfig(DatasetBuild):
    """[datasets]: the datasets to train on and to evaluate the one-step LL on, and how each is
    built (``DatasetBuild``)."""

    train: tuple[Literal["expert", "on_policy", "grid", "sampled"], ...] = ("expert", "on_policy", "grid")
    eval: tuple[Literal["expert", "on_policy", "grid", "sampled"], ...] = DATASET_KINDS

    def check(self):
        for field in ("train", "eval"):
            names = getattr(self, field)
            if not names:
                raise ValueError(f"{field} must list at least one of {list(DATASET_KINDS)}")
            for name in names:
                if name not in DATASET_KINDS:
                    raise ValueError(f"{field}: {name!r} is not one of {list(DATASET_KINDS)}")


@dataclasses.dataclass(frozen=True)
class RunConfig(Schema):
    """Execution: models per compiled chunk (0 = derive from memory_gb), the memory cap, and how
    a chunk's models are laid out on the hardware (``[run.layout]``: ``mismatch_jax.population``;
    the numbers do not depend on it beyond float reassociation)."""

    chunk_size: int = setting(0, ge=0)
    memory_gb: float = setting(4.0, gt=0.0)
    layout: PopulationLayout = PopulationLayout()


@dataclasses.dataclass(frozen=True)
class SweepConfig(Schema):
    """A whole LL-vs-reward population sweep (Lambert et al. 2020, Fig. 3–5)."""

    env: str
    name: str = "sweep"
    seed: int = setting(0, ge=0)
    out_dir: str = "runs/sweep"
    population: PopulationConfig = PopulationConfig()
    training: TrainingConfig = TrainingConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    cem: CEMConfig = CEMConfig(horizon=25, population_size=400, num_elites=40)  # Lambert et al.
    evaluation: EpisodeSettings = EpisodeSettings(trials=10, episode_length=200)
    competence: CompetenceTarget = CompetenceTarget()
    # None (not an empty section) when absent, so configs without it keep their resolved TOML
    # and config hash (an output directory written before the section existed still resumes).
    env_params: EnvParamsConfig | None = None
    run: RunConfig = RunConfig()

    def check(self):
        check_env(self.env)
        if self.dynamics.enabled:
            from mismatch_jax.envs import make

            check_for_env(self.dynamics, make(self.env))

    @property
    def dynamics(self) -> EnvParamsConfig:
        """The ``[env_params]`` section (an empty one when absent)."""
        return self.env_params or EnvParamsConfig()

    @property
    def num_models(self) -> int:
        """Models in the sweep: model types × env settings × train datasets × replicates."""
        return len(self.population.model_types) * self.models_per_type

    @property
    def models_per_type(self) -> int:
        """env settings (``[env_params]``, 1 without it) × train datasets × replicates."""
        return self.dynamics.num_settings * len(self.datasets.train) * self.population.replicates

    def model_spec(self, index: int) -> tuple[str, str, int]:
        """(model type, train dataset, replicate) of global model ``index`` — types outermost,
        so every compiled chunk holds one model type; then env settings (``model_setting``),
        train datasets, replicates."""
        if not 0 <= index < self.num_models:
            raise IndexError(f"model index {index} outside [0, {self.num_models})")
        kind = self.population.model_types[index // self.models_per_type]
        rest = index % (len(self.datasets.train) * self.population.replicates)
        return kind, self.datasets.train[rest // self.population.replicates], rest % self.population.replicates

    def model_setting(self, index: int) -> int:
        """The env setting (index into the ``[env_params]`` settings) of global model ``index``."""
        return (index % self.models_per_type) // (len(self.datasets.train) * self.population.replicates)

    def model_dataset_index(self, index: int) -> int:
        """Row of the stacked train data (``chunk.stack_study_data``) model ``index`` trains on:
        setting × train datasets + train dataset."""
        return self.model_setting(index) * len(self.datasets.train) + self.datasets.train.index(self.model_spec(index)[1])


def load(path) -> SweepConfig:
    """Loads and validates a sweep TOML file."""
    return load_toml(SweepConfig, path)
