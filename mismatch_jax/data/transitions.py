"""Training data of the population trainer: M datasets of one fixed capacity T.

``TransitionData`` is what ``train.population`` consumes: per dataset, rows of (s, a, s′, r) with
per-row loss weights, train / validation masks and optional per-row side information (``aux``)
for a pluggable loss. A fixed capacity lets a growing buffer (PETS, MBPO) train without
recompiling: rows in neither mask are never used. ``TransitionData.single`` is the one adapter
from any set of row arrays (a study dataset, a replay buffer, a PETS buffer) to it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_DATA_FLOAT_FIELDS = ("obs", "action", "next_obs", "reward", "weight")


@struct.dataclass
class TransitionData:
    """M datasets of fixed capacity T (a growing buffer trains without recompiling).

    obs, next_obs [M, T, obs_dim]; action [M, T, act_dim]; reward [M, T] (zeros if unused);
    weight [M, T] per-sample loss weights (1 by default); train_mask, val_mask [M, T] bool.
    aux: optional per-row side information [M, T, K] for a pluggable loss (e.g. VaGraM's cached
    value gradients, K = obs_dim), handed to it row by row as ``LossInputs.aux``; None if unused.
    Rows in neither mask are never used but must be finite (pad with zeros).
    """

    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array
    reward: jax.Array
    weight: jax.Array
    train_mask: jax.Array
    val_mask: jax.Array
    aux: jax.Array | None = None

    @property
    def num_datasets(self) -> int:
        return self.obs.shape[0]

    @property
    def capacity(self) -> int:
        return self.obs.shape[1]

    @classmethod
    def single(cls, obs, action, next_obs, train_mask, val_mask, reward=None, weight=None,
               aux=None) -> "TransitionData":
        """One dataset (M = 1) from row arrays of any source (traceable, no copies to host):
        obs / next_obs [T, obs_dim], action [T, act_dim], train_mask / val_mask [T] bool,
        optional reward [T] (zeros), weight [T] (ones) and aux [T, K]."""
        capacity = jnp.shape(obs)[0]
        reward = jnp.zeros(capacity, jnp.float32) if reward is None else reward
        weight = jnp.ones(capacity, jnp.float32) if weight is None else weight
        lead = lambda a: None if a is None else jnp.asarray(a)[None]
        return cls(obs=lead(obs), action=lead(action), next_obs=lead(next_obs), reward=lead(reward),
                   weight=lead(weight), train_mask=lead(train_mask), val_mask=lead(val_mask),
                   aux=lead(aux))

    @classmethod
    def from_dataset(cls, dataset, weight=None) -> "TransitionData":
        """One dataset (M = 1) from a ``data.Transitions`` study dataset: its validation rows
        (``is_validation``) are the validation mask, the others train; weight [N] or None."""
        return cls.single(dataset.obs, dataset.action, dataset.next_obs, ~dataset.is_validation,
                          dataset.is_validation, reward=dataset.reward,
                          weight=None if weight is None else jnp.asarray(weight, jnp.float32))

    @classmethod
    def from_arrays(cls, key: jax.Array, obs, action, next_obs, reward=None, weight=None, *,
                    validation_fraction: float = 0.1, capacity: int | None = None,
                    aux=None) -> "TransitionData":
        """One dataset (M = 1) from obs [n, obs_dim], action [n, act_dim], next_obs [n, obs_dim],
        optional reward [n], weight [n] and aux [n, K]; a random ``floor(validation_fraction · n)`` rows become
        validation rows (the rest training rows, as mbrl-lib's split). ``capacity`` ≥ n pads with
        unused zero rows (default n). Raises ValueError on NaN/inf or inconsistent shapes."""
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        obs = np.asarray(obs, np.float32)
        action = np.asarray(action, np.float32)
        next_obs = np.asarray(next_obs, np.float32)
        if obs.ndim != 2 or action.ndim != 2 or next_obs.ndim != 2:
            raise ValueError(
                f"from_arrays expects 2-D obs/action/next_obs [n, dim], got shapes "
                f"obs {obs.shape}, action {action.shape}, next_obs {next_obs.shape}"
            )
        n = obs.shape[0]
        reward = np.zeros(n, np.float32) if reward is None else np.asarray(reward, np.float32)
        weight = np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32)
        capacity = n if capacity is None else int(capacity)
        if capacity < n:
            raise ValueError(f"capacity ({capacity}) must be >= the number of rows ({n})")
        num_val = int(n * validation_fraction)
        perm = np.asarray(jax.random.permutation(key, n))
        is_val = np.zeros(n, bool)
        is_val[perm[:num_val]] = True

        def pad(a):
            out = np.zeros((capacity,) + a.shape[1:], a.dtype)
            out[:n] = a
            return out[None]

        arrays = dict(obs=obs, action=action, next_obs=next_obs, reward=reward, weight=weight)
        if aux is not None:
            arrays["aux"] = np.asarray(aux, np.float32)
        for name, a in arrays.items():
            if a.shape[0] != n:
                raise ValueError(f"from_arrays: {name} has {a.shape[0]} rows, obs has {n}")
        data = cls(**{k: pad(v) for k, v in arrays.items()},
                   train_mask=pad(~is_val), val_mask=pad(is_val))
        data.validate()
        return jax.tree.map(jnp.asarray, data)

    @classmethod
    def stack(cls, datasets: Sequence["TransitionData"]) -> "TransitionData":
        """Concatenate datasets along M; smaller capacities are padded with unused zero rows."""
        if not datasets:
            raise ValueError("TransitionData.stack needs at least one dataset")
        cap = max(d.capacity for d in datasets)

        def pad(a):
            a = np.asarray(a)
            width = [(0, 0), (0, cap - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            return np.pad(a, width)

        fields = [f.name for f in dataclasses.fields(cls)]
        with_aux = [d.aux is not None for d in datasets]
        if any(with_aux) and not all(with_aux):
            raise ValueError("TransitionData.stack: either every dataset has aux or none has")
        if not any(with_aux):
            fields.remove("aux")
        for name in fields:
            shapes = {np.asarray(getattr(d, name)).shape[2:] for d in datasets}
            if len(shapes) != 1:
                raise ValueError(f"TransitionData.stack: {name} trailing shapes differ: {sorted(shapes)}")
        data = cls(**{name: np.concatenate([pad(getattr(d, name)) for d in datasets], axis=0)
                      for name in fields})
        data.validate()
        return jax.tree.map(jnp.asarray, data)

    def validate(self, check_values: bool = True) -> None:
        """Raise ValueError on inconsistent shapes/dtypes or (if ``check_values`` and the arrays
        are concrete) NaN/inf values, naming the offending array."""
        if np.ndim(self.obs) != 3:
            raise ValueError(f"TransitionData.obs must be [M, T, obs_dim], got shape {np.shape(self.obs)}")
        m, t, obs_dim = np.shape(self.obs)
        expected = {
            "next_obs": (m, t, obs_dim), "reward": (m, t), "weight": (m, t),
            "train_mask": (m, t), "val_mask": (m, t),
        }
        for name, shape in expected.items():
            if tuple(np.shape(getattr(self, name))) != shape:
                raise ValueError(
                    f"TransitionData.{name} must have shape {shape} (from obs {np.shape(self.obs)}), "
                    f"got {np.shape(getattr(self, name))}"
                )
        if np.ndim(self.action) != 3 or np.shape(self.action)[:2] != (m, t):
            raise ValueError(f"TransitionData.action must be [{m}, {t}, act_dim], got {np.shape(self.action)}")
        if self.aux is not None and (np.ndim(self.aux) != 3 or np.shape(self.aux)[:2] != (m, t)):
            raise ValueError(f"TransitionData.aux must be None or [{m}, {t}, K], got {np.shape(self.aux)}")
        for name in ("train_mask", "val_mask"):
            if jnp.asarray(getattr(self, name)).dtype != jnp.bool_:
                raise ValueError(f"TransitionData.{name} must be boolean")
        if not check_values or is_traced(self):
            return
        for name in _DATA_FLOAT_FIELDS + (("aux",) if self.aux is not None else ()):
            a = np.asarray(getattr(self, name))
            if not np.all(np.isfinite(a)):
                bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
                raise ValueError(
                    f"TransitionData.{name} contains {bad} NaN/inf values; clean the data (unused "
                    f"padding rows must be finite too, e.g. zeros)"
                )
        if np.any(np.asarray(self.train_mask) & np.asarray(self.val_mask)):
            raise ValueError("TransitionData.train_mask and val_mask overlap; a row is either or neither")
        if np.any(np.asarray(self.weight) < 0):
            raise ValueError("TransitionData.weight must be non-negative")


def is_traced(tree) -> bool:
    """Whether any leaf of ``tree`` is a tracer (values are unknown inside jit / vmap)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))
