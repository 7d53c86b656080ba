"""Distance re-weighted model training (Lambert et al. 2020, §5, Eq. 2, Fig. 8).

Each training tuple y = (s, a, s′) gets the loss weight

    ω(y) = c · exp(−d*(y) / ℓ),     d*(y) = min_j ‖ ([s, a] − [s_j, a_j]) / scale ‖₂

where (s_j, a_j) are the points of one expert trajectory (``[expert]``), ``scale`` the
per-dimension distance scale (``pool.distance_scale``, default 1 = raw units, the units in which
the paper's ε ∈ [0.28, 15.66] is stated) and ℓ = ``grid.length_scale`` (default 1: the paper's
exact form ω = c·e^{−d*}). Points on the trajectory get exp(0) = 1 before normalisation and
points far away ≈ 0, as the paper asks. **c** normalises each dataset's weights to mean 1:
c = S / Σ_i exp(−d*_i/ℓ) over its S tuples (computed as exp(−(d* − min d*)/ℓ) / mean(·) for
numerical safety), so ω ≡ 1 is exactly the unweighted case. Note that the trainer
(``train.population``) uses the self-normalised weighted mean Σ ω l / Σ ω *per minibatch*, so c
cancels inside every minibatch and ω acts through the relative weights of a minibatch's tuples;
with ``training.batch_size ≥ max(sizes)`` every update is the exact Eq. 2 weighted mean over the
whole dataset.

Fig. 8 grid: datasets of S tuples (S ∈ ``grid.sizes``) drawn from a pool of uniform tuples over the
state-action box restricted to d* ≤ ε (ε ∈ ``grid.epsilons``). The pool is streamed in chunks:
each chunk is drawn, its d* computed (``data.min_distance``), and for every ε the first
max(sizes) qualifying tuples are kept — for i.i.d. uniform draws the first S qualifying points
are a uniform sample of the qualifying set, and the S-datasets of one ε are nested (common random
numbers across S). Only kept tuples are stepped through the true env. A cell whose ε-ball holds
fewer than S pool tuples is infeasible (NaN in the heat map; the JSON lists the counts).

Every cell × {re-weighted, uniform} × replicate is one model of ONE population trained by
``make_train`` (``dataset_index`` per model, ``weight [M, T]`` carrying ω or 1); all models are then
scored by CEM-MPC (PETS's controller, ``mpc_episode``) in the true env, vmapped over models ×
trials in calls of ``evaluation.models_per_call`` models. All models use the same trial keys
(same start states and planner noise), so differences between cells are not start-state luck.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.analysis.reweight import model_mean_interval, plot_heatmaps, plot_size_curves
from mismatch_jax.data import collect_buckets, distance_weights
from mismatch_jax.errors import InputError
from mismatch_jax.experiments.study_models import (STUDY_MODEL, DataSettings, build_dataset,
                                                   make_population_evaluator)
from mismatch_jax.files import check_writable, write_json, write_npz
from mismatch_jax.population import devices_dividing, jit_sharded
from mismatch_jax.agents.config import PetsConfig
from mismatch_jax.config_io import Schema, load_toml, setting, to_dict
from mismatch_jax.envs.registry import check_env
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.planning.mpc import EpisodeSettings
from mismatch_jax.train.config import TrainingSection
from mismatch_jax.planning.cem import CEMConfig

EXPERT_SALT = 0xE7E
POOL_SALT = 0x9001
SPLIT_SALT = 0x5B1
MODEL_SALT = 0x3E1
EVAL_SALT = 0xE7A1


def log_grid(low: float, high: float, num: int, integer: bool = False) -> tuple:
    """``num`` log-spaced values from low to high (rounded to distinct ints if ``integer``)."""
    values = np.geomspace(low, high, num)
    if integer:
        return tuple(int(v) for v in np.unique(np.round(values).astype(int)))
    return tuple(float(round(v, 4)) for v in values)


@dataclasses.dataclass(frozen=True)
class ExpertSettings(Schema):
    """Where the expert trajectory (the distance reference) comes from.

    source: "true_cem" — one CEM-MPC episode on the true dynamics (planned with the
    ``[expert.cem]`` table; cached in ``cache_dir``); "pets" — the best planned PETS trial above
    ``min_reward`` of the runs of the ``[expert.pets]`` table (``sweep.study_data``); "file" — an
    npz with ``obs [T, obs_dim]`` and ``action [T, action_dim]`` at ``path``. Only steps before a
    termination are used. episode_length omitted = the env's.
    """

    source: Literal["true_cem", "pets", "file"] = "true_cem"
    path: str = ""
    cem: CEMConfig = CEMConfig(horizon=25, population_size=400, num_elites=40)
    episode_length: int | None = setting(None, ge=1)
    pets: PetsConfig = PetsConfig()
    min_reward: float = 179.0
    cache_dir: str = "runs/datasets"

    def check(self):
        if self.source == "file" and not self.path:
            raise ValueError("path must name an npz with obs/action when source = 'file'")


@dataclasses.dataclass(frozen=True)
class PoolSettings(Schema):
    """The uniform tuple pool (paper: 25e6 tuples) streamed in chunks of ``chunk_size``.

    distance_scale: per-dimension scale of [obs, action] in d* (empty = 1 everywhere).
    box_low / box_high: the state-action box (empty = ``data.DEFAULT_BOXES[env]``).
    """

    size: int = setting(1_000_000, ge=1)
    chunk_size: int = setting(262_144, ge=1)
    distance_scale: tuple[float, ...] = setting((), gt=0.0)
    box_low: tuple[float, ...] = ()
    box_high: tuple[float, ...] = ()

    def check(self):
        if (len(self.box_low) == 0) != (len(self.box_high) == 0):
            raise ValueError("box_low and box_high must be given together")


@dataclasses.dataclass(frozen=True)
class GridSettings(Schema):
    """The Fig. 8 grid: dataset sizes S × distance bounds ε, ``replicates`` models per cell and
    weighting; ω's length scale ℓ; each dataset's validation fraction."""

    sizes: tuple[int, ...] = setting(log_grid(10, 2500, 8, integer=True), ge=2)  # one train + one validation tuple
    epsilons: tuple[float, ...] = setting(log_grid(0.28, 15.66, 8), gt=0.0)
    replicates: int = setting(1, ge=1)
    length_scale: float = setting(1.0, gt=0.0)
    validation_fraction: float = setting(0.1, ge=0.0, lt=1.0)

    def check(self):
        for name, values in (("sizes", self.sizes), ("epsilons", self.epsilons)):
            if not values:
                raise ValueError(f"{name} must list at least one value")
            if list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be strictly increasing, got {list(values)}")


@dataclasses.dataclass(frozen=True)
class ReweightEvaluation(EpisodeSettings):
    """CEM-MPC episodes in the true env per model (paper: 100 PETS trials per cell);
    models_per_call bounds memory (0 = all models in one call). episode_length omitted = env's."""

    models_per_call: int = setting(0, ge=0)


