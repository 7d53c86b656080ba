"""The data of a PETS population (``[population] source = "pets"``, Lambert et al. 2020 §4.1:
"We aggregated M = 1000 cartpole models … trained with PETS").

S PETS runs of T planned trials each (``study_data.pets_runs``) give the population its training
sets and its held-out evaluation sets:

* **training data** — for seed s and planned trial k (1 … T), the run's aggregated data before
  trial k (the random trial and planned trials 1 … k − 1): exactly what PETS fitted before
  planning trial k. Its rows are split once per seed into training and validation rows
  (``training.validation_fraction``, key ``fold_in(data root, SPLIT_SALT + s)``), so every copy
  trained on a prefix of seed s sees the same split and a longer prefix extends a shorter one.
  One ``TransitionData`` dataset per (seed, trial): M = S · T, capacity (T + 1) · trial length.
* **evaluation sets** — one group per seed s (the model's ``eval_group``): ``expert`` = the
  planned trials of the *other* seeds whose reward exceeds ``datasets.expert_min_reward`` (the
  ``expert_episodes`` best; 0 = all), ``on_policy`` = every transition of the other seeds' runs,
  ``grid`` / ``sampled`` = the validation split of the study's true-dynamics set (no model trains
  on it). So no model is scored on a transition of its own run, and the models of one seed share
  their sets. Groups of unequal size are padded with weight-0 rows.
* **PETS's own models** — the model each run planned trial k with (leaves [S · T, ...]).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.sweep.study_data import DATA_SALT, pets_trial_models

SPLIT_SALT = 0x5B117  # fold_in offset of the per-seed train / validation split keys


class PetsPopulationData(NamedTuple):
    """What a PETS population's chunks take (see the module docstring).

    train_data: TransitionData [S · T, (T + 1) · L]; eval_sets: per ``datasets.eval`` name
    (obs [S, B, d], action [S, B, a], next_obs [S, B, d], weight [S, B] or None);
    pets_models: (params, normalizer) leaves [S · T, ...]; trial_rewards [S, T + 1] (trial 0 is
    the random one); train_rows [S · T] training rows per dataset; notes: what the builder had to
    fall back on (e.g. no trial above the expert threshold among the other seeds)."""

    train_data: TransitionData
    eval_sets: tuple
    pets_models: tuple
    trial_rewards: np.ndarray
    train_rows: np.ndarray
    notes: dict


def seed_split(seed: int, num_runs: int, shape: tuple[int, int], validation_fraction: float) -> np.ndarray:
    """[S, R, L] bool: the validation rows of each run's buffer (R trials × L steps), drawn
    per run from ``fold_in(fold_in(key(seed), DATA_SALT), SPLIT_SALT + s)``."""
    root = jax.random.fold_in(jax.random.key(seed), DATA_SALT)
    draws = [jax.random.uniform(jax.random.fold_in(root, SPLIT_SALT + s), shape) for s in range(num_runs)]
    return np.stack([np.asarray(d) < validation_fraction for d in draws])


def prefix_datasets(runs: dict, is_validation: np.ndarray) -> TransitionData:
    """One dataset per (seed, planned trial k): the seed's rows of trials 0 … k − 1 (alive rows
    only), split by ``is_validation`` [S, R, L]. → TransitionData [S · (R − 1), R · L]."""
    alive = np.asarray(runs["alive"], bool)
    num_seeds, num_runs, length = alive.shape
    trial_of_row = np.repeat(np.arange(num_runs), length)  # [R · L]
    flat = lambda a: np.asarray(a, np.float32).reshape((num_seeds, num_runs * length) + np.shape(a)[3:])
    obs, action, next_obs, reward = (flat(runs[k]) for k in ("obs", "action", "next_obs", "reward"))
    alive, val = alive.reshape(num_seeds, -1), is_validation.reshape(num_seeds, -1)
    per_seed_trial = lambda a: np.repeat(a, num_runs - 1, axis=0)  # [S · (R − 1), ...]
    before = np.stack([trial_of_row < k for k in range(1, num_runs)])  # [R − 1, R · L]
    before = np.tile(before, (num_seeds, 1))
    return TransitionData(
        obs=jnp.asarray(per_seed_trial(obs)), action=jnp.asarray(per_seed_trial(action)),
        next_obs=jnp.asarray(per_seed_trial(next_obs)), reward=jnp.asarray(per_seed_trial(reward)),
        weight=jnp.ones((num_seeds * (num_runs - 1), num_runs * length), jnp.float32),
        train_mask=jnp.asarray(per_seed_trial(alive & ~val) & before),
        val_mask=jnp.asarray(per_seed_trial(alive & val) & before))


def held_out_rows(runs: dict, seed: int, kind: str, min_reward: float, num_episodes: int) -> tuple[dict, str | None]:
    """The rows of the other seeds' runs that model seed ``seed`` is scored on: ``kind``
    "on_policy" — every alive transition; "expert" — the planned trials with reward >
    ``min_reward`` (the paper: "cartpole r > 179"), the ``num_episodes`` best (0 = all); with
    none above it, the best ``max(num_episodes, 1)`` and a note. → ({obs, action, next_obs}, note)."""
    others = [s for s in range(np.shape(runs["alive"])[0]) if s != seed]
    note = None
    if kind == "on_policy":
        picks = [(s, r) for s in others for r in range(np.shape(runs["alive"])[1])]
    else:
        rewards = np.asarray(runs["trial_rewards"])
        planned = sorted(((rewards[s, r], s, r) for s in others for r in range(1, rewards.shape[1])), reverse=True)
        passing = [(s, r) for value, s, r in planned if value > min_reward]
        picks = passing[:num_episodes] if num_episodes else passing
        if not picks:
            picks = [(s, r) for _, s, r in planned[:max(num_episodes, 1)]]
            note = (f"seed {seed}: no other seed's trial exceeded expert_min_reward={min_reward}; used the best "
                    f"{len(picks)} (rewards {[round(float(rewards[s, r]), 1) for s, r in picks]})")
    alive = np.concatenate([np.asarray(runs["alive"][s, r], bool) for s, r in picks])
    rows = {k: np.concatenate([np.asarray(runs[k][s, r], np.float32) for s, r in picks])[alive]
            for k in ("obs", "action", "next_obs")}
    return rows, note


def stack_groups(groups: list[dict]) -> tuple:
    """Per-seed row sets → (obs [S, B, d], action [S, B, a], next_obs [S, B, d], weight [S, B]
    or None), padded to the largest with weight-0 copies of the first row."""
    size = max(g["obs"].shape[0] for g in groups)
    pad = lambda a: np.concatenate([a, np.repeat(a[:1], size - a.shape[0], 0)])
    arrays = tuple(jnp.asarray(np.stack([pad(g[k]) for g in groups])) for k in ("obs", "action", "next_obs"))
    same = all(g["obs"].shape[0] == size for g in groups)
    weight = None if same else jnp.asarray(np.stack([np.arange(size) < g["obs"].shape[0] for g in groups]),
                                           jnp.float32)
    return arrays + (weight,)


def build_pets_population(config, env, sets: dict, runs: dict, log: Callable[[str], None] = print) -> PetsPopulationData:
    """The chunks' data of a PETS-population sweep ``config`` from its PETS ``runs``
    (``study_data.pets_runs``) and its study datasets ``sets`` ({name: Transitions}, for the
    true-dynamics sets)."""
    from mismatch_jax.sweep.study_data import StudyData

    build = config.datasets
    num_seeds = np.shape(runs["alive"])[0]
    is_val = seed_split(config.seed, num_seeds, np.shape(runs["alive"])[1:], config.training.validation_fraction)
    train_data = prefix_datasets(runs, is_val)
    eval_sets, notes = [], {}
    for name in build.eval:
        if name in ("expert", "on_policy"):
            groups = []
            for s in range(num_seeds):
                rows, note = held_out_rows(runs, s, name, build.expert_min_reward, build.expert_episodes)
                if note:
                    notes[f"{name}@seed{s}"] = note
                    log("datasets: warning: " + note)
                groups.append(rows)
            eval_sets.append(stack_groups(groups))
        else:
            val = sets[name].validation()
            rows = {k: np.asarray(getattr(val, k), np.float32) for k in ("obs", "action", "next_obs")}
            eval_sets.append(tuple(jnp.asarray(rows[k])[None] for k in ("obs", "action", "next_obs")) + (None,))
    params, normalizer = pets_trial_models(StudyData.of_sweep(config), env, runs)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    pets_models = jax.tree.map(flat, (params, normalizer))
    train_rows = np.asarray(train_data.train_mask).sum(axis=1)
    log(f"datasets: PETS population data: {num_seeds} seeds × {np.shape(runs['alive'])[1] - 1} trials, "
        f"{int(train_rows.min())}–{int(train_rows.max())} training rows per (seed, trial); held-out sets "
        + ", ".join(f"{n}: {int(e[0].shape[1])} rows" for n, e in zip(build.eval, eval_sets)))
    return PetsPopulationData(train_data=train_data, eval_sets=tuple(eval_sets), pets_models=pets_models,
                              trial_rewards=np.asarray(runs["trial_rewards"]), train_rows=train_rows, notes=notes)
