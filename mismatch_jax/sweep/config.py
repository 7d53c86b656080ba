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
from mismatch_jax.sweep.env_params import EnvParamsConfig, check_for_env
from mismatch_jax.train.config import TrainingSection

DATASET_KINDS = ("expert", "on_policy", "grid", "sampled")


@dataclasses.dataclass(frozen=True)
class PopulationConfig(Schema):
    """Which models are trained: model_types × train datasets × replicates, each with the
    architecture of ``model`` (``[population.model]``; its kind is set by model_types and its
    ensemble_size applies to the ensemble types PE / DE). With ``model.angle_features`` the env's
    winding angles (``Env.angle_obs_dims``) reach the models as (sin, cos), as PETS does for the
    cart-pole; likelihoods stay in original units either way.

    source: "datasets" — every (model type × train dataset in ``datasets.train``) gets
    ``replicates`` models trained on that dataset (Fig. 4, 5 and the re-weighting study);
    "pets" — the population is what PETS runs produce (Lambert et al. 2020, §4.1: "models
    trained with PETS"): for each of the ``datasets.pets.num_seeds`` runs and each planned trial
    k of its ``num_trials``, ``replicates`` models of every type trained afresh (own init key and
    hyper-parameter draw) on the run's aggregated data before trial k, the data PETS itself fits
    before planning trial k; with ``pets_models`` also PETS's own model of every (seed, trial)
    (model type "PETS"). Each is scored on every ``datasets.eval`` set; its expert / on-policy
    sets come from the *other* seeds' runs, which no model of its seed was trained on.
    deterministic_ll: the variance a D / DE model's LL is scored with — "validation_mse": each
    member's own per-dimension mean squared residual on its validation rows (the
    maximum-likelihood homoscedastic Gaussian), "unit": σ² = the target's variance (unit
    variance in normalised units, the convention before the PETS-population study). Either way a
    D model's LL is defined differently from a P model's and the two are never pooled."""

    model_types: tuple[Literal["P", "PE", "D", "DE"], ...] = ("P", "PE", "D", "DE")
    replicates: int = setting(8, ge=1)
    model: ModelConfig = ModelConfig(kind="PE", ensemble_size=5, angle_features=True)
    source: Literal["datasets", "pets"] = "datasets"
    pets_models: bool = True
    deterministic_ll: Literal["validation_mse", "unit"] = "validation_mse"

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
    ``expert_min_reward`` (the paper: cartpole r > 179, strictly; 0 episodes = every trial that
    passes). If no trial passes, the best trials are used and the manifest says so.
    grid: ``grid_points`` per state-action dimension; sampled: ``sampled_size`` uniform tuples.
    """

    pets: PetsConfig = PetsConfig()
    expert_episodes: int = setting(5, ge=0)
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


COMPETENCE_TRIALS = 5


@dataclasses.dataclass(frozen=True)
class CompetenceTarget(Schema):
    """``[competence]``: whether the sweep checks its controller before scoring the population
    (``enabled``; it needs the PETS runs of on_policy / expert data), and what a competent
    controller earns with the expert model and an untrained one on ``trials`` full episodes."""

    enabled: bool = False
    trials: int = setting(COMPETENCE_TRIALS, ge=1)
    expert_threshold: float = 170.0
    min_expert_successes: int = setting(4, ge=1)
    untrained_ceiling: float = 50.0

    def check(self):
        if self.min_expert_successes > self.trials:
            raise ValueError(f"min_expert_successes ({self.min_expert_successes}) exceeds trials ({self.trials})")


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
        if self.pets_source:
            if self.dynamics.enabled:
                raise ValueError("population.source = 'pets' does not take an [env_params] section yet; "
                                 "remove [env_params] or use population.source = 'datasets'")
            if self.datasets.pets.num_seeds < 2:
                raise ValueError(f"population.source = 'pets' needs datasets.pets.num_seeds >= 2 (got "
                                 f"{self.datasets.pets.num_seeds}): a model's expert and on-policy LL are "
                                 "scored on the other seeds' runs")
            if len(self.training.eval_epochs) != 1:
                raise ValueError(f"population.source = 'pets' scores each model once: training.eval_epochs must "
                                 f"list one epoch, got {list(self.training.eval_epochs)} (per-epoch curves are "
                                 "population.source = 'datasets')")

    @property
    def pets_source(self) -> bool:
        """Whether the population is the models of PETS runs (``population.source = "pets"``)."""
        return self.population.source == "pets"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The model types of the population in index order: ``model_types`` and, for a PETS
        population with ``pets_models``, "PETS" (PETS's own per-trial models) last."""
        extra = ("PETS",) if self.pets_source and self.population.pets_models else ()
        return tuple(self.population.model_types) + extra

    def model_config_of(self, kind: str, env) -> ModelConfig:
        """The bound ModelConfig of model type ``kind`` ("PETS": the PETS runs' own model)."""
        if kind == "PETS":
            return self.datasets.pets.model_config(env)
        return self.population.model_of(kind, env)

    def count_of(self, kind: str) -> int:
        """Models of type ``kind``: ``models_per_type``, or one per (seed, trial) for "PETS"."""
        if kind == "PETS":
            return self.datasets.pets.num_seeds * self.datasets.pets.num_trials
        return self.models_per_type

    def type_ranges(self) -> list[tuple[str, int, int]]:
        """(kind, first global index, count) of every model type, in index order."""
        ranges, first = [], 0
        for kind in self.kinds:
            ranges.append((kind, first, self.count_of(kind)))
            first += self.count_of(kind)
        return ranges

    @property
    def dynamics(self) -> EnvParamsConfig:
        """The ``[env_params]`` section (an empty one when absent)."""
        return self.env_params or EnvParamsConfig()

    @property
    def num_models(self) -> int:
        """Models in the sweep: the sum over ``kinds`` of ``count_of``."""
        return sum(self.count_of(kind) for kind in self.kinds)

    @property
    def models_per_type(self) -> int:
        """Models of each trained type: env settings ([env_params], 1 without it) × train datasets ×
        replicates; for a PETS population seeds × trials × replicates."""
        if self.pets_source:
            pets = self.datasets.pets
            return pets.num_seeds * pets.num_trials * self.population.replicates
        return self.dynamics.num_settings * len(self.datasets.train) * self.population.replicates

    def _locate(self, index: int) -> tuple[str, int]:
        """(model type, index within its type) of global model ``index``."""
        if not 0 <= index < self.num_models:
            raise IndexError(f"model index {index} outside [0, {self.num_models})")
        for kind, first, count in self.type_ranges():
            if index < first + count:
                return kind, index - first
        raise AssertionError("unreachable")

    def pets_provenance(self, index: int) -> tuple[int, int, int]:
        """(PETS seed, trial k, copy) of model ``index`` of a PETS population: trained on the
        seed's data before its planned trial k (1-based: trial 0 is the random one), copy-th
        fresh fit (0 for PETS's own model). Within a type: seeds, then trials, then copies."""
        kind, local = self._locate(index)
        trials = self.datasets.pets.num_trials
        copies = 1 if kind == "PETS" else self.population.replicates
        return local // (trials * copies), (local // copies) % trials + 1, local % copies

    def model_spec(self, index: int) -> tuple[str, str, int]:
        """(model type, train dataset, replicate) of global model ``index`` — types outermost,
        so every compiled chunk holds one model type; then env settings (``model_setting``),
        train datasets, replicates. A PETS population's train dataset is "pets" and its
        replicate the copy (``pets_provenance``)."""
        kind, local = self._locate(index)
        if self.pets_source:
            return kind, "pets", self.pets_provenance(index)[2]
        rest = local % (len(self.datasets.train) * self.population.replicates)
        return kind, self.datasets.train[rest // self.population.replicates], rest % self.population.replicates

    def model_setting(self, index: int) -> int:
        """The env setting (index into the ``[env_params]`` settings) of global model ``index``."""
        if self.pets_source:
            return 0
        return (index % self.models_per_type) // (len(self.datasets.train) * self.population.replicates)

    def model_eval_group(self, index: int) -> int:
        """Which of the stacked evaluation sets model ``index`` is scored on: its env setting, or
        for a PETS population its seed (whose held-out sets leave that seed's runs out)."""
        return self.pets_provenance(index)[0] if self.pets_source else self.model_setting(index)

    def model_dataset_index(self, index: int) -> int:
        """Row of the stacked train data (``chunk.stack_study_data``) model ``index`` trains on:
        setting × train datasets + train dataset; for a PETS population seed × trials + trial − 1
        (PETS's own models: the row of its per-trial models)."""
        if self.pets_source:
            seed, trial, _ = self.pets_provenance(index)
            return seed * self.datasets.pets.num_trials + trial - 1
        return self.model_setting(index) * len(self.datasets.train) + self.datasets.train.index(self.model_spec(index)[1])


def load(path) -> SweepConfig:
    """Loads and validates a sweep TOML file."""
    return load_toml(SweepConfig, path)
