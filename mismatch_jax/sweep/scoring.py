"""Scoring models from outside a sweep: their one-step LL on named datasets and the reward a
controller earns with them — the two axes of Lambert et al.'s Fig. 3, as public functions that
need no sweep config, no chunk and no files.

    lls = log_likelihoods(model_config, params, normalizer, {"expert": expert, "grid": grid})
    rewards = score(keys, env, model_config, params, normalizer, cem, EpisodeSettings(trials=3))

``params`` / ``normalizer`` carry a leading population axis [N] (one model: add it with
``jax.tree.map(lambda a: a[None], ...)``). ``score`` with a sweep's ``chunk.evaluation_keys``
reproduces that sweep's ``reward`` column (the same program as the chunk's reward stage).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax import models
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import EpisodeSettings, make_planner, mpc_episode


def _rows(dataset, split: str):
    """(obs, action, next_obs) arrays of a ``data.Transitions`` (its ``split``) or of a tuple."""
    if isinstance(dataset, tuple):
        return tuple(jnp.asarray(a, jnp.float32) for a in dataset[:3])
    part = {"validation": dataset.validation, "train": dataset.train, "all": lambda: dataset}[split]()
    return tuple(jnp.asarray(getattr(part, f), jnp.float32) for f in ("obs", "action", "next_obs"))


def log_likelihoods(model_config: models.ModelConfig, params, normalizer, datasets: Mapping[str, object],
                    variance=None, split: str = "validation") -> dict[str, np.ndarray]:
    """Mean one-step LL (nats, original units) of N models on each named dataset →
    {name: [N]}. datasets: name → ``data.Transitions`` (its ``split``: "validation" (the
    study's held-out rows), "train" or "all") or an (obs [B, d], action [B, a], next_obs [B, d])
    tuple. variance [N, E, target_dim]: a deterministic model's σ² (``models.residual_variance``);
    None: probabilistic models' own, deterministic ones' unit-normalised convention."""
    if split not in ("validation", "train", "all"):
        raise ValueError(f"split must be 'validation', 'train' or 'all', got {split!r}")
    one = jax.jit(jax.vmap(lambda p, n, v, o, a, x: models.one_step_log_likelihood(
        model_config, p, n, o, a, x, variance=v), in_axes=(0, 0, 0, None, None, None)))
    return {name: np.asarray(one(params, normalizer, variance, *_rows(data, split)))
            for name, data in datasets.items()}


def score(keys: jax.Array, env, model_config: models.ModelConfig, params, normalizer, cem: CEMConfig,
          episodes: EpisodeSettings, env_params=None) -> np.ndarray:
    """Episode rewards [N, trials] of N models, each planning with CEM-MPC (``cem``, bound to
    ``env`` here) in the true env for ``episodes.trials`` episodes of ``episodes.length(env)``
    steps; model n's episode j runs with ``split(keys[n], trials)[j]``. keys [N]; params /
    normalizer leaves [N, ...]; env_params: the env's constants (None: its defaults)."""
    keys = jnp.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"score takes one key per model, keys [N]; got shape {keys.shape}")
    planner = make_planner(cem.for_env(env), model_config, env.reward_fn, env.termination_fn)
    trials, length = episodes.trials, episodes.length(env)

    @jax.jit
    def run(keys, params, normalizer):
        # One flat vmap over every (model, trial) episode, as the sweep's reward stage runs them.
        num = keys.shape[0]
        trial_keys = jax.vmap(lambda k: jax.random.split(k, trials))(keys).reshape(num * trials)
        flat = lambda a: jnp.repeat(a, trials, axis=0)
        rewards = jax.vmap(lambda k, p, n: mpc_episode(k, env, planner, p, n, length, env_params)[1])(
            trial_keys, *jax.tree.map(flat, (params, normalizer)))
        return rewards.reshape(num, trials)

    return np.asarray(run(keys, params, normalizer))
