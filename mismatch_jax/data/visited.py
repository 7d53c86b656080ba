"""Grid and sampled data from the *visited* state distribution (environments without a box).

For the cart-pole the paper's grid / sampled data cover a state-action box. Half-cheetah has a
17-dim observation and a 6-dim action: a grid of even 3 points per dimension is 3²³ ≈ 9·10¹⁰
tuples, and a uniform box over joint angles and velocities is mostly states the body cannot be
in. Here the states come from where the agent has been instead:

* ``visited_sampled_dataset``  states drawn (with replacement) from the visited observations,
                               actions uniform in the action box — the states PETS saw, paired
                               with actions it did not necessarily take;
* ``visited_grid_dataset``     a few visited states (without replacement) × a regular grid over
                               the action box.

Next states always come from the true dynamics through ``Env.state_from_obs`` + ``Env.step``
(``datasets.step_from``); for brax that rebuilds the physics with the hidden horizontal position
set to 0, to which dynamics, reward and termination are invariant.

``visited_states(runs)`` flattens the PETS runs of ``sweep.study_data.pets_runs`` (obs
[S, R, T, d] with an ``alive`` mask [S, R, T]) into the [V, d] rows both builders draw from.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mismatch_jax.data.datasets import Transitions, _finish
from mismatch_jax.envs.base import Env


def visited_states(runs: dict) -> np.ndarray:
    """The observations an agent visited: runs["obs"] [..., T, d] where runs["alive"] [..., T]
    → [V, d] float32 (V = alive steps)."""
    if "obs" not in runs or "alive" not in runs:
        raise ValueError("visited_states needs runs with 'obs' [..., T, d] and 'alive' [..., T] "
                         f"(the PETS runs of sweep.study_data.pets_runs), got keys {sorted(runs)}")
    obs, alive = np.asarray(runs["obs"], np.float32), np.asarray(runs["alive"], bool)
    if obs.shape[:-1] != alive.shape:
        raise ValueError(f"runs['obs'] {obs.shape} and runs['alive'] {alive.shape} disagree on the "
                         "leading [..., T] axes")
    states = obs.reshape(-1, obs.shape[-1])[alive.reshape(-1)]
    if states.shape[0] == 0:
        raise ValueError("runs hold no alive step: there are no visited states to draw from")
    return states


def _check_visited(env: Env, visited_obs) -> np.ndarray:
    visited = np.asarray(visited_obs, np.float32)
    if visited.ndim != 2 or visited.shape[1] != env.obs_dim or visited.shape[0] == 0:
        raise ValueError(f"visited_obs must be [V, obs_dim={env.obs_dim}] with V >= 1, got shape "
                         f"{visited.shape}; pass visited_states(runs)")
    if not np.isfinite(visited).all():
        raise ValueError("visited_obs has NaN/inf rows; drop them before building a dataset")
    return visited


def _action_box(env: Env) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)


def visited_sampled_dataset(key: jax.Array, env: Env, visited_obs, num_samples: int,
                            validation_fraction: float = 0.1, params: Any = None) -> Transitions:
    """``num_samples`` tuples: obs drawn uniformly with replacement from ``visited_obs``
    [V, obs_dim], actions uniform over the env's action box, next states from the true env.

    Returns Transitions with obs / next_obs [num_samples, obs_dim], action [num_samples,
    action_dim], reward / done / is_validation [num_samples]. Deterministic in ``key``."""
    if num_samples < 2:
        raise ValueError(f"num_samples (sampled_size) must be >= 2, got {num_samples}")
    visited = _check_visited(env, visited_obs)
    low, high = _action_box(env)
    state_key, action_key, split_key = jax.random.split(key, 3)
    rows = np.asarray(jax.random.randint(state_key, (num_samples,), 0, visited.shape[0]))
    action = np.asarray(jax.random.uniform(action_key, (num_samples, env.action_dim),
                                           minval=low, maxval=high), np.float32)
    return _finish(env, split_key, visited[rows], action, validation_fraction, params)


def visited_grid_dataset(key: jax.Array, env: Env, visited_obs, num_states: int,
                         action_points: int, validation_fraction: float = 0.1,
                         params: Any = None) -> Transitions:
    """``num_states`` distinct visited states (drawn without replacement from ``visited_obs``
    [V, obs_dim]) × every point of a regular grid with ``action_points`` per action dimension
    (the box's corners and edges included).

    Returns Transitions of num_states · action_points^action_dim rows, state-major: rows
    [i·G, (i+1)·G) share state i (G = action_points^action_dim)."""
    visited = _check_visited(env, visited_obs)
    if not 1 <= num_states <= visited.shape[0]:
        raise ValueError(f"num_states must be in [1, {visited.shape[0]}] (the visited states), "
                         f"got {num_states}")
    if action_points < 2:
        raise ValueError(f"action_points must be >= 2 per action dimension, got {action_points}")
    grid_size = action_points ** env.action_dim
    if num_states * grid_size > 5_000_000:
        raise ValueError(f"num_states × action_points^{env.action_dim} = {num_states * grid_size} "
                         "rows; lower num_states or action_points (at most 5e6 rows)")
    low, high = _action_box(env)
    state_key, split_key = jax.random.split(key)
    rows = np.asarray(jax.random.choice(state_key, visited.shape[0], (num_states,), replace=False))
    axes = [np.linspace(l, h, action_points, dtype=np.float32) for l, h in zip(low, high)]
    actions = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(grid_size, env.action_dim)
    obs = np.repeat(visited[rows], grid_size, axis=0)
    action = np.tile(actions, (num_states, 1))
    return _finish(env, split_key, obs, action, validation_fraction, params)
