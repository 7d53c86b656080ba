"""Population training of dynamics models: ``make_train(TrainConfig) -> train(keys, params, data,
hparams, dataset_index) -> TrainResult`` (one jit, a lax.scan over epochs, vmap over models)."""

from mismatch_jax.train.population import (
    LossInputs,
    TrainConfig,
    TrainHParams,
    TrainMetrics,
    TrainResult,
    make_optimizer,
    make_train,
    model_keys,
)

__all__ = [
    "LossInputs", "TrainConfig", "TrainHParams", "TrainMetrics", "TrainResult",
    "make_optimizer", "make_train", "model_keys",
]
