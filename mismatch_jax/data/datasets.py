"""Transition datasets of the objective-mismatch study (Lambert et al. 2020, section 4).

A ``Transitions`` holds (s, a, s′, r) arrays with a fixed train/validation split. Kinds:

* ``grid``     tuples on a regular grid over the state-action box; s′ from the true env via
               ``state_from_obs`` (so any state can be stepped);
* ``sampled``  tuples drawn uniformly from the same box;
* ``expert`` / ``on_policy`` come from controllers acting in the env (see ``collect``).

``min_distance`` gives each tuple's distance d* to the nearest point of a reference (expert)
trajectory, vectorised and chunked so that millions of tuples fit in memory — the quantity the
paper's re-weighting (section 5) uses.

Default state-action boxes per environment are in ``DEFAULT_BOXES`` (documented there); a
config may override them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.envs.base import Env
from mismatch_jax.files import write_npz

# Boxes over [obs..., action...] used for grid/sampled data. cartpole_swingup: cart within the
# slider range the controller actually uses (±2), every pole angle in (−π, π], velocities as
# reached by swing-up trajectories, the full control range. cartpole_balance: the non-terminal
# region and the action box.
DEFAULT_BOXES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cartpole_swingup": ((-2.0, -np.pi, -6.0, -15.0, -3.0), (2.0, np.pi, 6.0, 15.0, 3.0)),
    "cartpole_balance": ((-2.4, -3.0, -0.21, -3.5, -1.0), (2.4, 3.0, 0.21, 3.5, 1.0)),
    # pendulum obs are [cos θ, sin θ, θ̇]: the box spans the square around the unit circle
    # (state_from_obs takes θ = atan2(sin, cos), and next states lie on the circle again).
    "pendulum": ((-1.0, -1.0, -8.0, -2.0), (1.0, 1.0, 8.0, 2.0)),
}


@struct.dataclass
class Transitions:
    """A dataset of N transitions. obs/next_obs [N, obs_dim], action [N, action_dim],
    reward [N], done [N] bool, is_validation [N] bool (the fixed holdout split)."""

    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array
    reward: jax.Array
    done: jax.Array
    is_validation: jax.Array

    @property
    def size(self) -> int:
        return int(self.obs.shape[0])

    def train(self) -> "Transitions":
        """Rows of the training split (host-side selection)."""
        return jax.tree_util.tree_map(lambda a: a[~np.asarray(self.is_validation)], self)

    def validation(self) -> "Transitions":
        """Rows of the validation split (host-side selection)."""
        return jax.tree_util.tree_map(lambda a: a[np.asarray(self.is_validation)], self)

    def check(self, name: str = "dataset") -> "Transitions":
        """Raises a ValueError naming the array if shapes disagree or values are not finite."""
        n = self.obs.shape[0]
        for field in ("obs", "action", "next_obs", "reward", "done", "is_validation"):
            value = np.asarray(getattr(self, field))
            if value.shape[0] != n:
                raise ValueError(f"{name}.{field} has {value.shape[0]} rows, obs has {n}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).reshape(n, -1).any(-1).sum())
                raise ValueError(f"{name}.{field} has {bad} rows with NaN/inf values; clean the data")
        if self.obs.shape != self.next_obs.shape:
            raise ValueError(f"{name}: obs {self.obs.shape} and next_obs {self.next_obs.shape} differ")
        return self


def split_mask(key: jax.Array, n: int, validation_fraction: float) -> jax.Array:
    """[n] bool holdout mask with round(n·fraction) (at least 1 when fraction > 0) True rows."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    n_val = 0 if validation_fraction == 0 else max(1, int(round(n * validation_fraction)))
    order = jax.random.permutation(key, n)
    return jnp.zeros(n, bool).at[order[:n_val]].set(True)


# Rows per compiled call of the true dynamics. Every dataset is stepped in blocks of this size
# (the last one padded), so grid and sampled data of any size share one compiled program: each
# program that contains the MJX cart-pole costs ~13 s to compile on a 2-core CPU.
STEP_BLOCK = 4096
_BLOCK_STEPPERS: "weakref.WeakKeyDictionary[Env, Callable]" = weakref.WeakKeyDictionary()


