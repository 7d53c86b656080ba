"""The functional environment contract shared by every environment of the package.

An environment is an immutable object holding static facts (dimensions, bounds, episode length)
and a default ``params`` pytree of physical constants. All methods are pure and jit/vmap-able:

* ``reset(key, params=None) -> EnvState``
* ``step(state, action, params=None) -> EnvState``
* ``reward_fn(obs, action, next_obs) -> []``       (what a planner uses; unbatched, vmap it)
* ``termination_fn(next_obs) -> [] bool``           (what a planner uses)
* ``state_from_obs(obs, params=None) -> EnvState``  (step the true dynamics from any state)

Passing ``params`` explicitly makes a sweep over dynamics constants a ``vmap`` over params.
Termination (``done``) and truncation (``truncated``, the time limit) are separate flags:
agents bootstrap through truncation, never through termination. Environments do not auto-reset.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class EnvState:
    """State of one environment instance (leading batch axes appear when vmapped).

    obs: [obs_dim] observation after the last transition.
    reward: [] reward of the last transition (0 after reset).
    done: [] bool, the last transition terminated the episode.
    truncated: [] bool, the time limit was reached without termination.
    time: [] int32, number of steps taken since reset.
    physics: env-specific pytree with everything needed to continue the dynamics.
    """

    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    truncated: jax.Array
    time: jax.Array
    physics: Any


class Env(abc.ABC):
    """Base class: subclasses implement the physics, the base class owns the bookkeeping."""

    name: str = "env"
    obs_dim: int
    action_dim: int
    episode_length: int
    action_low: np.ndarray
    action_high: np.ndarray
    # Observation dims that are unbounded (winding) angles; models may feed them as (sin, cos).
    angle_obs_dims: tuple[int, ...] = ()

    # ----- to implement -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def default_params(self) -> Any:
        """Pytree of physical constants (vmappable)."""

    @abc.abstractmethod
    def _reset_physics(self, key: jax.Array, params: Any) -> tuple[Any, jax.Array]:
        """Returns (physics, obs [obs_dim]) for a fresh episode."""

    @abc.abstractmethod
    def _step_physics(self, physics: Any, action: jax.Array, params: Any) -> tuple[Any, jax.Array]:
        """Advances the physics one step; returns (physics, next_obs [obs_dim])."""

    @abc.abstractmethod
    def _physics_from_obs(self, obs: jax.Array, params: Any) -> Any:
        """Rebuilds the physics pytree from an observation (the inverse of observing)."""

    @abc.abstractmethod
    def reward_fn(self, obs: jax.Array, action: jax.Array, next_obs: jax.Array) -> jax.Array:
        """Reward [] of one transition; obs/next_obs [obs_dim], action [action_dim]."""

    def termination_fn(self, next_obs: jax.Array) -> jax.Array:
        """[] bool: does reaching next_obs end the episode? Default: never."""
        return jnp.zeros(next_obs.shape[:-1], dtype=bool)

    # ----- shared -------------------------------------------------------------------------------
    def _params(self, params: Any) -> Any:
        return self.default_params if params is None else params

    def check_action(self, action: jax.Array) -> jax.Array:
        """Raises (at trace time) unless action has shape [action_dim]; returns it as float32."""
        action = jnp.asarray(action, dtype=jnp.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(
                f"{self.name}: action must have shape ({self.action_dim},), got {action.shape}; "
                "vmap over the environment for batches instead of passing batched actions"
            )
        return action

    def check_obs(self, obs: jax.Array) -> jax.Array:
        """Raises (at trace time) unless obs has shape [obs_dim]; returns it as float32."""
        obs = jnp.asarray(obs, dtype=jnp.float32)
        if obs.shape != (self.obs_dim,):
            raise ValueError(
                f"{self.name}: observation must have shape ({self.obs_dim},), got {obs.shape}"
            )
        return obs

    def reset(self, key: jax.Array, params: Any = None) -> EnvState:
        """Starts an episode: EnvState with obs [obs_dim], reward 0, time 0."""
        physics, obs = self._reset_physics(key, self._params(params))
        return self._initial_state(physics, obs)

    def state_from_obs(self, obs: jax.Array, params: Any = None) -> EnvState:
        """EnvState at time 0 whose physics reproduce ``obs`` [obs_dim] exactly."""
        obs = self.check_obs(obs)
        physics = self._physics_from_obs(obs, self._params(params))
        return self._initial_state(physics, obs)

    def _initial_state(self, physics: Any, obs: jax.Array) -> EnvState:
        return EnvState(
            obs=obs.astype(jnp.float32),
            reward=jnp.zeros((), jnp.float32),
            done=jnp.zeros((), bool),
            truncated=jnp.zeros((), bool),
            time=jnp.zeros((), jnp.int32),
            physics=physics,
        )

    def step(self, state: EnvState, action: jax.Array, params: Any = None) -> EnvState:
        """One transition. Reward and termination come from reward_fn / termination_fn."""
        action = self.check_action(action)
        physics, next_obs = self._step_physics(state.physics, action, self._params(params))
        next_obs = next_obs.astype(jnp.float32)
        reward = self.reward_fn(state.obs, action, next_obs).astype(jnp.float32)
        done = self.termination_fn(next_obs)
        time = state.time + 1
        truncated = jnp.logical_and(time >= self.episode_length, jnp.logical_not(done))
        return EnvState(
            obs=next_obs, reward=reward, done=done, truncated=truncated, time=time, physics=physics
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, obs_dim={self.obs_dim}, action_dim={self.action_dim})"


def rollout(env: Env, policy, key: jax.Array, num_steps: int, params: Any = None):
    """Runs ``policy(key, obs) -> action`` for num_steps with lax.scan, stopping reward
    accumulation after termination. Returns (EnvState trajectory with leading [num_steps] axis,
    total reward [])."""
    reset_key, policy_key = jax.random.split(key)
    state = env.reset(reset_key, params)

    def body(carry, step_key):
        state, alive = carry
        action = policy(step_key, state.obs)
        next_state = env.step(state, action, params)
        reward = jnp.where(alive, next_state.reward, 0.0)
        alive = jnp.logical_and(alive, jnp.logical_not(next_state.done))
        return (next_state, alive), (next_state, reward)

    keys = jax.random.split(policy_key, num_steps)
    _, (traj, rewards) = jax.lax.scan(body, (state, jnp.ones((), bool)), keys)
    return traj, rewards.sum()
