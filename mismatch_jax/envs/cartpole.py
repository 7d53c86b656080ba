"""Cartpole balance: mbrl-lib's ``cartpole_continuous`` as a pure JAX environment.

Semantics checked against mbrl 0.2.0 (``mbrl/env/cartpole_continuous.py``):

* obs = state = [x, x_dot, theta, theta_dot] (cart position, cart velocity, pole angle, pole
  angular velocity), theta = 0 upright.
* force = force_mag * a. mbrl-lib does NOT clip the action (only ``squeeze``), so neither do we;
  the action box [-1, 1] is advertised through ``action_low``/``action_high`` for agents/planners.
* Explicit Euler: positions advance with the OLD velocities, velocities with the new accelerations.
* Terminates when x < -2.4 or x > 2.4 or theta < -12 deg or theta > 12 deg (strict inequalities,
  threshold 12 * 2 * pi / 360 rad, exactly mbrl-lib's constant).
* Reward 1.0 on every step, the terminating one included. (mbrl-lib's *planning* reward
  ``reward_fns.cartpole`` instead gives 0 on the terminating step; that variant is
  ``CartpoleBalance.alive_reward_fn``.) Steps after termination are undefined here as in mbrl-lib
  (mbrl-lib returns 0 there); ``rollout`` masks them.
* Reset: each component ~ U(-0.05, 0.05). 200-step time limit (mbrl-lib's cartpole trial length).

mbrl-lib integrates in float64 (Python floats / numpy); we integrate in float32. One step agrees
to ~1e-7; whole episodes agree to 1e-6 as long as the pole is not left open-loop unstable for long
(see tests/envs/test_cartpole_balance.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.envs.base import Env

# mbrl-lib's constants: 12 degrees written the way it writes them, and the cart-position limit.
THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


@struct.dataclass
class CartpoleParams:
    """Physical constants (each a [] float32 leaf, so vmapping over a batch of params sweeps them).

    gravity: m/s^2. cart_mass, pole_mass: kg. half_pole_length: m (mbrl-lib's ``length`` is half
    the pole). force_mag: N per unit action. tau: s per step.
    """

    gravity: jax.Array
    cart_mass: jax.Array
    pole_mass: jax.Array
    half_pole_length: jax.Array
    force_mag: jax.Array
    tau: jax.Array

    @classmethod
    def create(
        cls,
        gravity: float = 9.8,
        cart_mass: float = 1.0,
        pole_mass: float = 0.1,
        half_pole_length: float = 0.5,
        force_mag: float = 10.0,
        tau: float = 0.02,
    ) -> "CartpoleParams":
        """Params with mbrl-lib's defaults; any constant can be overridden."""
        values = dict(
            gravity=gravity,
            cart_mass=cart_mass,
            pole_mass=pole_mass,
            half_pole_length=half_pole_length,
            force_mag=force_mag,
            tau=tau,
        )
        for name, value in values.items():
            if isinstance(value, (int, float)) and not value > 0:
                raise ValueError(f"CartpoleParams.{name} must be > 0, got {value}")
        return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})


def cartpole_dynamics(state: jax.Array, action: jax.Array, params: CartpoleParams) -> jax.Array:
    """One explicit-Euler step of the cartpole ODE. state [4], action [1] -> next state [4]."""
    x, x_dot, theta, theta_dot = state[0], state[1], state[2], state[3]
    total_mass = params.pole_mass + params.cart_mass
    polemass_length = params.pole_mass * params.half_pole_length
    force = action[0] * params.force_mag
    cos_theta = jnp.cos(theta)
    sin_theta = jnp.sin(theta)
    # Same evaluation order as mbrl-lib so float32 rounding stays close to its float64 result.
    temp = (force + polemass_length * theta_dot**2 * sin_theta) / total_mass
    theta_acc = (params.gravity * sin_theta - cos_theta * temp) / (
        params.half_pole_length * (4.0 / 3.0 - params.pole_mass * cos_theta**2 / total_mass)
    )
    x_acc = temp - polemass_length * theta_acc * cos_theta / total_mass
    # Explicit Euler: positions move with the velocities from *before* the update.
    return jnp.stack(
        [
            x + params.tau * x_dot,
            x_dot + params.tau * x_acc,
            theta + params.tau * theta_dot,
            theta_dot + params.tau * theta_acc,
        ]
    )


class CartpoleBalance(Env):
    """mbrl-lib ``cartpole_continuous``: keep the pole within 12 deg and the cart within 2.4 m.

    obs [4] = [x, x_dot, theta, theta_dot]; action [1] in [-1, 1] (not clipped, as in mbrl-lib);
    physics = the same [4] float32 state vector.
    """

    name = "cartpole_balance"
    obs_dim = 4
    action_dim = 1

    def __init__(
        self,
        episode_length: int = 200,
        x_threshold: float = X_THRESHOLD,
        theta_threshold: float = THETA_THRESHOLD_RADIANS,
        reset_noise: float = 0.05,
    ):
        if not (isinstance(episode_length, int) and episode_length > 0):
            raise ValueError(f"episode_length must be a positive int, got {episode_length!r}")
        if not x_threshold > 0 or not theta_threshold > 0:
            raise ValueError(
                f"x_threshold and theta_threshold must be > 0, got {x_threshold}, {theta_threshold}"
            )
        if not reset_noise >= 0:
            raise ValueError(f"reset_noise must be >= 0, got {reset_noise}")
        self.episode_length = episode_length
        # Thresholds are static (termination_fn takes no params), as they are in mbrl-lib's
        # termination function.
        self.x_threshold = float(x_threshold)
        self.theta_threshold = float(theta_threshold)
        self.reset_noise = float(reset_noise)
        self.action_low = np.array([-1.0], np.float32)
        self.action_high = np.array([1.0], np.float32)

    @property
    def default_params(self) -> CartpoleParams:
        return CartpoleParams.create()

    def _reset_physics(self, key, params):
        state = jax.random.uniform(
            key, (4,), jnp.float32, minval=-self.reset_noise, maxval=self.reset_noise
        )
        return state, state

    def _step_physics(self, physics, action, params):
        next_state = cartpole_dynamics(physics, action, params)
        return next_state, next_state

    def _physics_from_obs(self, obs, params):
        return obs

    def reward_fn(self, obs, action, next_obs):
        """1.0 for every transition, the terminating one included (mbrl-lib's env reward). []"""
        del obs, action
        return jnp.ones(next_obs.shape[:-1], jnp.float32)

    def alive_reward_fn(self, obs, action, next_obs):
        """mbrl-lib's planning reward ``reward_fns.cartpole``: 1.0 unless next_obs terminates. []"""
        del obs, action
        return jnp.logical_not(self.termination_fn(next_obs)).astype(jnp.float32)

    def termination_fn(self, next_obs):
        """[] bool: cart beyond +-x_threshold or pole beyond +-theta_threshold (strict)."""
        x, theta = next_obs[..., 0], next_obs[..., 2]
        return (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold)
            | (theta > self.theta_threshold)
        )
