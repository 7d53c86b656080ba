"""One sweep chunk as a program: the models' keys and hyper-parameter draws, the train / LL /
reward stages (``make_chunk_parts``), their population layout (``laid_out``) and the jitted,
sharded chunk (``make_chunk_fn``); how big a chunk may be (``chunk_size_for``); and the chunk's
outputs as table rows with the per-model divergence flag (``chunk_rows``). ``sweep.chunk_task``
runs a chunk, ``sweep.runner`` orchestrates them (files, resume, Ray); this module knows nothing
of files.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh

from mismatch_jax import models
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.planning.mpc import make_planner, mpc_episode
from mismatch_jax.population import PopulationLayout, jit_sharded, over_population
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.train import TrainHParams, make_train_fn

MODEL_SALT = 0x0DE1  # fold_in salt of the model keys (datasets use another)


def estimate_bytes_per_model(config: SweepConfig, env, kind: str, train_rows: int) -> int:
    """Rough peak memory of one model in a chunk (bytes): its CEM evaluation dominates —
    trials × eval epochs episodes in flight, each with population × particles rollouts whose
    activations are E × hidden wide — plus parameters, optimiser state and its dataset slice."""
    mcfg = config.model_config_of(kind, env)
    cem = config.cem.for_env(env)
    episodes = config.evaluation.trials * len(config.training.eval_epochs)
    rollouts = cem.population_size * cem.particles
    activations = episodes * rollouts * mcfg.ensemble_size * mcfg.hidden_size * 4 * 6
    num_params = sum(a * b + b for a, b in zip(mcfg.layer_sizes[:-1], mcfg.layer_sizes[1:])) * mcfg.ensemble_size
    params = num_params * 4 * (4 + len(config.training.eval_epochs))
    batch = config.training.batch_size * mcfg.ensemble_size * mcfg.hidden_size * 4 * 4 * mcfg.num_hidden_layers
    return int(activations + params + batch + train_rows * 4)


def chunk_size_for(config: SweepConfig, env, kind: str, train_rows: int, num_devices: int) -> int:
    """Models per compiled call: the user's chunk_size, or what memory_gb allows but no more than
    the type's models rounded up to the device count (a derived chunk larger than the type would
    compute padding: 3 079 model slots for 1 008 models at paper size); always a multiple of the
    device count."""
    if config.run.chunk_size:
        size = config.run.chunk_size
    else:
        size = int(config.run.memory_gb * 2**30 // estimate_bytes_per_model(config, env, kind, train_rows))
        size = max(1, min(size, 1024, -(-config.count_of(kind) // num_devices) * num_devices))
    return max(num_devices, (size // num_devices) * num_devices)


def evaluation_keys(config: SweepConfig, indices, epochs) -> jax.Array:
    """The evaluation keys [N, K] of global models ``indices`` [N] at epochs [K]: the fourth
    split of the model's key ``fold_in(fold_in(key(seed), MODEL_SALT), index)``, with
    ``evaluation.episode_salt`` folded in when set, then the epoch. Episode j of a model at an
    epoch runs with ``split(key, trials)[j]`` (``scoring.score``)."""
    model_root = jax.random.fold_in(jax.random.key(config.seed), MODEL_SALT)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(model_root, jnp.asarray(indices))
    eval_keys = jax.vmap(config.evaluation.salted)(jax.vmap(lambda k: jax.random.split(k, 4)[3])(keys))
    return jax.vmap(lambda k: jax.vmap(lambda e: jax.random.fold_in(k, e))(jnp.asarray(epochs)))(eval_keys)


def _sample_hparam(key, value):
    if isinstance(value, tuple):
        low, high = math.log(value[0]), math.log(value[1])
        return jnp.exp(jax.random.uniform(key, (), minval=low, maxval=high))
    return jnp.asarray(value, jnp.float32)


class ChunkParts(NamedTuple):
    """The stages of a chunk, pure and unjitted (``make_chunk_parts``); the sweep fuses them
    into one jitted call, ``benchmarks/bench_population.py`` times each on its own.

    train(indices [N], dataset_index [N], train_data) -> TrainedChunk (for model type "PETS",
        the PETS runs' own models: ``train_data`` is their (params, normalizer) [S · T, ...] and
        nothing trains)
    variance(kept_params [N, K], normalizers [N, K], dataset_index [N], train_data)
        -> [N, K, E, target_dim] each member's residual variance on its validation rows (the
        variance of a deterministic model's LL), or None (probabilistic types, or
        ``population.deterministic_ll = "unit"``)
    likelihood(kept_params [N, K], normalizers [N, K], group_index [N], eval_sets, variances)
        -> (ll [N, K, D], mse [N, K, D]); an evaluation set with a leading axis of 1 is shared,
        else each model takes entry ``group_index`` (its env setting or its PETS seed)
    reward(kept_params [N, K], normalizers [N, K], epoch_keys [N, K], setting_index [N],
           env_settings) -> rewards [N, K, trials]
    (K = eval epochs, D = evaluation datasets; eval_sets and env_settings as
    ``stack_study_data`` returns them: P env settings, P = 1 without ``[env_params]``)."""

    train: Callable
    variance: Callable
    likelihood: Callable
    reward: Callable


class TrainedChunk(NamedTuple):
    """What training hands to the evaluation stages: parameters kept at every eval epoch
    (leaves [N, K, ...]), each model's normaliser broadcast to [N, K, ...], the per-(model, epoch)
    evaluation keys [N, K], and per-model bookkeeping [N]."""

    kept_params: models.ModelParams
    normalizers: models.Normalizer
    epoch_keys: jax.Array
    learning_rate: jax.Array
    weight_decay: jax.Array
    diverged: jax.Array
    epochs_trained: jax.Array
    val_mse_ratio: jax.Array


def make_chunk_parts(config: SweepConfig, env, kind: str) -> ChunkParts:
    """The train / variance / LL / reward stages of a chunk of model type ``kind`` (see
    ``ChunkParts``)."""
    mcfg = config.model_config_of(kind, env)
    tr = config.training
    train = None if kind == "PETS" else make_train_fn(tr.train_config(mcfg, keep_epochs=tuple(tr.eval_epochs)))
    planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
    model_root = jax.random.fold_in(jax.random.key(config.seed), MODEL_SALT)
    trials, length = config.evaluation.trials, config.evaluation.length(env)

    def pets_stage(indices, dataset_index, pets_models) -> TrainedChunk:
        # PETS's own models: the same key scheme, so their episodes depend on the index alone.
        params, norms = jax.tree.map(lambda a: a[dataset_index][:, None], pets_models)
        pets_train = config.datasets.pets.train
        epoch = jnp.asarray(pets_train.num_epochs)
        ones = jnp.ones(indices.shape)
        return TrainedChunk(kept_params=params, normalizers=norms,
                            epoch_keys=evaluation_keys(config, indices, (pets_train.num_epochs,)),
                            learning_rate=ones * pets_train.learning_rate, weight_decay=ones * pets_train.weight_decay,
                            diverged=jnp.zeros(indices.shape, bool),
                            epochs_trained=jnp.broadcast_to(epoch, indices.shape),
                            val_mse_ratio=jnp.zeros(indices.shape))

    def train_stage(indices, dataset_index, train_data) -> TrainedChunk:
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(model_root, indices)
        split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
        train_keys, lr_keys, wd_keys = (split[:, i] for i in range(3))
        hparams = TrainHParams(
            learning_rate=jax.vmap(lambda k: _sample_hparam(k, tr.learning_rate))(lr_keys),
            weight_decay=jax.vmap(lambda k: _sample_hparam(k, tr.weight_decay))(wd_keys),
            nll_weight=jnp.ones(indices.shape), mse_weight=jnp.zeros(indices.shape))
        result = train(train_keys, None, train_data, hparams, dataset_index)
        epoch_keys = evaluation_keys(config, indices, tr.eval_epochs)  # [N, K], from split[:, 3]
        norms = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], len(tr.eval_epochs)) + a.shape[1:]),
                             result.normalizer)
        return TrainedChunk(kept_params=result.kept_params, normalizers=norms, epoch_keys=epoch_keys,
                            learning_rate=hparams.learning_rate, weight_decay=hparams.weight_decay,
                            diverged=result.diverged, epochs_trained=result.epochs_trained,
                            val_mse_ratio=result.metrics.val_mse.max(axis=1)
                            / jnp.maximum(result.initial_val_mse, 1e-12))

    scored_variance = not mcfg.probabilistic and config.population.deterministic_ll == "validation_mse"

    def variance_stage(kept_params, normalizers, dataset_index, train_data):
        if not scored_variance:
            return None
        own = lambda a: a[dataset_index]  # [N, T, ...]: each model's own dataset
        obs, action, next_obs, val = (own(getattr(train_data, f)) for f in ("obs", "action", "next_obs", "val_mask"))
        one = lambda p, n, o, a, x, w: models.residual_variance(mcfg, p, n, o, a, x, weight=w)
        per_epoch = jax.vmap(one, in_axes=(0, 0, None, None, None, None))
        return jax.vmap(per_epoch)(kept_params, normalizers, obs, action, next_obs, val.astype(jnp.float32))

    def likelihood_one(params, norm, sets, variance):
        lls = jnp.stack([models.one_step_log_likelihood(mcfg, params, norm, o, a, n, weight=w, variance=variance)
                         for o, a, n, w in sets])
        mses = jnp.stack([models.one_step_mse(mcfg, params, norm, o, a, n, weight=w) for o, a, n, w in sets])
        return lls, mses

    def likelihood_stage(kept_params, normalizers, group_index, eval_sets, variances):
        per_epoch = jax.vmap(likelihood_one, in_axes=(0, 0, None, 0))  # [K] kept models, one model's sets
        if all(s[0].shape[0] == 1 for s in eval_sets):  # every model scores the same sets
            shared = jax.tree.map(lambda a: a[0], eval_sets)
            return jax.vmap(per_epoch, in_axes=(0, 0, None, 0))(kept_params, normalizers, shared, variances)
        # Per set: shared (leading 1) or each model's group's (its env setting, its PETS seed).
        own = tuple(jax.tree.map(lambda a: jnp.broadcast_to(a, (group_index.shape[0],) + a.shape[1:])
                                 if a.shape[0] == 1 else a[group_index], s) for s in eval_sets)
        return jax.vmap(per_epoch, in_axes=(0, 0, 0, 0))(kept_params, normalizers, own, variances)

    def reward_stage(kept_params, normalizers, epoch_keys, setting_index, env_settings):
        # Every (model, epoch, trial) episode under ONE vmap: nested vmaps over the MJX physics
        # cost ~2x the tracing and ~1.5x the compile time of a single flat one.
        num_models, num_epochs = epoch_keys.shape
        episodes = num_models * num_epochs * trials
        trial_keys = jax.vmap(jax.vmap(lambda k: jax.random.split(k, trials)))(epoch_keys)
        per_trial = lambda a: jnp.broadcast_to(a[:, :, None], (num_models, num_epochs, trials) + a.shape[2:])
        flat = lambda a: a.reshape((episodes,) + a.shape[3:])
        params, norms = jax.tree.map(lambda a: flat(per_trial(a)), (kept_params, normalizers))
        dynamics = None if env_settings is None else jax.tree.map(
            lambda a: jnp.repeat(a[setting_index], num_epochs * trials, axis=0), env_settings)
        rewards = jax.vmap(lambda k, p, n, e: mpc_episode(k, env, planner, p, n, length, e)[1])(
            flat(trial_keys), params, norms, dynamics)
        return rewards.reshape(num_models, num_epochs, trials)

    return ChunkParts(train=pets_stage if kind == "PETS" else train_stage, variance=variance_stage,
                      likelihood=likelihood_stage, reward=reward_stage)


def laid_out(parts: ChunkParts, layout: PopulationLayout, width: int | None = None) -> ChunkParts:
    """The chunk's stages under a population layout (``mismatch_jax.population``): each stage
    runs its models all at once (vmap) or in groups (lax.map) — inside each device's block when
    the chunk is sharded (``jit_sharded``)."""
    lay = lambda fn, shared: over_population(fn, layout, shared, width)
    return ChunkParts(train=lay(parts.train, (2,)), variance=lay(parts.variance, (3,)),
                      likelihood=lay(parts.likelihood, (3,)), reward=lay(parts.reward, (4,)))


def make_chunk_fn(config: SweepConfig, env, kind: str, mesh: Mesh):
    """jit-compiled ``chunk(indices [N], dataset_index [N], group_index [N], train_data,
    eval_sets, env_settings) -> dict of arrays`` for model type ``kind`` (the last three as
    ``stack_study_data`` returns them — for model type "PETS" ``train_data`` is the PETS
    runs' own models — and ``chunk_model_arguments`` gives the middle two); N must
    be a multiple of the mesh size (the population axis is sharded, the data replicated). Data
    are arguments, not closure constants, so they are not baked into the compiled program and
    the persistent compilation cache can reuse it."""
    parts = laid_out(make_chunk_parts(config, env, kind), config.run.layout,
                     config.model_config_of(kind, env).hidden_size)

    def chunk(indices, dataset_index, setting_index, train_data, eval_sets, env_settings):
        trained = parts.train(indices, dataset_index, train_data)
        variances = parts.variance(trained.kept_params, trained.normalizers, dataset_index, train_data)
        lls, mses = parts.likelihood(trained.kept_params, trained.normalizers, setting_index, eval_sets, variances)
        rewards = parts.reward(trained.kept_params, trained.normalizers, trained.epoch_keys, setting_index,
                               env_settings)
        return {"ll": lls, "mse": mses, "reward": rewards, "diverged": trained.diverged,
                "learning_rate": trained.learning_rate, "weight_decay": trained.weight_decay,
                "epochs_trained": trained.epochs_trained, "val_mse_ratio": trained.val_mse_ratio}

    return jit_sharded(chunk, 6, shared=(3, 4, 5), devices=mesh.devices.ravel().tolist())


def chunk_model_arguments(config: SweepConfig, indices) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index [N], group_index [N]) int32 of global model indices [N]: the row of the
    stacked train data each model trains on and the evaluation sets it is scored on (its env
    setting, or its PETS seed)."""
    indices = [int(i) for i in np.asarray(indices)]
    return (np.asarray([config.model_dataset_index(i) for i in indices], np.int32),
            np.asarray([config.model_eval_group(i) for i in indices], np.int32))


def model_diverged(config: SweepConfig, out: dict, n: int) -> bool:
    """Whether model ``n`` of a chunk's outputs diverged — one flag for all its rows: its training
    hit a non-finite loss or update, any evaluated metric (LL, MSE, reward at any eval epoch) is
    not finite, or its validation MSE on its own dataset rose above
    ``training.divergence_factor`` times the untrained model's (runaway training)."""
    finite = all(np.isfinite(out[name][n]).all() for name in ("ll", "mse", "reward"))
    runaway = not out["val_mse_ratio"][n] <= config.training.divergence_factor  # NaN counts too
    return bool(out["diverged"][n]) or not finite or runaway


def chunk_rows(config: SweepConfig, indices: np.ndarray, out: dict, eval_names: list[str],
               settings=None, pets=None) -> pd.DataFrame:
    """One row per model × eval epoch; with env ``settings`` (``sweep.env_params.Settings``)
    each row also carries ``env_setting`` and one ``env_<constant>`` column per swept constant;
    a PETS population's rows (``pets``: its ``PetsPopulationData``) carry their provenance —
    ``pets_seed``, ``pets_trial`` (trained on the data before that planned trial), ``copy``,
    ``pets_trial_reward`` (what PETS earned in that trial with its own model) and
    ``train_rows``."""
    rows = []
    for n, index in enumerate(indices):
        kind, train_name, replicate = config.model_spec(int(index))
        diverged = model_diverged(config, out, n)
        dynamics = {}
        if settings is not None:
            setting = config.model_setting(int(index))
            dynamics = {"env_setting": setting, **settings.columns(setting)}
        if pets is not None:
            seed, trial, copy = config.pets_provenance(int(index))
            dynamics = {"pets_seed": seed, "pets_trial": trial, "copy": copy,
                        "pets_trial_reward": float(pets.trial_rewards[seed, trial]),
                        "train_rows": int(pets.train_rows[config.model_dataset_index(int(index))])}
        epochs = [config.datasets.pets.train.num_epochs] if kind == "PETS" else config.training.eval_epochs
        for k, epoch in enumerate(epochs):
            rewards = out["reward"][n, k].astype(np.float64)
            lls, mses = out["ll"][n, k], out["mse"][n, k]
            row = {"model_id": int(index), "seed": config.seed, "replicate": replicate,
                   "model_type": kind, "train_dataset": train_name, "epoch": int(epoch),
                   "learning_rate": float(out["learning_rate"][n]),
                   "weight_decay": float(out["weight_decay"][n]), **dynamics}
            for j, name in enumerate(eval_names):
                row[f"ll_{name}"] = float(lls[j])
                row[f"mse_{name}"] = float(mses[j])
            row.update({"reward": rewards.tolist(), "reward_mean": float(rewards.mean()),
                        "reward_std": float(rewards.std()), "diverged": diverged})
            rows.append(row)
    return pd.DataFrame(rows)


def stack_study_data(config: SweepConfig, sets, settings=None) -> tuple[TransitionData, tuple, object]:
    """The shared arguments a chunk takes from the study datasets ``sets`` ({name: Transitions},
    or one such dict per env setting): train_data (TransitionData with one dataset [M = P ×
    len(train), capacity] per setting × train dataset, setting-major), eval_sets (per eval
    dataset the validation split as (obs [P, B, d], action [P, B, a], next_obs [P, B, d],
    weight [P, B] or None); settings of unequal size are padded with weight-0 copies of their
    first row) and env_settings (``settings.params``, leaves [P, ...], or None)."""
    per_setting = [sets] if isinstance(sets, dict) else list(sets)
    train_data = TransitionData.stack([TransitionData.from_dataset(s[n]) for s in per_setting
                                       for n in config.datasets.train])
    eval_sets = []
    for name in config.datasets.eval:
        splits = [s[name].validation() for s in per_setting]
        size = max(v.obs.shape[0] for v in splits)
        pad = lambda a: np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[:1], size - a.shape[0], 0)])
        arrays = tuple(np.stack([pad(getattr(v, f)) for v in splits]) for f in ("obs", "action", "next_obs"))
        same = all(v.obs.shape[0] == size for v in splits)
        weight = None if same else np.stack([np.arange(size) < v.obs.shape[0] for v in splits]).astype(np.float32)
        eval_sets.append(arrays + (weight,))
    env_settings = None if settings is None else settings.params
    return jax.tree.map(jnp.asarray, train_data), tuple(eval_sets), env_settings
