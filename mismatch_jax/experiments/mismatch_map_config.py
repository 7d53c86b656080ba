"""The mismatch map's configuration (``mismatch-jax mismatch-map CONFIG``): the SAC run behind the
value function, which replay rows the models see, the model populations (a ``TrainingSection``
plus widths and kept epochs), the VaGraM and MnM settings, the planner (a ``CEMConfig``) and the
evaluation (an ``EpisodeSettings``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mismatch_jax.agents import sac_config
from mismatch_jax.config_io import Schema, from_dict, load_toml, setting
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import EpisodeSettings
from mismatch_jax.train import TrainingSection

LOSSES = ("nll", "vagram", "mnm")
"""The model losses whose populations the map compares."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig(Schema):
    """Which SAC replay rows the models see. max_rows: a random subset of the buffer (all rows
    if larger); heldout_fraction of them are held out (scoring and the trainer's validation)."""

    max_rows: int = setting(20_000, ge=10)
    heldout_fraction: float = setting(0.2, gt=0.0, lt=1.0)


@dataclasses.dataclass(frozen=True)
class PopulationConfig(TrainingSection):
    """Models per loss: num_models × len(hidden_sizes) P models of num_hidden_layers, each kept
    at keep_epochs, trained as the shared ``TrainingSection`` says (learning_rate: [low, high],
    drawn log-uniformly per model — the same values for every loss)."""

    num_models: int = setting(32, ge=1)
    hidden_sizes: tuple[int, ...] = setting((200,), ge=1)
    num_hidden_layers: int = setting(3, ge=1)
    keep_epochs: tuple[int, ...] = (5, 20, 60)
    keep_best: bool = False  # the rows are the kept epochs
    bootstrap: bool = False

    def check(self):
        super().check()
        if not self.hidden_sizes:
            raise ValueError("hidden_sizes must list at least one width")
        keep = self.keep_epochs
        if not keep or any(e < 1 or e > self.num_epochs for e in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"keep_epochs must be distinct epochs in [1, num_epochs={self.num_epochs}], got {keep}")
        if not isinstance(self.learning_rate, tuple):
            raise ValueError(f"learning_rate must be a [low, high] range here, got {self.learning_rate}")
        self.fixed("weight_decay")


@dataclasses.dataclass(frozen=True)
class VagramConfig(Schema):
    """clip_percentile: value-gradient norm clip (appendix E); regularizer: the λ of Sec. 3.2."""

    clip_percentile: float = setting(95.0, gt=0.0, le=100.0)
    regularizer: float = setting(0.0, ge=0.0)


@dataclasses.dataclass(frozen=True)
class MnmConfig(Schema):
    """rounds: classifier/model alternations (must divide population.num_epochs);
    classifier_steps: Adam steps of the classifier per round (batch classifier_batch_size);
    reduce: "min" or "mean" over the critics in the value term."""

    rounds: int = setting(4, ge=1)
    classifier_hidden_size: int = setting(256, ge=1)
    classifier_layers: int = setting(2, ge=1)
    classifier_steps: int = setting(2000, ge=1)
    classifier_batch_size: int = setting(256, ge=1)
    classifier_lr: float = setting(3e-4, gt=0.0)
    reduce: Literal["min", "mean"] = "min"


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(EpisodeSettings):
    """trials: MPC episodes per model (same start states for every model); episode_length: env
    steps per episode; terminal_value: add γ^H min_k V_k(s_H) to every planned return;
    model_chunk: models per vectorised MPC batch (memory); num_bootstrap: CI resamples."""

    terminal_value: bool = True
    model_chunk: int = setting(64, ge=1)
    num_bootstrap: int = setting(2000, ge=1)


@dataclasses.dataclass(frozen=True)
class MismatchMapConfig(Schema):
    """The whole experiment (TOML: top-level keys + tables [sac], [data], [population], [vagram],
    [mnm], [planner], [evaluation]). ``variance_head``: VaGraM/MnM models also fit their
    log-variance by NLL around the stop-gradient mean (see the module docstring)."""

    name: str = "mismatch_map"
    env: str = "pendulum"
    seed: int = setting(0, ge=0)
    out_dir: str = "runs/mismatch_map"
    losses: tuple[str, ...] = LOSSES
    variance_head: bool = True
    sac: sac_config.SACConfig = sac_config.SACConfig()
    data: DataConfig = DataConfig()
    population: PopulationConfig = PopulationConfig(num_epochs=60, learning_rate=(1e-4, 3e-3))
    vagram: VagramConfig = VagramConfig()
    mnm: MnmConfig = MnmConfig()
    planner: CEMConfig = CEMConfig(population_size=200, num_elites=20)  # expectation propagation
    evaluation: EvaluationConfig = EvaluationConfig(trials=3, episode_length=200)

    def check(self):
        if not self.losses or any(l not in LOSSES for l in self.losses) or len(set(self.losses)) != len(self.losses):
            raise ValueError(f"losses must be distinct names from {LOSSES}, got {self.losses}")
        if self.planner.propagation != "expectation":
            raise ValueError("planner.propagation must be 'expectation': the value planner rolls the "
                             f"models' mean prediction, got {self.planner.propagation!r}")
        if self.sac.env != self.env:
            raise ValueError(f"sac.env ({self.sac.env!r}) must equal env ({self.env!r})")
        if "mnm" in self.losses and self.population.num_epochs % self.mnm.rounds:
            raise ValueError(f"mnm.rounds ({self.mnm.rounds}) must divide population.num_epochs "
                             f"({self.population.num_epochs})")


def config_from_dict(data) -> MismatchMapConfig:
    """Strict: unknown keys / wrong types / impossible values raise ConfigError naming the key."""
    return from_dict(MismatchMapConfig, data)


def load_config(path) -> MismatchMapConfig:
    """Reads a mismatch-map TOML file strictly."""
    return load_toml(MismatchMapConfig, path)
