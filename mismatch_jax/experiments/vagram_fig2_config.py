"""VaGraM Fig. 2's configuration (``mismatch-jax vagram-fig2 CONFIG``): the SAC run whose
value-function snapshots the models learn against (``[sac]``, a ``SACConfig``), the snapshot
stride, and the model-learning phase (``[models]``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mismatch_jax.agents import sac_config
from mismatch_jax.config_io import Schema, from_dict, load_toml, setting

MODEL_TYPES = ("linear", "mlp")
LOSSES = ("mse", "vaml", "vagram")


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelLearningConfig(Schema):
    """Model-learning phase (table ``[models]``).

    num_seeds / seed: model seeds (init + data sample), vmapped. data_source: "uniform" (paper)
    or "replay" (SAC's buffer). num_train / num_held_out: rows per seed. model_types: subset of
    ("linear", "mlp"). losses: subset of ("mse", "vaml", "vagram"). hidden_size / activation:
    the mlp's hidden layer. predict_delta: model predicts s′ − s (residual) instead of s′
    (default False: the paper's plain regression "without feature transformations"). steps_per_value_function:
    model steps per value-function snapshot (paper: 1000). evals_per_value_function: held-out
    evaluations per snapshot (must divide the steps). batch_size / learning_rate: Adam
    minibatches. critics: which SAC critics make V ("online", "target", "all"). clip_percentile:
    VaGraM gradient-norm clipping (appendix E). vagram_regularizer: λ of Section 3.2.
    held_out_chunk: rows per chunk of the held-out VAML evaluation (bounds memory).
    """

    num_seeds: int = setting(8, ge=1)
    seed: int = setting(0, ge=0)
    data_source: Literal["uniform", "replay"] = "uniform"
    num_train: int = setting(10_000, ge=1)
    num_held_out: int = setting(2_000, ge=1)
    model_types: tuple[str, ...] = MODEL_TYPES
    losses: tuple[str, ...] = LOSSES
    hidden_size: int = setting(16, ge=1)
    activation: Literal["relu", "tanh"] = "relu"
    predict_delta: bool = False
    steps_per_value_function: int = setting(1_000, ge=1)
    evals_per_value_function: int = setting(10, ge=1)
    batch_size: int = setting(256, ge=1)
    learning_rate: float = setting(1e-3, gt=0.0)
    critics: Literal["online", "target", "all"] = "all"
    clip_percentile: float = setting(95.0, gt=0.0, le=100.0)
    vagram_regularizer: float = setting(0.0, ge=0.0)
    held_out_chunk: int = setting(4_096, ge=1)

    def check(self):
        if self.steps_per_value_function % self.evals_per_value_function:
            raise ValueError(
                f"models.evals_per_value_function ({self.evals_per_value_function}) must divide "
                f"models.steps_per_value_function ({self.steps_per_value_function})")
        for name, allowed in (("model_types", MODEL_TYPES), ("losses", LOSSES)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if bad or not values or len(set(values)) != len(values):
                raise ValueError(f"models.{name} must be distinct items of {list(allowed)}, "
                                 f"got {list(values)}")


@dataclasses.dataclass(frozen=True)
class Fig2Config(Schema):
    """Whole experiment: ``sac`` (an ``agents.sac_config.SACConfig`` table; ``eval_interval`` is the
    epoch between value-function snapshots, ``num_eval_episodes`` the episodes of each
    snapshot's return, ``seed`` the SAC seed; ``num_seeds`` is unused), ``snapshot_stride``
    (epochs per snapshot) and ``models`` (``ModelLearningConfig``)."""

    sac: sac_config.SACConfig = sac_config.SACConfig()
    snapshot_stride: int = setting(1, ge=1)
    models: ModelLearningConfig = ModelLearningConfig()

    def check(self):
        s = self.sac
        if s.env != "pendulum":
            raise ValueError(f"sac.env must be 'pendulum' (Fig. 2 is a Pendulum experiment), got {s.env!r}")
        if s.learning_starts % s.eval_interval:
            raise ValueError(f"sac.learning_starts ({s.learning_starts}) must be a multiple of "
                             f"sac.eval_interval ({s.eval_interval})")
        if (s.total_env_steps - s.learning_starts) % (s.eval_interval * self.snapshot_stride):
            raise ValueError(
                f"sac.total_env_steps − sac.learning_starts ({s.total_env_steps - s.learning_starts}) "
                f"must be a multiple of sac.eval_interval × snapshot_stride "
                f"({s.eval_interval * self.snapshot_stride})")
        if self.num_snapshots < 1:
            raise ValueError("sac.total_env_steps must exceed sac.learning_starts (no snapshots)")
        m = self.models
        if m.data_source == "replay":
            if s.buffer_capacity < s.total_env_steps:
                raise ValueError(f"models.data_source = 'replay' needs sac.buffer_capacity "
                                 f"({s.buffer_capacity}) >= sac.total_env_steps ({s.total_env_steps})")
            if m.num_train + m.num_held_out > s.total_env_steps:
                raise ValueError(
                    f"models.num_train + models.num_held_out ({m.num_train + m.num_held_out}) "
                    f"must be <= sac.total_env_steps ({s.total_env_steps}) with data_source = 'replay'")

    @property
    def num_snapshots(self) -> int:
        """S: value-function snapshots (one per ``snapshot_stride`` epochs after warm-up)."""
        s = self.sac
        return (s.total_env_steps - s.learning_starts) // (s.eval_interval * self.snapshot_stride)


def config_from_dict(data) -> Fig2Config:
    """Strict: unknown keys / wrong types / impossible values raise ``ConfigError`` naming the key."""
    return from_dict(Fig2Config, data)


def load_config(path) -> Fig2Config:
    """Reads sweeps/vagram_fig2*.toml strictly."""
    return load_toml(Fig2Config, path)
