"""Population training of dynamics models: ``make_train(TrainConfig) -> train(keys, params, data,
hparams, dataset_index) -> TrainResult`` (one jit, a lax.scan over epochs, vmap over models);
``TrainingSection`` is the ``[training]`` table every experiment config shares."""

from mismatch_jax.train.config import TrainConfig, TrainHParams, TrainingSection, make_optimizer
from mismatch_jax.train.population import (
    TrainMetrics,
    TrainResult,
    make_train,
    make_train_fn,
    model_keys,
)

__all__ = [
    "TrainConfig", "TrainHParams", "TrainMetrics", "TrainResult",
    "TrainingSection", "make_optimizer", "make_train", "make_train_fn", "model_keys",
]
