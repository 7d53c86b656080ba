"""Configuration of the population trainer: the static ``TrainConfig``, the vmappable
``TrainHParams``, the optimizer, and ``TrainingSection`` — the one ``[training]`` schema every
experiment config shares (sweep, PETS, attack, re-weighting, mismatch map), each adding only
what is its own (evaluation epochs, warm starts, …).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mismatch_jax.config_io import Schema, setting
from mismatch_jax.models import core as models

_STOP_METRICS = ("mse", "nll")
_WEIGHT_DECAY_MODES = ("l2", "decoupled")


# --------------------------------------------------------------------------------------------
# Configuration, hyper-parameters, data.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig(Schema):
    """Static training configuration (hashable; closed over by ``make_train``).

    model: the dynamics model every member of the population shares.
    num_epochs: epochs per model (an upper bound when ``patience`` is set).
    batch_size: minibatch size; an epoch visits ceil(T / batch_size) slots of a per-model
        permutation of that model's training rows, the last one partial, empty ones skipped.
    patience: stop a model after this many epochs without a relative improvement of
        ``improvement_threshold`` of its validation score (None: never stop early).
    improvement_threshold: relative improvement that counts (mbrl-lib: 0.01).
    stop_metric: "mse" (normalised per-member MSE, as mbrl-lib) or "nll" (PETS NLL).
    keep_epochs: epochs e (0 ≤ e ≤ num_epochs) after which the parameters are kept, returned
        stacked as ``TrainResult.kept_params`` [N, K, ...] (0 = initial parameters). A model that
        stopped earlier keeps its frozen parameters.
    keep_best: return the parameters of the best validation epoch (mbrl-lib) instead of the last.
    bootstrap: ensemble members (E > 1) train on their own bootstrap resample (with replacement,
        size = number of training rows) of the training rows; P/D models ignore it.
    weight_decay_mode: "l2" (PETS / torch Adam: wd·w added to the gradient) or "decoupled" (AdamW).
    adam_b1, adam_b2, adam_eps: Adam constants (torch / mbrl-lib defaults).
    logvar_bound_coef: weight of Σ max_logvar − Σ min_logvar in the loss (PETS: 0.01).
    eval_batch_size: validation rows per vectorised chunk (None: batch_size). Chunks past every
        model's validation-row count are skipped, so small validation sets cost little.
    weighted_validation: the stop score (keep_best, patience) and ``val_nll`` are the
        weight-averaged Σ ω l / Σ ω over the validation rows (their ``TransitionData.weight``, e.g.
        the distance re-weighting's ω), so a re-weighted model is selected by the loss it was
        trained on; ``val_ll`` / ``val_mse`` stay unweighted. False: every row counts once.
    """

    model: models.ModelConfig
    num_epochs: int = setting(50, ge=1)
    batch_size: int = setting(256, ge=1)
    patience: int | None = setting(None, ge=1)
    improvement_threshold: float = 0.01
    stop_metric: Literal["mse", "nll"] = "mse"
    keep_epochs: tuple[int, ...] = ()
    keep_best: bool = True
    bootstrap: bool = True
    weight_decay_mode: Literal["l2", "decoupled"] = "l2"
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    logvar_bound_coef: float = 0.01
    eval_batch_size: int | None = setting(None, ge=1)
    weighted_validation: bool = False

    def __post_init__(self):
        object.__setattr__(self, "keep_epochs", tuple(self.keep_epochs))
        super().__post_init__()

    def check(self):
        if not isinstance(self.model, models.ModelConfig):
            raise ValueError(f"TrainConfig.model must be a ModelConfig, got {type(self.model).__name__}")
        if self.stop_metric not in _STOP_METRICS:
            raise ValueError(f"TrainConfig.stop_metric must be one of {_STOP_METRICS}, got {self.stop_metric!r}")
        if self.weight_decay_mode not in _WEIGHT_DECAY_MODES:
            raise ValueError(
                f"TrainConfig.weight_decay_mode must be one of {_WEIGHT_DECAY_MODES}, "
                f"got {self.weight_decay_mode!r}"
            )
        keep = self.keep_epochs
        if any((not isinstance(e, (int, np.integer))) or e < 0 or e > self.num_epochs for e in keep):
            raise ValueError(
                f"TrainConfig.keep_epochs must be integers in [0, num_epochs={self.num_epochs}], got {keep}"
            )
        if len(set(keep)) != len(keep):
            raise ValueError(f"TrainConfig.keep_epochs has duplicates: {keep}")
        object.__setattr__(self, "keep_epochs", tuple(int(e) for e in keep))

    @property
    def uses_bootstrap(self) -> bool:
        return self.bootstrap and self.model.ensemble_size > 1


@struct.dataclass
class TrainHParams:
    """Vmappable hyper-parameters; for a population every leaf is [N] (scalars are broadcast).

    learning_rate, weight_decay: Adam step size and weight decay (see ``TrainConfig``).
    nll_weight: weight of the model's main loss (PETS NLL for P/PE, MSE for D/DE).
    mse_weight: weight of an extra normalised-MSE term on the mean (0 by default).
    """

    learning_rate: jax.Array
    weight_decay: jax.Array
    nll_weight: jax.Array = 1.0
    mse_weight: jax.Array = 0.0

    @classmethod
    def population(cls, num_models: int, learning_rate=1e-3, weight_decay=5e-5,
                   nll_weight=1.0, mse_weight=0.0) -> "TrainHParams":
        """[num_models] hyper-parameters from scalars or [num_models] arrays
        (defaults: mbrl-lib's PETS cartpole model_lr 1e-3, model_wd 5e-5)."""
        def leaf(v):
            return jnp.broadcast_to(jnp.asarray(v, jnp.float32), (num_models,))
        return cls(learning_rate=leaf(learning_rate), weight_decay=leaf(weight_decay),
                   nll_weight=leaf(nll_weight), mse_weight=leaf(mse_weight))


def _weight_decay_mask(params: models.ModelParams) -> models.ModelParams:
    """True for weight matrices only (biases and log-variance bounds are not decayed)."""
    return models.ModelParams(
        layers=tuple((True, False) for _ in params.layers), max_logvar=False, min_logvar=False
    )


def make_optimizer(config: TrainConfig, learning_rate, weight_decay) -> optax.GradientTransformation:
    """Adam with L2 or decoupled weight decay on the weight matrices. ``learning_rate`` and
    ``weight_decay`` may be traced scalars (one model of a vmapped population)."""
    adam = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    decay = optax.add_decayed_weights(weight_decay, mask=_weight_decay_mask)
    if config.weight_decay_mode == "l2":
        return optax.chain(decay, adam, optax.scale(-learning_rate))
    return optax.chain(adam, decay, optax.scale(-learning_rate))


@dataclasses.dataclass(frozen=True)
class TrainingSection(Schema):
    """[training]: how a dynamics model is fitted (``train.population``).

    num_epochs: epochs per fit (an upper bound with patience). batch_size: minibatch rows.
    learning_rate / weight_decay: Adam step size and L2 weight decay — one value, or
        [low, high] where a config draws one value per model (log-uniformly, from the model's key).
    patience: stop after this many epochs without improvement (0: never stop early).
    keep_best: return the best-validation-epoch parameters (mbrl-lib) instead of the last.
    bootstrap: each ensemble member trains on its own bootstrap resample.
    """

    num_epochs: int = setting(50, ge=1)
    batch_size: int = setting(256, ge=1)
    learning_rate: Union[float, tuple[float, float]] = setting(1e-3, gt=0.0)
    weight_decay: Union[float, tuple[float, float]] = setting(5e-5, ge=0.0)
    patience: int = setting(0, ge=0)
    keep_best: bool = True
    bootstrap: bool = True

    def check(self):
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                if not value[0] <= value[1]:
                    raise ValueError(f"{name} range must be [low, high] with low <= high, got {list(value)}")
                if value[0] <= 0:
                    raise ValueError(f"{name} range must be > 0 for log-uniform sampling, got {list(value)}")

    def train_config(self, model_config: models.ModelConfig, capacity: int | None = None,
                     **overrides) -> TrainConfig:
        """The trainer's ``TrainConfig`` for ``model_config`` (the batch never exceeds a dataset of
        ``capacity`` rows); ``overrides`` set further TrainConfig fields (keep_epochs, …)."""
        batch = self.batch_size if capacity is None else min(self.batch_size, capacity)
        fields = dict(model=model_config, num_epochs=self.num_epochs, batch_size=batch,
                      patience=self.patience or None, keep_best=self.keep_best, bootstrap=self.bootstrap)
        return TrainConfig(**{**fields, **overrides})

    def fixed(self, name: str) -> float:
        """The single value of ``learning_rate`` / ``weight_decay`` (a range is an error here)."""
        value = getattr(self, name)
        if isinstance(value, tuple):
            raise ValueError(f"{name} must be one value here, got the range {list(value)}")
        return value
