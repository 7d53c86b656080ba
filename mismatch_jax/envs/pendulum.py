"""Pendulum swing-up: Gymnasium ``Pendulum-v1`` as a pure JAX environment.

Semantics checked against gymnasium 1.4.0 (``gymnasium/envs/classic_control/pendulum.py``):

* physics state (theta, theta_dot), theta = 0 upright; obs [3] = [cos theta, sin theta, theta_dot].
* torque u = clip(a, -max_torque, max_torque), max_torque = 2.
* reward = -(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2) on the PRE-step state with the
  clipped torque; normalize maps to [-pi, pi).
* theta_dot' = clip(theta_dot + (3 g / (2 l) sin theta + 3 / (m l^2) u) dt, -8, 8);
  theta' = theta + theta_dot' dt (semi-implicit: the new velocity moves the angle).
* reset theta ~ U(-pi, pi), theta_dot ~ U(-1, 1); never terminates; 200-step time limit.

Gymnasium keeps theta unbounded in float64. We compute in float32 and keep theta wrapped to
[-pi, pi) after every step: observations and rewards only see theta through cos/sin and the
wrapped angle, so this changes nothing observable, and it stops float32 losing precision as a
spinning pendulum's angle grows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.envs.base import Env


def angle_normalize(theta: jax.Array) -> jax.Array:
    """Wraps angles (any shape) to [-pi, pi)."""
    return jnp.mod(theta + jnp.pi, 2 * jnp.pi) - jnp.pi


@struct.dataclass
class PendulumParams:
    """Physical constants ([] float32 leaves; vmap over a batch of params to sweep them).

    gravity: m/s^2 (Gymnasium's ``g``), mass: kg, length: m, dt: s per step, max_speed: rad/s.
    The torque limit is static (``Pendulum.max_torque``) because reward_fn takes no params.
    """

    gravity: jax.Array
    mass: jax.Array
    length: jax.Array
    dt: jax.Array
    max_speed: jax.Array

    @classmethod
    def create(
        cls,
        gravity: float = 10.0,
        mass: float = 1.0,
        length: float = 1.0,
        dt: float = 0.05,
        max_speed: float = 8.0,
    ) -> "PendulumParams":
        """Params with Gymnasium's defaults; any constant can be overridden."""
        values = dict(gravity=gravity, mass=mass, length=length, dt=dt, max_speed=max_speed)
        for name, value in values.items():
            if isinstance(value, (int, float)) and not value > 0:
                raise ValueError(f"PendulumParams.{name} must be > 0, got {value}")
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


@struct.dataclass
class PendulumPhysics:
    """theta: [] angle wrapped to [-pi, pi) (0 = upright); theta_dot: [] rad/s."""

    theta: jax.Array
    theta_dot: jax.Array


def _observe(physics: PendulumPhysics) -> jax.Array:
    return jnp.stack([jnp.cos(physics.theta), jnp.sin(physics.theta), physics.theta_dot])


class Pendulum(Env):
    """Gymnasium Pendulum-v1. obs [3] = [cos theta, sin theta, theta_dot]; action [1] torque,
    clipped to [-max_torque, max_torque]."""

    name = "pendulum"
    obs_dim = 3
    action_dim = 1

    def __init__(self, episode_length: int = 200, max_torque: float = 2.0):
        if not (isinstance(episode_length, int) and episode_length > 0):
            raise ValueError(f"episode_length must be a positive int, got {episode_length!r}")
        if not max_torque > 0:
            raise ValueError(f"max_torque must be > 0, got {max_torque}")
        self.episode_length = episode_length
        self.max_torque = float(max_torque)
        self.action_low = np.array([-self.max_torque], np.float32)
        self.action_high = np.array([self.max_torque], np.float32)

    @property
    def default_params(self) -> PendulumParams:
        return PendulumParams.create()

    def _reset_physics(self, key, params):
        theta_key, speed_key = jax.random.split(key)
        physics = PendulumPhysics(
            theta=jax.random.uniform(theta_key, (), jnp.float32, -jnp.pi, jnp.pi),
            theta_dot=jax.random.uniform(speed_key, (), jnp.float32, -1.0, 1.0),
        )
        return physics, _observe(physics)

    def _step_physics(self, physics, action, params):
        torque = jnp.clip(action[0], -self.max_torque, self.max_torque)
        g, m, l, dt = params.gravity, params.mass, params.length, params.dt
        # Same evaluation order as Gymnasium.
        theta_dot = physics.theta_dot + (
            3 * g / (2 * l) * jnp.sin(physics.theta) + 3.0 / (m * l**2) * torque
        ) * dt
        theta_dot = jnp.clip(theta_dot, -params.max_speed, params.max_speed)
        theta = angle_normalize(physics.theta + theta_dot * dt)
        next_physics = PendulumPhysics(theta=theta, theta_dot=theta_dot)
        return next_physics, _observe(next_physics)

    def _physics_from_obs(self, obs, params):
        return PendulumPhysics(theta=jnp.arctan2(obs[1], obs[0]), theta_dot=obs[2])

    def reward_fn(self, obs, action, next_obs):
        """-(theta^2 + 0.1 theta_dot^2 + 0.001 u^2) of the PRE-step obs [3], u = clipped action [1].
        Returns []."""
        del next_obs
        theta = jnp.arctan2(obs[..., 1], obs[..., 0])  # already in [-pi, pi]
        torque = jnp.clip(action[..., 0], -self.max_torque, self.max_torque)
        return -(theta**2 + 0.1 * obs[..., 2] ** 2 + 0.001 * torque**2)
