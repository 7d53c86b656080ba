"""Brax environments (halfcheetah, hopper, inverted_pendulum, ant) behind the package contract.

``BraxEnv(env_name, backend, episode_length, **brax_kwargs)`` wraps the *raw* brax environment
``brax.envs.get_environment(env_name, backend=backend, **brax_kwargs)`` (no brax wrappers: the
time limit is ours) and keeps brax's ``pipeline_state`` as the physics pytree.

Two kinds of reward live here, on purpose:

* ``step`` returns brax's own reward and ``done`` unchanged — the ground truth an agent is scored
  on. Brax computes the forward reward from the torso's *position* difference over the step,
  which the observation does not contain (x is excluded).
* ``reward_fn`` / ``termination_fn`` are the observation-only surrogates a planner or MBPO-style
  model rollout can evaluate (the forward *velocity* of the root from ``next_obs`` instead of the
  finite difference; brax's constants, read from the wrapped env so keyword overrides carry over).

Observation layouts (brax 0.14, default ``exclude_current_positions_from_observation=True``);
``q``/``qd`` are the generalized positions/velocities:

* halfcheetah [17]: ``q[1:9]`` (rootz, rooty, 6 joint angles), ``qd[0:9]`` (``obs[8]`` = ẋ).
* hopper [11]: torso height (the body's z, ``q[1]`` + its rest height), ``q[2:6]`` (rooty = torso
  angle, 3 joints), ``clip(qd, ±10)`` (``obs[5]`` = ẋ).
* ant [27]: ``q[2:15]`` (z, quaternion, 8 joints), ``qd[0:14]`` (``obs[13]`` = ẋ).
* inverted_pendulum [4]: ``q`` (cart, hinge), ``qd``; brax maps actions from [-1, 1] to the
  ctrl range.

``state_from_obs`` inverts these with the hidden horizontal position(s) set to 0 (rewards and
terminations are invariant to it); hopper velocities beyond ±10 are clipped in the observation and
so cannot be recovered.

Backend default: ``'positional'``. Halfcheetah env steps/s on this 2-core CPU
(benchmarks/bench_envs.py, 50-step jit(vmap(scan)); two runs on a heavily shared machine, so the
absolute figures carry ±2× noise):

    backend        batch 1       batch 256
    spring         2544-2591     2281-5527
    positional     145-326       1525-1776
    generalized    222-733       614-983
    mjx            306-741       633-838

and how well the observation-only reward tracks brax's (halfcheetah, random actions, RMS error of
the forward-velocity estimate / std of brax's forward velocity): positional 0.18 / 0.66,
generalized 0.24 / 0.64, spring 0.55 / 0.83. Spring is the fastest, but its generalized
velocities (recovered from stiff-spring maximal coordinates) track the torso displacement poorly,
which would make planners optimise a different objective from the one they are scored on — the
very mismatch this package studies. Positional keeps hard constraints, is the next fastest at
the batch sizes used for evaluation (1.6-2.9× mjx/generalized at 256) and its observations track
the true reward closely. Pass backend='spring' for raw speed, 'mjx'/'generalized' (GPU) for
MuJoCo-faithful dynamics. Brax rescales halfcheetah's gears (and ant's for positional) for
spring/positional, so rewards compare only within one backend.
Brax marks these environments as no longer maintained; they are used here as benchmarks only.
"""

from __future__ import annotations

from typing import Any

import mismatch_jax.envs._mjx_import  # noqa: F401  (before brax: quiets mjx's stdout notices)
import brax.envs  # isort: skip
import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import State as BraxState

from mismatch_jax.envs.base import Env, EnvState

DEFAULT_BACKEND = "positional"
BACKENDS = ("mjx", "spring", "positional", "generalized")
OBS_REWARD_ENVS = ("halfcheetah", "hopper", "ant", "inverted_pendulum")