@dataclasses.dataclass(frozen=True)
class ReweightConfig(Schema):
    """One re-weighting study (``mismatch-jax reweight CONFIG``)."""

    env: str = "cartpole_swingup"
    name: str = "reweight"
    seed: int = setting(0, ge=0)
    out_dir: str = "runs/reweight"
    model: ModelConfig = STUDY_MODEL
    training: TrainingSection = TrainingSection()
    cem: CEMConfig = CEMConfig(horizon=25, population_size=400, num_elites=40)
    evaluation: ReweightEvaluation = ReweightEvaluation(trials=10)
    expert: ExpertSettings = ExpertSettings()
    pool: PoolSettings = PoolSettings()
    grid: GridSettings = GridSettings()

    def check(self):
        check_env(self.env)
        self.training.fixed("learning_rate")
        self.training.fixed("weight_decay")


def load_reweight_config(path) -> ReweightConfig:
    """Reads and validates a re-weighting TOML (``ConfigError`` names the offending key)."""
    return load_toml(ReweightConfig, path)


# ------------------------------------------------------------------------------------------------
# The expert reference.
# ------------------------------------------------------------------------------------------------


def expert_reference(settings: ExpertSettings, env, env_name: str, seed: int, log=print):
    """The expert trajectory → (obs [T, d], action [T, a], info dict). See ``ExpertSettings``."""
    from mismatch_jax import data as datasets

    if settings.source == "file":
        path = Path(settings.path)
        if not path.is_file():
            raise InputError(f"expert.path: {str(path)!r} does not exist")
        with np.load(path) as f:
            if "obs" not in f.files or "action" not in f.files:
                raise InputError(f"expert.path: {path} must hold arrays 'obs' and 'action'")
            obs, action = np.asarray(f["obs"], np.float32), np.asarray(f["action"], np.float32)
        if obs.ndim != 2 or obs.shape[1] != env.obs_dim or action.shape != (obs.shape[0], env.action_dim):
            raise ValueError(f"expert.path: obs must be [T, {env.obs_dim}] and action [T, {env.action_dim}], "
                             f"got {obs.shape} and {action.shape}")
        return obs, action, {"source": "file", "path": str(path)}
    if settings.source == "pets":
        data = DataSettings(kind="expert", expert_episodes=1, expert_min_reward=settings.min_reward,
                            pets=settings.pets, cache_dir=settings.cache_dir)
        expert, notes = build_dataset(data, env_name, seed, env, log)
        return (np.asarray(expert.obs), np.asarray(expert.action),
                {"source": "pets", "notes": notes, "reward": float(np.asarray(expert.reward).sum())})
    from mismatch_jax.planning.mpc import make_true_dynamics_planner, mpc_episode

    length = env.episode_length if settings.episode_length is None else settings.episode_length
    spec = {"env": env_name, "kind": "expert_true_cem", "seed": seed, "length": length,
            "cem": dataclasses.asdict(settings.cem)}
    path = Path(settings.cache_dir) / f"{env_name}_expert_true_cem_{datasets.spec_hash(spec)}.npz"
    if path.is_file():
        with np.load(path) as f:
            log(f"reweight: expert trajectory from cache {path}")
            return f["obs"], f["action"], {"source": "true_cem", "reward": float(f["reward"]), "cache": str(path)}
    cem = settings.cem.for_env(env)
    planner = make_true_dynamics_planner(env, cem)
    log(f"reweight: expert = CEM on the true dynamics ({length} steps)")
    key = jax.random.fold_in(jax.random.key(seed), EXPERT_SALT)
    traj, reward = jax.jit(lambda k: mpc_episode(k, env, planner, None, None, length))(key)
    alive = np.asarray(traj.alive)
    obs, action = np.asarray(traj.obs)[alive], np.asarray(traj.action)[alive]

    write_npz(path, {"obs": obs, "action": action, "reward": np.asarray(reward)}, spec=json.dumps(spec))
    return obs, action, {"source": "true_cem", "reward": float(reward), "cache": str(path)}


