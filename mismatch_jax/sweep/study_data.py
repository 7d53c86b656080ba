"""The four datasets of a sweep, built once per (env, kind, seed, spec) and cached on disk.

``on_policy`` and ``expert`` come from one set of PETS runs (the data PETS itself trains on, and
its best trials, as Lambert et al. 2020 describe their expert data: "high-reward trajectories
(cartpole r > 179)"); ``grid`` and ``sampled`` step the true dynamics from states on a grid /
drawn uniformly over the state-action box (``mismatch_jax.data``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from mismatch_jax import data as datasets
from mismatch_jax.envs.base import Env
from mismatch_jax.sweep.config import DatasetBuild, SweepConfig
from mismatch_jax.files import write_npz

DATA_SALT = 0x5EED_DA7A  # fold_in salt separating dataset keys from model keys
MODEL_PREFIX = "pets_model_leaf_"  # npz keys of the final PETS models' leaves


@dataclasses.dataclass(frozen=True)
class StudyData:
    """What to build: the datasets ``names`` of env ``env_name`` under ``seed``, each with a
    ``validation_fraction`` holdout, built as ``build`` says (``sweep.config.DatasetBuild``)."""

    build: DatasetBuild
    names: tuple[str, ...]
    env_name: str
    seed: int
    validation_fraction: float

    @classmethod
    def of_sweep(cls, config: SweepConfig) -> "StudyData":
        """Every dataset a sweep trains or evaluates on."""
        names = tuple(dict.fromkeys(config.datasets.train + config.datasets.eval))
        return cls(config.datasets, names, config.env, config.seed, config.training.validation_fraction)


def _pets_config(request: StudyData):
    return dataclasses.replace(request.build.pets, env=request.env_name, seed=request.seed)


def pets_runs(request: StudyData, env: Env, cache_dir: Path, log: Callable[[str], None]) -> dict:
    """Runs (or loads from cache) the PETS runs behind on_policy/expert data.

    Returns numpy arrays obs/action/next_obs [S, R, T, d], reward/alive [S, R, T] (R = random
    trial + planned trials, T = trial length) and trial_rewards [S, R].
    """
    from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys

    pets_config = _pets_config(request)
    spec = {"env": request.env_name, "kind": "pets_runs", "pets": dataclasses.asdict(pets_config)}
    path = Path(cache_dir) / f"{request.env_name}_pets_runs_{datasets.spec_hash(spec)}.npz"
    if path.is_file():
        with np.load(path) as f:
            cached_runs = {k: f[k] for k in f.files if k != "spec"}
        if any(k.startswith(MODEL_PREFIX) for k in cached_runs):
            log(f"datasets: PETS runs from cache {path}")
            return cached_runs
        log(f"datasets: {path} predates the saved PETS models; running PETS again")
    pets = make_pets(pets_config, env)
    log(f"datasets: running PETS ({pets_config.num_seeds} seed(s) × {pets_config.num_trials} trials) "
        "for on-policy/expert data")
    keys = seed_keys(pets_config)
    init, step = compile_trial_loop(pets, keys)
    state, random_reward = init(keys)
    trial_rewards = [np.asarray(random_reward)]
    for trial in range(pets_config.num_trials):
        state, metrics = step(state)
        trial_rewards.append(np.asarray(metrics.reward))
        log(f"  PETS trial {trial + 1}/{pets_config.num_trials}: reward {np.round(trial_rewards[-1], 1).tolist()}")
    buffer = state.buffer
    seeds, length = pets_config.num_seeds, pets.trial_length
    shape = lambda a: np.asarray(a).reshape((seeds, pets_config.num_trials + 1, length) + np.shape(a)[2:])
    out = {
        "obs": shape(buffer.obs), "action": shape(buffer.action), "next_obs": shape(buffer.next_obs),
        "reward": shape(buffer.reward),
        "alive": shape(np.asarray(buffer.train_mask) | np.asarray(buffer.val_mask)),
        "trial_rewards": np.stack(trial_rewards, axis=1),
    }
    leaves = jax.tree.leaves((state.params, state.normalizer))
    out.update({f"{MODEL_PREFIX}{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    write_npz(path, out, spec=json.dumps(spec, sort_keys=True, default=str))
    return out


def pets_models(request: StudyData, env: Env, runs: dict):
    """The final PETS models of ``runs`` (as ``pets_runs`` returns them) → (params, normalizer),
    each leaf with a leading seed axis [S]: the model that earned the expert trials."""
    from mismatch_jax import models

    model_config = _pets_config(request).model_config(env)
    template = (models.init(jax.random.key(0), model_config), models.identity_normalizer(model_config))
    leaves, treedef = jax.tree.flatten(template)
    saved = [runs[f"{MODEL_PREFIX}{i}"] for i in range(len(leaves))]
    for want, got in zip(leaves, saved):
        if got.shape[1:] != want.shape:
            raise ValueError(f"cached PETS model leaf has shape {got.shape[1:]}, the config needs {want.shape}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in saved])


def _true_dynamics_dataset(request: StudyData, env: Env, name: str, key: jax.Array) -> datasets.Transitions:
    """The grid or sampled dataset (cached on disk)."""
    cfg, vf = request.build, request.validation_fraction
    if name == "grid":
        spec = {"env": request.env_name, "kind": "grid", "points": cfg.grid_points, "vf": vf, "seed": request.seed}
        return datasets.cached(cfg.cache_dir, spec, lambda: datasets.grid_dataset(
            key, env, cfg.grid_points, validation_fraction=vf))
    spec = {"env": request.env_name, "kind": "sampled", "n": cfg.sampled_size, "vf": vf, "seed": request.seed}
    return datasets.cached(cfg.cache_dir, spec, lambda: datasets.sampled_dataset(
        key, env, cfg.sampled_size, validation_fraction=vf))


def build_study_datasets(request: StudyData, env: Env, log: Callable[[str], None] = print):
    """Every dataset of ``request`` → ({name: Transitions}, notes dict).

    grid / sampled data are built in a background thread while the PETS runs compile and run:
    PETS's small per-step programs leave a core idle, and the true-dynamics program takes ~15 s
    to compile on a CPU."""
    cfg = request.build
    cache_dir = Path(cfg.cache_dir)
    needed = list(request.names)
    root = jax.random.fold_in(jax.random.key(request.seed), DATA_SALT)
    keys = {name: jax.random.fold_in(root, index) for index, name in enumerate(needed)}
    built, notes = {}, {}
    runs = None
    vf = request.validation_fraction
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        background = {name: pool.submit(_true_dynamics_dataset, request, env, name, keys[name])
                      for name in needed if name in ("grid", "sampled")}
        if "on_policy" in needed or "expert" in needed:
            runs = pets_runs(request, env, cache_dir, log)
        for name in needed:
            key = keys[name]
            if name in background:
                built[name] = background[name].result()
            elif name == "on_policy":
                built[name] = datasets.on_policy_dataset(key, runs, vf)
            elif name == "expert":
                built[name], expert_rewards, note = datasets.expert_dataset(
                    key, runs, cfg.expert_episodes, cfg.expert_min_reward, vf)
                if note:
                    notes["expert"] = note
                    log("datasets: warning: " + note)
                notes.setdefault("expert_rewards", expert_rewards)
            log(f"datasets: {name}: {built[name].size} transitions "
                f"({int(np.asarray(built[name].is_validation).sum())} validation)")
    return built, notes
