"""Checks of the population trainer's inputs, in Python before the jitted call (shapes always;
index ranges when the arrays are concrete)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.data.transitions import TransitionData, is_traced
from mismatch_jax.models import core as models
from mismatch_jax.train.config import TrainHParams

def check_inputs(mcfg, keys, params, data, hparams, dataset_index) -> None:
    """Raises ``ValueError`` naming the argument when the population trainer's inputs do not fit
    the model config ``mcfg``: typed keys [N], a ``TransitionData`` with the model's dims,
    ``TrainHParams`` leaves [] or [N], ``dataset_index`` [N] integers in range, params [N]-stacked
    like ``models.init``'s."""
    if not (hasattr(keys, "dtype") and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)):
        raise ValueError("train: keys must be typed keys [N] (jax.random.key / model_keys), "
                         f"got {getattr(keys, 'dtype', type(keys))}")
    if keys.ndim != 1:
        raise ValueError(f"train: keys must be [N], got shape {keys.shape}")
    num_models = keys.shape[0]
    if not isinstance(data, TransitionData):
        raise ValueError(f"train: data must be a TransitionData, got {type(data).__name__}")
    data.validate()
    m, _, obs_dim = np.shape(data.obs)
    if obs_dim != mcfg.obs_dim or np.shape(data.action)[-1] != mcfg.action_dim:
        raise ValueError(
            f"train: data dims (obs {obs_dim}, action {np.shape(data.action)[-1]}) do not match the "
            f"model (obs_dim {mcfg.obs_dim}, action_dim {mcfg.action_dim})"
        )
    if not isinstance(hparams, TrainHParams):
        raise ValueError(f"train: hparams must be TrainHParams, got {type(hparams).__name__}")
    for f in dataclasses.fields(hparams):
        shape = np.shape(getattr(hparams, f.name))
        if shape not in ((), (num_models,)):
            raise ValueError(f"train: hparams.{f.name} must be a scalar or [{num_models}], got {shape}")
    if dataset_index is not None:
        if np.shape(dataset_index) != (num_models,):
            raise ValueError(f"train: dataset_index must be [{num_models}], got {np.shape(dataset_index)}")
        if not jnp.issubdtype(jnp.asarray(dataset_index).dtype, jnp.integer):
            raise ValueError("train: dataset_index must be integers")
        if not is_traced(dataset_index):
            idx = np.asarray(dataset_index)
            if idx.size and (idx.min() < 0 or idx.max() >= m):
                raise ValueError(f"train: dataset_index must be in [0, {m}), got range "
                                 f"[{idx.min()}, {idx.max()}]")
    if params is not None:
        expected = jax.eval_shape(lambda k: jax.vmap(lambda kk: models.init(kk, mcfg))(k), keys)
        got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
        want = jax.tree.map(lambda a: tuple(a.shape), expected)
        if jax.tree.structure(params) != jax.tree.structure(expected) or got != want:
            raise ValueError(f"train: params_or_none must be [N={num_models}]-stacked ModelParams of "
                             f"the configured model; shapes {got} != expected {want}")