class BraxEnv(Env):
    """A brax environment under the functional Env contract; physics = brax pipeline state.

    Actions are in [-1, 1]^action_dim (the brax convention). ``params`` is the brax ``System``
    (a pytree; replace e.g. ``gravity`` or ``link.inertia.mass`` in it and vmap to sweep).
    """

    def __init__(
        self,
        env_name: str,
        backend: str = DEFAULT_BACKEND,
        episode_length: int = 1000,
        **brax_kwargs: Any,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        try:
            self._brax_env = brax.envs.get_environment(env_name, backend=backend, **brax_kwargs)
        except KeyError as error:
            raise ValueError(
                f"env_name {env_name!r} is not a brax environment; "
                f"brax has: {', '.join(sorted(brax.envs._envs))}"
            ) from error
        self.env_name = env_name
        self.name = env_name
        self.backend = backend
        self.episode_length = int(episode_length)
        # brax's ``observation_size`` runs a reset op by op (650 small compiles, ~50 s for
        # half-cheetah on 2 cores); its shape is all we need.
        reset_shape = jax.eval_shape(self._brax_env.reset, jax.random.PRNGKey(0))
        self.obs_dim = int(reset_shape.obs.shape[-1])
        self.action_dim = int(self._brax_env.action_size)
        self.action_low = -np.ones(self.action_dim, np.float32)
        self.action_high = np.ones(self.action_dim, np.float32)
        self.dt = float(self._brax_env.dt)
        sys = self._brax_env.sys
        self._q_size = int(sys.q_size())
        self._qd_size = int(sys.qd_size())
        # Leading generalized positions left out of the observation (x; x and y for ant).
        self._hidden_q = self._q_size + self._qd_size - self.obs_dim
        self._velocity_index = self._q_size - self._hidden_q  # obs index of qd[0] (ẋ)
        if env_name == "hopper":
            # obs carries the torso's world height, q[1] (rootz) is that minus the rest height.
            rest = jax.jit(self._brax_env.pipeline_init)(
                jnp.zeros(self._q_size).at[2:].set(sys.init_q[2:]), jnp.zeros(self._qd_size)
            )
            self._hopper_rest_height = float(rest.x.pos[0, 2])

    @property
    def brax_env(self):
        """The wrapped raw brax environment."""
        return self._brax_env

    # ----- params / physics ----------------------------------------------------------------------
    @property
    def default_params(self):
        return self._brax_env.sys

    def _with_sys(self, params, fn, *args):
        """Calls fn with the brax env's system temporarily replaced by ``params`` (trace time).

        Brax broadcasts implicitly, so rank promotion is allowed inside its calls only."""
        original = self._brax_env.sys
        self._brax_env.sys = params
        try:
            with jax.numpy_rank_promotion("allow"):
                return fn(*args)
        finally:
            self._brax_env.sys = original

    def _reset_physics(self, key, params):
        brax_state = self._with_sys(params, self._brax_env.reset, key)
        return brax_state.pipeline_state, brax_state.obs

    def _step_physics(self, physics, action, params):
        next_state = self._brax_step(physics, jnp.zeros(self.obs_dim, jnp.float32), action, params)
        return next_state.pipeline_state, next_state.obs

    def _brax_step(self, physics, obs, action, params) -> BraxState:
        zero = jnp.zeros((), jnp.float32)
        brax_state = BraxState(
            pipeline_state=physics, obs=obs, reward=zero, done=zero, metrics={}, info={}
        )
        return self._with_sys(params, self._brax_env.step, brax_state, action)

    def step(self, state: EnvState, action: jax.Array, params: Any = None) -> EnvState:
        """One transition with brax's own reward and done (ground truth, see module docstring)."""
        action = self.check_action(action)
        next_state = self._brax_step(state.physics, state.obs, action, self._params(params))
        done = jnp.asarray(next_state.done) > 0.5
        time = state.time + 1
        truncated = jnp.logical_and(time >= self.episode_length, jnp.logical_not(done))
        return EnvState(
            obs=next_state.obs.astype(jnp.float32),
            reward=jnp.asarray(next_state.reward, jnp.float32),
            done=done,
            truncated=truncated,
            time=time,
            physics=next_state.pipeline_state,
        )

    def _physics_from_obs(self, obs, params):
        if self.env_name not in OBS_REWARD_ENVS:
            raise ValueError(
                f"state_from_obs is only defined for {OBS_REWARD_ENVS}, not {self.env_name!r}"
            )
        split = self._q_size - self._hidden_q
        q = jnp.concatenate([jnp.zeros(self._hidden_q, obs.dtype), obs[:split]])
        qd = obs[split:]
        if self.env_name == "hopper":
            height_index = 1 - self._hidden_q  # 0 with x hidden, 1 without
            q = q.at[1].set(obs[height_index] - self._hopper_rest_height)
        return self._with_sys(params, self._brax_env.pipeline_init, q, qd)

    # ----- observation-only reward / termination -------------------------------------------------
    def _require_obs_functions(self, what: str) -> None:
        if self.env_name not in OBS_REWARD_ENVS:
            raise ValueError(
                f"{self.env_name}: no observation-based {what}; brax's reward depends on the "
                f"pipeline state. Available for {OBS_REWARD_ENVS}; env.step gives the true "
                "reward."
            )

    def reward_fn(self, obs, action, next_obs):
        """Observation-only reward []; obs/next_obs [obs_dim], action [action_dim].

        halfcheetah: w_fwd·v̄ − w_ctrl‖a‖²; hopper/ant: w_fwd·v̄ + healthy_reward − w_ctrl‖a‖²
        (healthy reward as brax: constant while terminating on unhealthy states);
        inverted_pendulum: 1. v̄ = (ẋ + ẋ')/2, the root's x velocity averaged over obs and
        next_obs, approximating brax's Δx/dt (exact only for constant velocity).
        """
        self._require_obs_functions("reward")
        env = self._brax_env
        if self.env_name == "inverted_pendulum":
            return jnp.ones(next_obs.shape[:-1], jnp.float32)
        # Brax rewards the torso's displacement over the step divided by dt; the mean of the
        # root velocities at both ends (trapezoid rule) estimates it better than the end velocity
        # alone (halfcheetah, positional, random actions: RMS error 0.18 vs 0.33).
        x_velocity = 0.5 * (obs[..., self._velocity_index] + next_obs[..., self._velocity_index])
        forward = getattr(env, "_forward_reward_weight", 1.0) * x_velocity  # ant has no weight
        ctrl_cost = env._ctrl_cost_weight * jnp.sum(jnp.square(action), axis=-1)
        if self.env_name == "halfcheetah":
            return forward - ctrl_cost
        if getattr(env, "_use_contact_forces", False):
            raise ValueError("ant: use_contact_forces=True has no observation-based reward")
        healthy = env._healthy_reward
        if not env._terminate_when_unhealthy:
            healthy = healthy * jnp.logical_not(self._unhealthy(next_obs))
        return forward + healthy - ctrl_cost

    def _unhealthy(self, next_obs):
        env = self._brax_env
        if self.env_name == "hopper":
            height_index = 1 - self._hidden_q
            z, angle = next_obs[..., height_index], next_obs[..., height_index + 1]
            # brax tests q[2:] and the *unclipped* qd against the state range; the observation
            # has qd clipped to ±10, so only |qd| > 100 (never seen in practice) can differ.
            state_vec = next_obs[..., height_index + 1 :]
            (min_z, max_z), (min_angle, max_angle) = env._healthy_z_range, env._healthy_angle_range
            min_state, max_state = env._healthy_state_range
            healthy = jnp.all((state_vec > min_state) & (state_vec < max_state), axis=-1)
            healthy &= (z > min_z) & (z < max_z)
            healthy &= (angle > min_angle) & (angle < max_angle)
            return jnp.logical_not(healthy)
        if self.env_name == "ant":
            z = next_obs[..., 2 - self._hidden_q]
            min_z, max_z = env._healthy_z_range
            return (z < min_z) | (z > max_z)
        return jnp.zeros(next_obs.shape[:-1], bool)

    def termination_fn(self, next_obs):
        """[] bool from next_obs alone: hopper (height > 0.7, |angle| < 0.2, |q[2:], qd| < 100),
        ant (0.2 < height < 1), inverted_pendulum (|hinge| > 0.2); halfcheetah never."""
        self._require_obs_functions("termination")
        if self.env_name == "inverted_pendulum":
            return jnp.abs(next_obs[..., 1]) > 0.2
        if self.env_name in ("hopper", "ant") and not self._brax_env._terminate_when_unhealthy:
            return jnp.zeros(next_obs.shape[:-1], bool)
        return self._unhealthy(next_obs)