def _block_stepper(env: Env) -> Callable:
    """The jitted (obs [STEP_BLOCK, d], action [STEP_BLOCK, a], params) → (next_obs, reward,
    done) of ``env``, built once per env object so repeated calls reuse its compiled program."""
    if env not in _BLOCK_STEPPERS:
        env_ref = weakref.ref(env)  # a strong reference in the value would keep the key alive

        def one(o, a, params):
            stepped = env_ref()
            nxt = stepped.step(stepped.state_from_obs(o, params), a, params)
            return nxt.obs, nxt.reward, nxt.done

        _BLOCK_STEPPERS[env] = jax.jit(jax.vmap(one, in_axes=(0, 0, None)))
    return _BLOCK_STEPPERS[env]


def step_from(env: Env, obs: jax.Array, action: jax.Array, params: Any = None):
    """True transitions from arbitrary states. obs [B, obs_dim], action [B, action_dim] →
    (next_obs [B, obs_dim], reward [B], done [B]); computed in blocks of ``STEP_BLOCK`` rows."""
    obs, action = np.asarray(obs, np.float32), np.asarray(action, np.float32)
    if obs.ndim != 2 or action.ndim != 2 or obs.shape[0] != action.shape[0]:
        raise ValueError(f"step_from needs obs [B, obs_dim] and action [B, action_dim] with the same B, "
                         f"got {obs.shape} and {action.shape}")
    size = obs.shape[0]
    if size == 0:
        raise ValueError("step_from needs at least one row")
    stepper = _block_stepper(env)
    padded = -(-size // STEP_BLOCK) * STEP_BLOCK
    # Padding repeats the first row: a valid state, so the padded rows cannot produce NaNs.
    pad = lambda a: np.concatenate([a, np.broadcast_to(a[:1], (padded - size,) + a.shape[1:])])
    obs, action = pad(obs), pad(action)
    blocks = [stepper(obs[i:i + STEP_BLOCK], action[i:i + STEP_BLOCK], params)
              for i in range(0, padded, STEP_BLOCK)]
    return tuple(jnp.concatenate(parts)[:size] for parts in zip(*blocks))


def _box(env: Env, box) -> tuple[np.ndarray, np.ndarray]:
    if box is None:
        if env.name not in DEFAULT_BOXES:
            raise ValueError(
                f"no default state-action box for env {env.name!r}; pass box=(low, high) with "
                f"{env.obs_dim + env.action_dim} entries each"
            )
        box = DEFAULT_BOXES[env.name]
    low, high = (np.asarray(b, np.float32) for b in box)
    width = env.obs_dim + env.action_dim
    if low.shape != (width,) or high.shape != (width,) or not (high > low).all():
        raise ValueError(f"box must be (low, high) with {width} entries each and high > low")
    return low, high


def _finish(env, key, obs, action, validation_fraction, params) -> Transitions:
    next_obs, reward, done = step_from(env, obs, action, params)
    return Transitions(
        obs=jnp.asarray(obs), action=jnp.asarray(action), next_obs=next_obs, reward=reward, done=done,
        is_validation=split_mask(key, obs.shape[0], validation_fraction),
    ).check(f"{env.name} dataset")


def grid_dataset(key: jax.Array, env: Env, points_per_dim: int | tuple[int, ...], box=None,
                 validation_fraction: float = 0.1, params: Any = None) -> Transitions:
    """Regular grid over the state-action box (points_per_dim per dimension, or one count per
    dimension): ∏ points tuples, next states from the true dynamics."""
    low, high = _box(env, box)
    counts = np.broadcast_to(np.asarray(points_per_dim), low.shape)
    if (counts < 2).any():
        raise ValueError(f"points_per_dim must be >= 2 per dimension, got {points_per_dim}")
    axes = [np.linspace(l, h, int(c), dtype=np.float32) for l, h, c in zip(low, high, counts)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, low.size)
    obs, action = points[:, : env.obs_dim], points[:, env.obs_dim:]
    return _finish(env, key, obs, action, validation_fraction, params)


def sampled_dataset(key: jax.Array, env: Env, num_samples: int, box=None,
                    validation_fraction: float = 0.1, params: Any = None) -> Transitions:
    """num_samples tuples uniform over the state-action box, next states from the true env."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    low, high = _box(env, box)
    sample_key, split_key = jax.random.split(key)
    points = np.asarray(jax.random.uniform(sample_key, (num_samples, low.size), minval=low, maxval=high))
    obs, action = points[:, : env.obs_dim], points[:, env.obs_dim:]
    return _finish(env, split_key, obs, action, validation_fraction, params)


def from_trajectories(key: jax.Array, obs, action, next_obs, reward, done, valid=None,
                      validation_fraction: float = 0.1) -> Transitions:
    """Flattens trajectories [..., T, d] (and an optional [..., T] validity mask, e.g. steps
    after termination) into a Transitions set with a random holdout split."""
    obs, action, next_obs = (np.asarray(a).reshape(-1, np.shape(a)[-1]) for a in (obs, action, next_obs))
    reward, done = np.asarray(reward).reshape(-1), np.asarray(done).reshape(-1)
    if valid is not None:
        keep = np.asarray(valid).reshape(-1).astype(bool)
        obs, action, next_obs, reward, done = (a[keep] for a in (obs, action, next_obs, reward, done))
    return Transitions(
        obs=jnp.asarray(obs), action=jnp.asarray(action), next_obs=jnp.asarray(next_obs),
        reward=jnp.asarray(reward), done=jnp.asarray(done, bool),
        is_validation=split_mask(key, obs.shape[0], validation_fraction),
    ).check("trajectory dataset")


def on_policy_dataset(key: jax.Array, runs: dict, validation_fraction: float = 0.1) -> Transitions:
    """Every transition an agent collected while learning (Lambert et al.'s on-policy data).

    runs: arrays of episodes ``obs`` / ``action`` / ``next_obs`` [S, R, T, d], ``reward`` /
    ``alive`` [S, R, T] (S seeds, R trials of T steps; alive marks steps before termination)."""
    return from_trajectories(key, runs["obs"], runs["action"], runs["next_obs"], runs["reward"],
                             np.zeros(np.shape(runs["reward"]), bool), runs["alive"],
                             validation_fraction=validation_fraction)


def expert_dataset(key: jax.Array, runs: dict, num_episodes: int, min_reward: float,
                   validation_fraction: float = 0.1) -> tuple[Transitions, list, str | None]:
    """The ``num_episodes`` best planned episodes of ``runs`` (0: all) whose reward exceeds
    ``min_reward`` (Lambert et al.: "high-reward trajectories (cartpole r > 179)").

    runs: as ``on_policy_dataset`` plus ``trial_rewards`` [S, R] (trial 0, the random one, is
    never expert). When no episode passes, the best ones are used and the note says so.
    Returns (Transitions, the chosen episodes' rewards, note or None)."""
    rewards = np.asarray(runs["trial_rewards"])[:, 1:]  # planned trials only
    order = np.argsort(-rewards, axis=None)
    passing = [i for i in order if rewards.flat[i] > min_reward][:num_episodes or None]
    note = None
    if not passing:
        passing = list(order[:max(num_episodes, 1)])
        note = (f"no PETS trial exceeded expert_min_reward={min_reward}; used the best "
                f"{len(passing)} trials (rewards {np.round(rewards.flat[passing], 1).tolist()})")
    seed_idx, trial_idx = np.unravel_index(np.asarray(passing), rewards.shape)
    pick = lambda a: np.asarray(a)[seed_idx, trial_idx + 1]
    chosen = {name: pick(runs[name]) for name in ("obs", "action", "next_obs", "reward", "alive")}
    return (on_policy_dataset(key, chosen, validation_fraction),
            np.round(rewards.flat[passing], 2).tolist(), note)


def min_distance(points, reference, chunk_size: int = 65536, scale=None) -> np.ndarray:
    """d*_i = min_j ‖(points_i − reference_j) / scale‖₂ for points [N, d], reference [M, d].

    Evaluated in chunks of chunk_size points with one jitted kernel, so N can be tens of
    millions (the paper's 25e6 uniform tuples against 200 expert points). ``scale`` [d]
    (optional) makes dimensions of different units comparable. Returns [N] float32.
    """
    points = np.asarray(points, np.float32)
    reference = jnp.asarray(reference, jnp.float32)
    if points.ndim != 2 or reference.ndim != 2 or points.shape[1] != reference.shape[1]:
        raise ValueError(f"min_distance: points [N, d] and reference [M, d] must share d, got "
                         f"{points.shape} and {reference.shape}")
    inv_scale = jnp.ones(points.shape[1]) if scale is None else 1.0 / jnp.asarray(scale, jnp.float32)
    reference = reference * inv_scale[None]
    ref_sq = jnp.sum(reference**2, -1)

    @jax.jit
    def kernel(block):
        block = block * inv_scale[None]
        # ‖p − r‖² = ‖p‖² − 2 p·r + ‖r‖², one GEMM per chunk; clamp rounding below zero.
        sq = jnp.sum(block**2, -1)[:, None] - 2.0 * block @ reference.T + ref_sq[None]
        return jnp.sqrt(jnp.maximum(jnp.min(sq, axis=1), 0.0))

    out = np.empty(points.shape[0], np.float32)
    for start in range(0, points.shape[0], chunk_size):
        block = points[start:start + chunk_size]
        pad = chunk_size - block.shape[0]
        if pad:  # keep one compiled shape
            block = np.concatenate([block, np.zeros((pad, points.shape[1]), np.float32)])
        out[start:start + chunk_size] = np.asarray(kernel(block))[: chunk_size - pad]
    return out


def distance_weights(d_star, length_scale: float = 1.0) -> np.ndarray:
    """ω = c · exp(−d*/ℓ) with c making mean(ω) = 1. d_star [S] → [S] float32.

    Computed as exp(−(d* − min d*)/ℓ) / mean(·): identical in exact arithmetic, never 0/0."""
    d = np.asarray(d_star, np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"distance_weights: d_star must be a non-empty [S] array, got shape {d.shape}")
    raw = np.exp(-(d - d.min()) / float(length_scale))
    return (raw / raw.mean()).astype(np.float32)


def collect_buckets(key, reference, low, high, epsilons, max_size: int, pool_size: int,
                    chunk_size: int, scale=None):
    """Streams ``pool_size`` uniform tuples over the box [low, high] (chunk by chunk) and keeps,
    for every ε, the first ``max_size`` tuples with d* ≤ ε.

    reference [R, d]; low/high [d]. Returns (points [J, max_size, d] (NaN where not found),
    d_star [J, max_size], found [J] (kept, ≤ max_size), in_ball [J] (pool tuples with d* ≤ ε)).
    """
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    dim, num_eps = low.size, len(epsilons)
    points = np.full((num_eps, max_size, dim), np.nan, np.float32)
    d_star = np.full((num_eps, max_size), np.nan, np.float32)
    found = np.zeros(num_eps, np.int64)
    in_ball = np.zeros(num_eps, np.int64)
    draw = jax.jit(lambda k, n: jax.random.uniform(k, (n, dim), minval=low, maxval=high), static_argnums=1)
    for c, start in enumerate(range(0, pool_size, chunk_size)):
        n = min(chunk_size, pool_size - start)
        chunk = np.asarray(draw(jax.random.fold_in(key, c), n))
        dist = min_distance(chunk, reference, chunk_size=chunk_size, scale=scale)
        for j, eps in enumerate(epsilons):
            hits = np.flatnonzero(dist <= eps)
            in_ball[j] += hits.size
            take = hits[: max_size - found[j]]
            points[j, found[j]: found[j] + take.size] = chunk[take]
            d_star[j, found[j]: found[j] + take.size] = dist[take]
            found[j] += take.size
    return points, d_star, found, in_ball


# --------------------------------------------------------------------------------------------
# On-disk cache: one npz per (env, kind, seed, spec), named by the hash of its spec.
# --------------------------------------------------------------------------------------------


def spec_hash(spec: dict) -> str:
    """Stable 16-hex hash of a JSON-serialisable dataset spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(path: Path, data: Transitions, spec: dict) -> None:
    """Writes data + its spec to an npz atomically."""
    arrays = {f.name: np.asarray(getattr(data, f.name)) for f in dataclasses.fields(data)}
    write_npz(path, arrays, spec=json.dumps(spec, sort_keys=True, default=str))


def load(path: Path, spec: dict | None = None) -> Transitions:
    """Reads an npz written by ``save``; with ``spec``, checks it is the same dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist; build it with `mismatch-jax datasets CONFIG`")
    with np.load(path) as f:
        if spec is not None and json.loads(str(f["spec"])) != json.loads(json.dumps(spec, sort_keys=True, default=str)):
            raise ValueError(f"{path} was built from a different spec; delete it or change cache_dir")
        return Transitions(**{k: jnp.asarray(f[k]) for k in
                              ("obs", "action", "next_obs", "reward", "done", "is_validation")})


def cached(cache_dir: str | Path, spec: dict, build: Callable[[], Transitions]) -> Transitions:
    """Returns the dataset of ``spec`` from cache_dir, building and saving it on a miss."""
    path = Path(cache_dir) / f"{spec.get('env', 'env')}_{spec.get('kind', 'data')}_{spec_hash(spec)}.npz"
    if path.is_file():
        return load(path, spec)
    data = build()
    save(path, data, spec)
    return data