# ------------------------------------------------------------------------------------------------
# Building the population, training, evaluating.
# ------------------------------------------------------------------------------------------------


def build_grid_data(key, env, buckets, next_obs, rewards, grid: GridSettings):
    """Datasets of every feasible (S, ε) cell × {re-weighted, uniform}.

    buckets: (points [J, S_max, d], d_star [J, S_max], found [J]); next_obs [J, S_max, obs_dim],
    rewards [J, S_max] (true env). Returns (TransitionData with M = 2·cells datasets of capacity
    S_max, cells: list of (weighting w ∈ {0 re-weighted, 1 uniform}, i, j) per dataset,
    weight_constants [M] (c of each dataset))."""
    from mismatch_jax.data.transitions import TransitionData

    points, d_star, found = buckets
    obs_dim = env.obs_dim
    capacity = max(grid.sizes)
    datasets, cells, constants = [], [], []
    for j in range(len(grid.epsilons)):
        for i, size in enumerate(grid.sizes):
            if found[j] < size:
                continue
            p = points[j, :size]
            split_key = jax.random.fold_in(key, j * len(grid.sizes) + i)
            raw = np.exp(-(d_star[j, :size].astype(np.float64)) / grid.length_scale)
            for w, weight in enumerate((distance_weights(d_star[j, :size], grid.length_scale),
                                        np.ones(size, np.float32))):
                datasets.append(TransitionData.from_arrays(
                    split_key, p[:, :obs_dim], p[:, obs_dim:], next_obs[j, :size], rewards[j, :size],
                    weight, validation_fraction=grid.validation_fraction, capacity=capacity))
                cells.append((w, i, j))
                constants.append(float(1.0 / raw.mean()) if w == 0 else 1.0)
    if not datasets:
        raise InputError("no (size, epsilon) cell has enough pool tuples; raise pool.size or the epsilons")
    return TransitionData.stack(datasets), cells, np.asarray(constants)


