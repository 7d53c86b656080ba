"""Distracting observation dimensions (VaGraM, Voelcker et al. 2022, appendix E, Eq. 18).

n extra dimensions d [n] are appended to the observation. They follow a fixed random nonlinear,
discontinuous map, independent of the action, the base state and the reward:

    d' = d + sin(A d)            if |d + sin(A d)| < threshold (20)
    d' = d0                      otherwise

A [n, n] and d0 [n] are drawn once, at construction, from ``key`` and never resampled; every
episode starts from d0 ("We do not resample the fixed components at reset").

Readings of the paper we had to choose (both selectable):

* "entries drawn from N(0., 10.)" / "N(0., 0.1)": we read the second argument as the standard
  deviation (A_ij = 10 z, d0_i = 0.1 z, z ~ N(0, 1)). That is the (loc, scale) convention of
  numpy/PyTorch normal samplers the authors' code uses, and the first author's later
  distractor wrapper draws its sine matrix with ``normal(0, 10.)``, i.e. scale 10. Pass
  ``matrix_scale=10 ** 0.5, reset_scale=0.1 ** 0.5`` for the variance reading.
* "|f(s, a)| < 20" on a vector: we apply it per dimension (each component that leaves (-20, 20)
  jumps back to its own d0 component, the others keep evolving); the same author's later wrapper
  also resets elementwise. ``reset_mode="whole_vector"`` instead resets all of d to d0 as soon as
  any component leaves the interval (|.| read as the max norm).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.envs.base import Env

RESET_MODES = ("per_dimension", "whole_vector")


@struct.dataclass
class DistractorParams:
    """Params of a distracted env: ``base`` (the wrapped env's params pytree), ``mixing`` A [n, n],
    ``reset_state`` d0 [n] (float32)."""

    base: Any
    mixing: jax.Array
    reset_state: jax.Array


@struct.dataclass
class DistractedPhysics:
    """``base``: the wrapped env's physics; ``distractors``: d [n]."""

    base: Any
    distractors: jax.Array


def distractor_step(
    distractors: jax.Array,
    mixing: jax.Array,
    reset_state: jax.Array,
    threshold: float = 20.0,
    reset_mode: str = "per_dimension",
) -> jax.Array:
    """Eq. 18: d [n], A [n, n], d0 [n] -> d' [n] = d + sin(A d), reset to d0 where
    |d'| >= threshold (per component, or all of d once any component is out for "whole_vector")."""
    proposal = distractors + jnp.sin(mixing @ distractors)
    out_of_range = jnp.abs(proposal) >= threshold
    if reset_mode == "whole_vector":
        out_of_range = jnp.broadcast_to(jnp.any(out_of_range), proposal.shape)
    elif reset_mode != "per_dimension":
        raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
    return jnp.where(out_of_range, reset_state, proposal)


class DistractedEnv(Env):
    """``base`` with n distractor dimensions appended: obs [base.obs_dim + n] = [base obs, d].

    Actions, rewards, termination and the time limit are the base env's; reward_fn and
    termination_fn look only at the first base.obs_dim entries.
    """

    def __init__(
        self,
        base: Env,
        num_distractors: int,
        key: jax.Array,
        threshold: float = 20.0,
        matrix_scale: float = 10.0,
        reset_scale: float = 0.1,
        reset_mode: str = "per_dimension",
    ):
        if not isinstance(base, Env):
            raise ValueError(f"base must be an Env, got {type(base).__name__}")
        if not (isinstance(num_distractors, (int, np.integer)) and num_distractors > 0):
            raise ValueError(f"num_distractors must be a positive int, got {num_distractors!r}")
        if reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        if not threshold > 0 or not matrix_scale >= 0 or not reset_scale >= 0:
            raise ValueError(
                "threshold must be > 0 and matrix_scale, reset_scale >= 0; got "
                f"{threshold}, {matrix_scale}, {reset_scale}"
            )
        self.base = base
        self.num_distractors = int(num_distractors)
        self.threshold = float(threshold)
        self.reset_mode = reset_mode
        self.name = f"{base.name}+{self.num_distractors}distractors"
        self.obs_dim = base.obs_dim + self.num_distractors
        self.action_dim = base.action_dim
        self.episode_length = base.episode_length
        self.action_low = base.action_low
        self.action_high = base.action_high
        matrix_key, reset_key = jax.random.split(key)
        n = self.num_distractors
        self._default_params = DistractorParams(
            base=base.default_params,
            mixing=matrix_scale * jax.random.normal(matrix_key, (n, n), jnp.float32),
            reset_state=reset_scale * jax.random.normal(reset_key, (n,), jnp.float32),
        )

    @property
    def default_params(self) -> DistractorParams:
        return self._default_params

    def _split(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        k = self.base.obs_dim
        return obs[..., :k], obs[..., k:]

    def _reset_physics(self, key, params):
        base_physics, base_obs = self.base._reset_physics(key, params.base)
        distractors = params.reset_state
        physics = DistractedPhysics(base=base_physics, distractors=distractors)
        return physics, jnp.concatenate([base_obs.astype(jnp.float32), distractors])

    def _step_physics(self, physics, action, params):
        base_physics, base_obs = self.base._step_physics(physics.base, action, params.base)
        distractors = distractor_step(
            physics.distractors, params.mixing, params.reset_state, self.threshold, self.reset_mode
        )
        next_physics = DistractedPhysics(base=base_physics, distractors=distractors)
        return next_physics, jnp.concatenate([base_obs.astype(jnp.float32), distractors])

    def _physics_from_obs(self, obs, params):
        base_obs, distractors = self._split(obs)
        return DistractedPhysics(
            base=self.base._physics_from_obs(base_obs, params.base), distractors=distractors
        )

    def reward_fn(self, obs, action, next_obs):
        """The base reward of the base parts of obs / next_obs [obs_dim]; distractors ignored. []"""
        return self.base.reward_fn(self._split(obs)[0], action, self._split(next_obs)[0])

    def termination_fn(self, next_obs):
        """The base termination of the base part of next_obs [obs_dim]. [] bool"""
        return self.base.termination_fn(self._split(next_obs)[0])


def with_distractors(env: Env, n: int, key: jax.Array, **options) -> DistractedEnv:
    """Appends n VaGraM distractor dimensions to ``env`` (A, d0 drawn from ``key`` once).

    options: threshold (20.0), matrix_scale (10.0, std of A), reset_scale (0.1, std of d0),
    reset_mode ("per_dimension" | "whole_vector"). See the module docstring.
    """
    return DistractedEnv(env, n, key, **options)
