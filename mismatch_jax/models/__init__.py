"""Dynamics models (P, PE, D, DE), normalisation, losses and the study's log-likelihood."""

from mismatch_jax.models.core import (
    MODEL_KINDS,
    ModelConfig,
    ModelParams,
    Normalizer,
    apply_normalized,
    fit_normalizer,
    gaussian_log_likelihood,
    gaussian_nll_per_sample,
    hidden_features,
    identity_normalizer,
    init,
    make_targets,
    model_inputs,
    model_loss,
    normalize_inputs,
    normalize_targets,
    mse_per_sample,
    one_step_log_likelihood,
    one_step_mse,
    predict,
    residual_variance,
)

__all__ = [
    "MODEL_KINDS", "ModelConfig", "ModelParams", "Normalizer", "apply_normalized",
    "fit_normalizer", "gaussian_log_likelihood", "gaussian_nll_per_sample", "hidden_features",
    "identity_normalizer", "init", "make_targets", "model_inputs", "model_loss", "normalize_inputs", "normalize_targets", "mse_per_sample",
    "one_step_log_likelihood", "one_step_mse", "predict", "residual_variance",
]