def run_reweight(config: ReweightConfig, out_dir=None, log: Callable[[str], None] = print) -> dict:
    """Runs the Fig. 8 study; writes reweight.json and reweight_heatmap.png to ``out_dir``
    (default ``config.out_dir``) and returns the JSON dict (rewards [2, |S|, |ε|], index 0 =
    re-weighted, 1 = uniform; NaN = infeasible cell)."""
    from mismatch_jax import data as datasets
    from mismatch_jax.envs import make
    from mismatch_jax.planning.mpc import make_planner
    from mismatch_jax.train import TrainHParams, make_train, model_keys

    out = Path(out_dir or config.out_dir)
    check_writable(out)
    started = time.perf_counter()
    env = make(config.env)
    grid, pool = config.grid, config.pool
    root = jax.random.key(config.seed)
    timings = {}

    t = time.perf_counter()
    exp_obs, exp_action, expert_info = expert_reference(config.expert, env, config.env, config.seed, log)
    reference = np.concatenate([exp_obs, exp_action], axis=-1)
    timings["expert_s"] = time.perf_counter() - t
    dim = env.obs_dim + env.action_dim
    if pool.box_low:
        low, high = np.asarray(pool.box_low, np.float32), np.asarray(pool.box_high, np.float32)
        if low.shape != (dim,) or high.shape != (dim,) or not (high > low).all():
            raise InputError(f"pool.box_low/box_high must have {dim} entries each with high > low")
    else:
        if config.env not in datasets.DEFAULT_BOXES:
            raise InputError(f"pool.box_low/box_high: no default box for env {config.env!r}; give one")
        low, high = (np.asarray(b, np.float32) for b in datasets.DEFAULT_BOXES[config.env])
    scale = None
    if pool.distance_scale:
        if len(pool.distance_scale) != dim:
            raise InputError(f"pool.distance_scale must have {dim} entries (obs + action), "
                             f"got {len(pool.distance_scale)}")
        scale = np.asarray(pool.distance_scale, np.float32)

    t = time.perf_counter()
    max_size = max(grid.sizes)
    points, d_star, found, in_ball = collect_buckets(
        jax.random.fold_in(root, POOL_SALT), reference, low, high, grid.epsilons, max_size,
        pool.size, pool.chunk_size, scale)
    timings["pool_s"] = time.perf_counter() - t
    log(f"reweight: pool of {pool.size} tuples; tuples within ε: "
        + ", ".join(f"{e:g}: {n}" for e, n in zip(grid.epsilons, in_ball)))

    # True next states of the kept tuples (NaN rows of unfilled buckets are stepped as zeros).
    t = time.perf_counter()
    flat = np.nan_to_num(points.reshape(-1, dim))
    nxt, rew, _ = datasets.step_from(env, jnp.asarray(flat[:, : env.obs_dim]), jnp.asarray(flat[:, env.obs_dim:]))
    next_obs = np.asarray(nxt).reshape(len(grid.epsilons), max_size, env.obs_dim)
    rewards = np.asarray(rew).reshape(len(grid.epsilons), max_size)
    data, cells, constants = build_grid_data(jax.random.fold_in(root, SPLIT_SALT), env,
                                             (points, d_star, found), next_obs, rewards, grid)
    timings["datasets_s"] = time.perf_counter() - t

    reps = grid.replicates
    num_models = len(cells) * reps
    dataset_index = np.repeat(np.arange(len(cells)), reps).astype(np.int32)
    mcfg = config.model.for_env(env)
    log(f"reweight: training {num_models} models ({len(cells) // 2} feasible cells × 2 weightings × "
        f"{reps} replicates) as one population")
    t = time.perf_counter()
    # Selected by the loss it was trained on: the ω-weighted validation NLL (ω ≡ 1 for uniform models).
    train = make_train(dataclasses.replace(config.training.train_config(mcfg, data.capacity),
                                           weighted_validation=True))
    keys = model_keys(jax.random.fold_in(root, MODEL_SALT), 0, num_models)
    hp = TrainHParams.population(num_models, config.training.learning_rate, config.training.weight_decay)
    result = train(keys, None, data, hp, jnp.asarray(dataset_index))
    jax.block_until_ready(result.params)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
    per_call = config.evaluation.models_per_call or num_models
    # Models spread over the local devices (`mismatch-jax reweight --devices 2` on a CPU) when
    # they divide a call's models; the rewards do not depend on it.
    devices = devices_dividing(per_call)
    evaluate = jit_sharded(make_population_evaluator(env, planner, config.evaluation.length(env),
                                                     width=mcfg.hidden_size),
                           3, shared=(2,), devices=devices)
    trial_keys = jax.random.split(config.evaluation.salted(jax.random.fold_in(root, EVAL_SALT)),
                                  config.evaluation.trials)
    episode_rewards = []
    for start in range(0, num_models, per_call):
        index = np.minimum(np.arange(start, start + per_call), num_models - 1)  # pad: one compile
        take = lambda tree: jax.tree.map(lambda a: a[index], tree)
        out_rewards = jax.device_get(evaluate(take(result.params), take(result.normalizer), trial_keys))
        episode_rewards.append(np.asarray(out_rewards)[: min(per_call, num_models - start)])
    episode_rewards = np.concatenate(episode_rewards)  # [N, K]
    timings["evaluate_s"] = time.perf_counter() - t

    diverged = np.asarray(result.diverged)
    shape = (2, len(grid.sizes), len(grid.epsilons))
    reward_mean, reward_std, ci_low, ci_high = (np.full(shape, np.nan) for _ in range(4))
    per_cell = [[[None] * shape[2] for _ in range(shape[1])] for _ in range(2)]
    for m, (w, i, j) in enumerate(cells):
        rows = slice(m * reps, (m + 1) * reps)
        ok = ~diverged[rows]
        values = episode_rewards[rows][ok]
        per_cell[w][i][j] = values.tolist()
        if values.size:
            reward_mean[w, i, j], reward_std[w, i, j] = values.mean(), values.std()
            _, ci_low[w, i, j], ci_high[w, i, j] = model_mean_interval(values)
    c_grid = np.full(shape[1:], np.nan)
    for m, (w, i, j) in enumerate(cells):
        if w == 0:
            c_grid[i, j] = constants[m]
    timings["total_s"] = time.perf_counter() - started

    nan_to_none = lambda a: [[None if not np.isfinite(v) else float(v) for v in row] for row in a]
    report = {
        "name": config.name, "env": config.env, "config": to_dict(config),
        "weights": "omega = c * exp(-d_star / length_scale), c = 1 / mean(exp(-d_star / length_scale)) per dataset",
        "sizes": list(grid.sizes), "epsilons": list(grid.epsilons),
        "panels": ["reweighted", "uniform"],
        "reward_mean": {"reweighted": nan_to_none(reward_mean[0]), "uniform": nan_to_none(reward_mean[1])},
        "reward_std": {"reweighted": nan_to_none(reward_std[0]), "uniform": nan_to_none(reward_std[1])},
        "reward_ci95_over_models": {name: [nan_to_none(ci_low[w]), nan_to_none(ci_high[w])]
                                    for w, name in enumerate(("reweighted", "uniform"))},
        "model_selection": "keep_best by the omega-weighted validation NLL (uniform models: plain NLL)",
        "distance": "d* = min over expert points j of the Euclidean norm of ([s, a] - [s_j, a_j]) / scale",
        "episode_rewards": {"reweighted": per_cell[0], "uniform": per_cell[1]},
        "weight_constant_c": nan_to_none(c_grid),
        "pool": {"size": pool.size, "in_ball": in_ball.tolist(), "kept": found.tolist()},
        "expert": {**expert_info, "length": int(reference.shape[0])},
        "num_models": num_models, "num_diverged": int(diverged.sum()),
        "mean_over_feasible": {"reweighted": float(np.nanmean(reward_mean[0])),
                               "uniform": float(np.nanmean(reward_mean[1]))},
        "timings": timings, "device_kind": jax.devices()[0].device_kind, "model_devices": len(devices),
    }
    write_json(out / "reweight.json", report)
    plot_heatmaps(reward_mean, grid.sizes, grid.epsilons, out / "reweight_heatmap.png",
                  title=f"{config.env}: mean CEM-MPC reward ({config.evaluation.trials} trials × {reps} models per cell)")
    plot_size_curves(reward_mean, ci_low, ci_high, grid.sizes, grid.epsilons, out / "reweight_sizes.png",
                     title=f"{config.env}: {reps} models × {config.evaluation.trials} trials per cell")
    log(f"reweight: mean reward over feasible cells: re-weighted {report['mean_over_feasible']['reweighted']:.1f}, "
        f"uniform {report['mean_over_feasible']['uniform']:.1f}; wrote {out}/reweight.json")
    return report
