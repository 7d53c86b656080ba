"""The four datasets of a sweep, built once per (env, kind, seed, spec) and cached on disk.

``on_policy`` and ``expert`` come from one set of PETS runs (the data PETS itself trains on, and
its best trials, as Lambert et al. 2020 describe their expert data: "high-reward trajectories
(cartpole r > 179)"); ``grid`` and ``sampled`` step the true dynamics from states on a grid /
drawn uniformly over the state-action box (``mismatch_jax.data``). An env without a box
(half-cheetah) gets ``sampled`` from the PETS runs' visited states with uniform actions
(``mismatch_jax.data.visited``) and no ``grid``.
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
from mismatch_jax.config_io import ConfigError
from mismatch_jax.envs.base import Env
from mismatch_jax.sweep.config import DatasetBuild, SweepConfig
from mismatch_jax.files import write_npz

DATA_SALT = 0x5EED_DA7A  # fold_in salt separating dataset keys from model keys
MODEL_PREFIX = "pets_model_leaf_"  # npz keys of the final PETS models' leaves
TRIAL_MODEL_PREFIX = "pets_trial_model_leaf_"  # npz keys of every trial's PETS model [S, T, ...]
SETTINGS_SALT = 0x5E771  # fold_in offset of the env settings' data keys


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


def pets_runs(request: StudyData, env: Env, cache_dir: Path, log: Callable[[str], None], settings=None) -> dict:
    """Runs (or loads from cache) the PETS runs behind on_policy/expert data.

    Returns numpy arrays obs/action/next_obs [S, R, T, d], reward/alive/train_mask/val_mask
    [S, R, T] (R = random trial + planned trials, T = trial length; PETS's own train / validation
    rows, alive = either), trial_rewards [S, R], the final models' leaves (``MODEL_PREFIX``) and
    every planned trial's model (``TRIAL_MODEL_PREFIX``, leaves [S, R − 1, ...]: the model PETS
    fitted before, and planned, trial k = 1 … R − 1; ``pets_trial_models``). With ``settings``
    (``sweep.env_params.Settings``, P true dynamics) all P × S runs go in one program (one compile)
    and the leading axis is [P · S], setting-major (``runs_of_setting`` slices one out)."""
    from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys
    from mismatch_jax.planning import candidate_devices_for

    pets_config = _pets_config(request)
    spec = {"env": request.env_name, "kind": "pets_runs", "pets": dataclasses.asdict(pets_config)}
    if settings is not None:
        spec["env_settings"] = {name: values.tolist() for name, values in settings.values.items()}
    path = Path(cache_dir) / f"{request.env_name}_pets_runs_{datasets.spec_hash(spec)}.npz"
    if path.is_file():
        with np.load(path) as f:
            cached_runs = {k: f[k] for k in f.files if k != "spec"}
        if any(k.startswith(TRIAL_MODEL_PREFIX) for k in cached_runs) and "train_mask" in cached_runs:
            log(f"datasets: PETS runs from cache {path}")
            return cached_runs
        log(f"datasets: {path} predates the saved per-trial PETS models and split; running PETS again")
    # Several (host) devices (`--devices`): each planning call's candidates are split over them;
    # the runs are the same, so the cache key does not record it.
    pets = make_pets(pets_config, env, candidate_devices=candidate_devices_for(pets_config.cem_config(env)))
    keys, env_params = seed_keys(pets_config), None
    if settings is not None:
        # Setting p's seed i: fold_in(fold_in(key(seed), SETTINGS_SALT + p), i) — its own data,
        # whatever the other settings are.
        root = jax.random.key(pets_config.seed)
        keys = jax.numpy.concatenate([seed_keys(pets_config, root=jax.random.fold_in(root, SETTINGS_SALT + p))
                                      for p in range(settings.size)])
        env_params = jax.tree.map(lambda a: jax.numpy.repeat(a, pets_config.num_seeds, axis=0), settings.params)
    runs_count = keys.shape[0]
    log(f"datasets: running PETS ({runs_count} run(s) × {pets_config.num_trials} trials) for on-policy/expert data")
    init, step = compile_trial_loop(pets, keys, env_params=env_params)
    state, random_reward = init(keys)
    trial_rewards = [np.asarray(random_reward)]
    trial_models = []  # the model each trial planned with: its leaves, host copies
    for trial in range(pets_config.num_trials):
        state, metrics = step(state)
        trial_rewards.append(np.asarray(metrics.reward))
        trial_models.append([np.asarray(leaf) for leaf in jax.tree.leaves((state.params, state.normalizer))])
        log(f"  PETS trial {trial + 1}/{pets_config.num_trials}: reward {np.round(trial_rewards[-1], 1).tolist()}")
    buffer = state.buffer
    length = pets.trial_length
    shape = lambda a: np.asarray(a).reshape((runs_count, pets_config.num_trials + 1, length) + np.shape(a)[2:])
    out = {
        "obs": shape(buffer.obs), "action": shape(buffer.action), "next_obs": shape(buffer.next_obs),
        "reward": shape(buffer.reward),
        "alive": shape(np.asarray(buffer.train_mask) | np.asarray(buffer.val_mask)),
        "train_mask": shape(buffer.train_mask), "val_mask": shape(buffer.val_mask),
        "trial_rewards": np.stack(trial_rewards, axis=1),
    }
    leaves = jax.tree.leaves((state.params, state.normalizer))
    out.update({f"{MODEL_PREFIX}{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    out.update({f"{TRIAL_MODEL_PREFIX}{i}": np.stack([m[i] for m in trial_models], axis=1)
                for i in range(len(leaves))})
    write_npz(path, out, spec=json.dumps(spec, sort_keys=True, default=str))
    return out


def runs_of_setting(runs: dict, setting: int, num_seeds: int) -> dict:
    """The runs of env setting ``setting`` out of ``pets_runs(..., settings)`` (leading [S])."""
    return {k: v[setting * num_seeds:(setting + 1) * num_seeds] for k, v in runs.items()}


def _saved_models(request: StudyData, env: Env, runs: dict, prefix: str, lead: int):
    """(params, normalizer) of the PETS model leaves saved under ``prefix`` with ``lead``
    leading axes, checked against the config's model."""
    from mismatch_jax import models

    model_config = _pets_config(request).model_config(env)
    template = (models.init(jax.random.key(0), model_config), models.identity_normalizer(model_config))
    leaves, treedef = jax.tree.flatten(template)
    saved = [runs[f"{prefix}{i}"] for i in range(len(leaves))]
    for want, got in zip(leaves, saved):
        if got.shape[lead:] != want.shape:
            raise ValueError(f"cached PETS model leaf has shape {got.shape[lead:]}, the config needs {want.shape}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in saved])


def pets_models(request: StudyData, env: Env, runs: dict):
    """The final PETS models of ``runs`` (as ``pets_runs`` returns them) → (params, normalizer),
    each leaf with a leading seed axis [S]: the model that earned the expert trials."""
    return _saved_models(request, env, runs, MODEL_PREFIX, 1)


def pets_trial_models(request: StudyData, env: Env, runs: dict):
    """Every planned trial's PETS model of ``runs`` → (params, normalizer), leaves [S, K, ...]
    (K = planned trials; entry k − 1 is the model fitted on the data before trial k, the one
    that planned it)."""
    return _saved_models(request, env, runs, TRIAL_MODEL_PREFIX, 2)


def _has_box(env: Env) -> bool:
    """Whether grid / sampled data cover a state-action box (else: the visited states)."""
    return env.name in datasets.DEFAULT_BOXES


def _true_dynamics_dataset(request: StudyData, env: Env, name: str, key: jax.Array,
                           params=None, setting: dict | None = None, runs: dict | None = None) -> datasets.Transitions:
    """The grid or sampled dataset (cached on disk) of the env's default dynamics, or of the
    constants ``params`` of env setting ``setting`` ({"index", "values"}, part of the cache key).
    An env without a state-action box (half-cheetah) gets sampled data from the states of the
    PETS ``runs`` (``data.visited``) and no grid."""
    cfg, vf = request.build, request.validation_fraction
    extra = {} if setting is None else {"env_setting": setting}
    if not _has_box(env):
        pets_spec = datasets.spec_hash(dataclasses.asdict(_pets_config(request)))
        spec = {"env": request.env_name, "kind": "sampled", "states": "visited", "pets": pets_spec,
                "n": cfg.sampled_size, "vf": vf, "seed": request.seed, **extra}
        return datasets.cached(cfg.cache_dir, spec, lambda: datasets.visited_sampled_dataset(
            key, env, datasets.visited_states(runs), cfg.sampled_size, validation_fraction=vf, params=params))
    if name == "grid":
        spec = {"env": request.env_name, "kind": "grid", "points": cfg.grid_points, "vf": vf, "seed": request.seed, **extra}
        return datasets.cached(cfg.cache_dir, spec, lambda: datasets.grid_dataset(
            key, env, cfg.grid_points, validation_fraction=vf, params=params))
    spec = {"env": request.env_name, "kind": "sampled", "n": cfg.sampled_size, "vf": vf, "seed": request.seed, **extra}
    return datasets.cached(cfg.cache_dir, spec, lambda: datasets.sampled_dataset(
        key, env, cfg.sampled_size, validation_fraction=vf, params=params))


def study_dataset(request: StudyData, env: Env, name: str, log: Callable[[str], None] = print) -> datasets.Transitions:
    """One dataset ``name`` of ``request`` (default dynamics), built (or read from the cache)
    with exactly the key ``build_study_datasets`` gives it: grid / sampled data of an env with a
    state-action box step the true dynamics without running PETS; expert / on-policy data come
    from the (cached) PETS runs."""
    if name not in request.names:
        raise ValueError(f"{name!r} is not one of the study's datasets {list(request.names)}")
    if name in ("grid", "sampled") and _has_box(env):
        root = jax.random.fold_in(jax.random.key(request.seed), DATA_SALT)
        return _true_dynamics_dataset(request, env, name, jax.random.fold_in(root, request.names.index(name)))
    return build_study_datasets(request, env, log)[0][name]


def build_study_datasets(request: StudyData, env: Env, log: Callable[[str], None] = print, settings=None):
    """Every dataset of ``request`` → ({name: Transitions}, notes dict); with ``settings``
    (``sweep.env_params.Settings``, P true dynamics) → ([{name: Transitions}] per setting, notes),
    each setting's data built in its own dynamics from its own keys (notes keys end ``@p``).

    grid / sampled data are built in a background thread while the PETS runs compile and run:
    PETS's small per-step programs leave a core idle, and the true-dynamics program takes ~15 s
    to compile on a CPU."""
    cfg = request.build
    cache_dir = Path(cfg.cache_dir)
    needed = list(request.names)
    if "grid" in needed and not _has_box(env):
        raise ConfigError(f"datasets.train / datasets.eval: {env.name} has no state-action box for "
                          "grid data; use 'sampled' (states from the PETS runs, uniform actions)")
    root = jax.random.fold_in(jax.random.key(request.seed), DATA_SALT)
    count = 1 if settings is None else settings.size
    bases = [root] if settings is None else [jax.random.fold_in(root, SETTINGS_SALT + p) for p in range(count)]
    keys = [{name: jax.random.fold_in(base, index) for index, name in enumerate(needed)} for base in bases]

    def setting_args(p):
        if settings is None:
            return ()
        return settings.one(p), {"index": p, "values": {k: v[p].tolist() for k, v in settings.values.items()}}

    built, notes = [{} for _ in range(count)], {}
    vf = request.validation_fraction
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        background = {(p, name): pool.submit(_true_dynamics_dataset, request, env, name, keys[p][name], *setting_args(p))
                      for p in range(count) for name in needed if name in ("grid", "sampled") and _has_box(env)}
        all_runs = None
        if "on_policy" in needed or "expert" in needed or not _has_box(env):
            all_runs = pets_runs(request, env, cache_dir, log, settings)
        for p in range(count):
            tag = "" if settings is None else f"@{p}"
            runs = all_runs if settings is None or all_runs is None else runs_of_setting(
                all_runs, p, request.build.pets.num_seeds)
            for name in needed:
                key = keys[p][name]
                if (p, name) in background:
                    built[p][name] = background[(p, name)].result()
                elif name in ("grid", "sampled"):  # no box: from the visited states
                    built[p][name] = _true_dynamics_dataset(request, env, name, key, *setting_args(p), runs=runs)
                elif name == "on_policy":
                    built[p][name] = datasets.on_policy_dataset(key, runs, vf)
                elif name == "expert":
                    built[p][name], expert_rewards, note = datasets.expert_dataset(
                        key, runs, cfg.expert_episodes, cfg.expert_min_reward, vf)
                    if note:
                        notes["expert" + tag] = note
                        log("datasets: warning: " + (f"setting {p}: " if tag else "") + note)
                    notes.setdefault("expert_rewards" + tag, expert_rewards)
                log(f"datasets: {'setting %d: ' % p if tag else ''}{name}: {built[p][name].size} transitions "
                    f"({int(np.asarray(built[p][name].is_validation).sum())} validation)")
    return (built[0], notes) if settings is None else (built, notes)
