"""Model-predictive control: planners built on the CEM optimiser, and MPC episodes.

A planner (the ``PlannerFn`` protocol) is ``planner(key, model_params, normalizer, obs [d],
prev_plan [H, A]) -> (action [A], next_plan [H, A])``, a pure function that vmaps over models and
start states. Every planner here
is ``planner_from_returns(cem_config, returns_fn)`` for one way of scoring action sequences:

* ``make_planner``: a learned model with PETS propagation (``model_returns``: expectation, TS1,
  TS∞; rewards after a predicted termination are zero);
* ``make_true_dynamics_planner``: the true environment (an oracle controller, an expert);
* ``make_value_planner``: any one-step function (a model's mean prediction, the true dynamics)
  with a discount and an optional terminal value γ^H V(s_H) added to every planned return.

``mpc_episode`` runs one episode in the true env, replanning every step from a warm-started plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol, Sequence

import chex
import jax
import jax.numpy as jnp
from flax import struct

from mismatch_jax.config_io import Schema, setting
from mismatch_jax.models.core import ModelConfig, ModelParams, Normalizer, predict
from mismatch_jax.planning.cem import CEMConfig, cem_optimize, initial_plan, shift_plan
from mismatch_jax.population import devices_dividing, split_over_devices

class ReturnsFn(Protocol):
    """How a planner scores candidates: ``returns_fn(key, model_params, normalizer, obs [d],
    actions [P, H, A]) -> returns [P]``; pure (vmapped over models and start states)."""

    def __call__(self, key: jax.Array, model_params: Any, normalizer: Any, obs: jax.Array,
                 actions: jax.Array) -> jax.Array: ...


class PlannerFn(Protocol):
    """The planner contract (``Planner`` implements it; ``mpc_episode`` drives any):
    ``planner(key, model_params, normalizer, obs [d], prev_plan [H, A]) -> (action [A],
    next_plan [H, A])``, pure, and ``initial_plan`` [H, A] to start an episode from."""

    def __call__(self, key: jax.Array, model_params: Any, normalizer: Any, obs: jax.Array,
                 prev_plan: jax.Array) -> tuple[jax.Array, jax.Array]: ...

    @property
    def initial_plan(self) -> jax.Array: ...



@dataclasses.dataclass(frozen=True)
class Planner:
    """A planning function with the facts needed to drive it.

    ``planner(key, model_params, normalizer, obs [obs_dim], prev_plan [H, A])
    -> (action [A], next_plan [H, A])``; ``next_plan`` is the solution already shifted for the
    next step (the full solution is ``concat(action[None], next_plan[:-1])``).
    ``planner.plan_with_info`` returns ``(action, next_plan, solution [H, A], CEMInfo)``.
    ``initial_plan`` [H, A] is what to pass at the first step of an episode.
    """

    config: CEMConfig
    plan_with_info: Callable

    def __call__(self, key, model_params, normalizer, obs, prev_plan):
        action, next_plan, _, _ = self.plan_with_info(key, model_params, normalizer, obs, prev_plan)
        return action, next_plan

    @property
    def initial_plan(self) -> jax.Array:
        return initial_plan(self.config)


def planner_from_returns(cem_config: CEMConfig, returns_fn: ReturnsFn) -> "Planner":
    """The CEM-MPC planner that maximises ``returns_fn(key, model_params, normalizer, obs [d],
    actions [P, H, A]) -> [P]`` (see the module docstring); the one way planners are built."""
    cem_config._require_bounds()

    action_dim = len(cem_config.action_low)

    def plan_with_info(key, model_params, normalizer, obs, prev_plan):
        chex.assert_rank(obs, 1)  # one state; vmap the planner over start states
        chex.assert_shape(prev_plan, (cem_config.horizon, action_dim))

        def objective(eval_key, actions):
            return returns_fn(eval_key, model_params, normalizer, obs, actions)

        solution, info = cem_optimize(key, objective, prev_plan, cem_config)
        return solution[0], shift_plan(cem_config, solution), solution, info

    return Planner(config=cem_config, plan_with_info=plan_with_info)


def _never_terminates(next_obs):
    return jnp.zeros((), bool)


def model_returns(cem: CEMConfig, model: ModelConfig, reward_fn: Optional[Callable],
                  termination_fn: Optional[Callable], key: jax.Array, model_params: ModelParams,
                  normalizer: Normalizer, obs: jax.Array, actions: jax.Array) -> jax.Array:
    """Particle-averaged returns of action sequences under a learned model.

    obs [obs_dim], actions [P, H, A] → returns [P]. See the module docstring for propagation.
    """
    population, horizon, _ = actions.shape
    particles = cem.particles
    batch = population * particles
    members = model.ensemble_size
    termination_fn = termination_fn or _never_terminates
    if cem.propagation != "expectation" and batch % members:
        raise ValueError(
            f"population_size · num_particles = {batch} must be divisible by the ensemble size "
            f"{members} for {cem.propagation!r} propagation; change num_particles"
        )
    if not model.predict_reward and reward_fn is None:
        raise ValueError("reward_fn is required unless ModelConfig.predict_reward is set")
    obs_dim = model.obs_dim
    step_reward_fn = jax.vmap(reward_fn) if reward_fn is not None else None
    step_done_fn = jax.vmap(termination_fn)
    sample_noise = cem.propagation != "expectation" and model.probabilistic

    def split_prediction(state, action, pred):
        next_obs = pred[..., :obs_dim]
        if model.predict_reward:
            reward = pred[..., obs_dim]
        else:
            reward = step_reward_fn(state, action, next_obs)
        return next_obs, reward

    # Rows are (candidate, particle) pairs, candidate-major: row = p · particles + k.
    row_actions = jnp.repeat(actions, particles, axis=0) if particles > 1 else actions  # [B, H, A]
    state0 = jnp.broadcast_to(obs.astype(jnp.float32), (batch, obs_dim))

    def grouped(x, perm):  # [B, ...] → [E, B/E, ...] in the order of perm
        return x[perm].reshape((members, batch // members) + x.shape[1:])

    def member_step(key, state, action, perm):
        """One transition of all rows, row perm[i] evaluated by member i // (B/E)."""
        mean, var = predict(model, model_params, normalizer, grouped(state, perm), grouped(action, perm))
        if sample_noise:
            mean = mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape)
        pred = jnp.zeros((batch,) + mean.shape[2:], mean.dtype).at[perm].set(
            mean.reshape((batch,) + mean.shape[2:]))
        return split_prediction(state, action, pred)

    tsinf_perm = jax.random.permutation(jax.random.fold_in(key, 0), batch)

    def body(carry, inputs):
        state, alive, total = carry
        step_key, action = inputs
        perm_key, noise_key = jax.random.split(step_key)
        if cem.propagation == "expectation":
            mean, _ = predict(model, model_params, normalizer, state, action)  # [E, B, D]
            next_obs, reward = split_prediction(state, action, mean.mean(0))
        elif cem.propagation == "ts1":
            next_obs, reward = member_step(noise_key, state, action,
                                           jax.random.permutation(perm_key, batch))
        else:
            next_obs, reward = member_step(noise_key, state, action, tsinf_perm)
        total = total + jnp.where(alive, reward, 0.0)
        alive = jnp.logical_and(alive, jnp.logical_not(step_done_fn(next_obs)))
        return (next_obs, alive, total), None

    step_keys = jax.random.split(jax.random.fold_in(key, 1), horizon)
    init = (state0, jnp.ones(batch, bool), jnp.zeros(batch, jnp.float32))
    (_, _, totals), _ = jax.lax.scan(body, init, (step_keys, jnp.swapaxes(row_actions, 0, 1)))
    return totals.reshape(population, particles).mean(axis=1)


def make_planner(cem_config: CEMConfig, model_config: ModelConfig,
                 reward_fn: Optional[Callable], termination_fn: Optional[Callable] = None,
                 candidate_devices: Optional[Sequence[Any]] = None) -> Planner:
    """CEM-MPC on a learned model.

    reward_fn(obs [d], action [a], next_obs [d]) -> [] and termination_fn(next_obs [d]) -> [] bool
    are unbatched (env.reward_fn / env.termination_fn). Returns a ``Planner``:
    ``planner(key, model_params, normalizer, obs [d], prev_plan [H, A]) -> (action [A], next_plan)``.
    Pure: vmap it over models (params, normalizer) and/or start states (obs, prev_plan).

    candidate_devices: with two or more devices, every CEM iteration's candidates are cut into one
    contiguous block per device and each device rolls out its own block (``shard_map``, no
    collectives; the model and the start state are replicated). Only for ``expectation``
    propagation, where a candidate's return depends on nothing but its own actions, so the plan is
    the same as on one device; ``population_size`` must be a multiple of the device count. On a
    multi-core CPU split into host devices this is what lets one planning call use every core
    (RESULTS.md, CEM rows with ``--devices``).
    """
    cem_config._require_bounds()
    if cem_config.action_dim != model_config.action_dim:
        raise ValueError(
            f"CEMConfig has {cem_config.action_dim} action dims but the model has "
            f"{model_config.action_dim}"
        )

    def returns_fn(key, model_params, normalizer, obs, actions):
        return model_returns(cem_config, model_config, reward_fn, termination_fn, key, model_params,
                             normalizer, obs, actions)

    devices = list(candidate_devices or [])
    if len(devices) > 1:
        returns_fn = _split_candidates(cem_config, returns_fn, devices)
    return planner_from_returns(cem_config, returns_fn)


def candidate_devices_for(cem: CEMConfig, devices: Optional[Sequence[Any]] = None) -> Optional[list]:
    """The devices to split one planning call's candidates over (``make_planner``'s
    ``candidate_devices``): all of ``devices`` (default: the local devices) when there are
    several, the propagation is expectation and their count divides ``population_size``; else
    None (one device)."""
    devices = devices_dividing(cem.population_size, devices)
    return devices if len(devices) > 1 and cem.propagation == "expectation" else None


def _split_candidates(cem: CEMConfig, returns_fn: ReturnsFn, devices: list) -> ReturnsFn:
    """``returns_fn`` with its candidates [P, H, A] evaluated in one block per device (key, model
    and start state replicated)."""
    if cem.propagation != "expectation":
        raise ValueError(
            f"candidate_devices splits candidates only under 'expectation' propagation (got "
            f"{cem.propagation!r}: its particles share one member assignment over all candidates); "
            "split the models or seeds over devices instead, or pass candidate_devices=None"
        )
    if cem.population_size % len(devices):
        raise ValueError(
            f"CEMConfig.population_size ({cem.population_size}) must be a multiple of the "
            f"{len(devices)} candidate devices; change population_size or the device count"
        )
    return split_over_devices(returns_fn, 5, shared=(0, 1, 2, 3), devices=devices)


def true_dynamics_returns(cem: CEMConfig, env, env_params: Any, obs: jax.Array,
                          actions: jax.Array) -> jax.Array:
    """Returns of action sequences [P, H, A] from obs [d] under the true env dynamics → [P]."""
    start = env.state_from_obs(obs, env_params)

    def one(sequence):
        def body(carry, action):
            state, alive, total = carry
            state = env.step(state, action, env_params)
            total = total + jnp.where(alive, state.reward, 0.0)
            alive = jnp.logical_and(alive, jnp.logical_not(state.done))
            return (state, alive, total), None

        (_, _, total), _ = jax.lax.scan(
            body, (start, jnp.ones((), bool), jnp.zeros((), jnp.float32)), sequence)
        return total

    return jax.vmap(one)(actions)


def make_true_dynamics_planner(env, cem_config: CEMConfig, env_params: Any = None) -> Planner:
    """CEM-MPC on the true dynamics of ``env`` (through env.state_from_obs / env.step).

    Same call signature as ``make_planner`` (model_params and normalizer are ignored; pass None)
    so ``mpc_episode`` drives both. The env is deterministic: propagation/particles are unused.
    Bounds default to the env's action box when the config has none.
    """
    if cem_config.action_low is None:
        cem_config = cem_config.for_env(env)
    if cem_config.action_dim != env.action_dim:
        raise ValueError(f"CEMConfig has {cem_config.action_dim} action dims, env {env.action_dim}")

    def returns_fn(key, model_params, normalizer, obs, actions):
        del key, model_params, normalizer
        return true_dynamics_returns(cem_config, env, env_params, obs, actions)

    return planner_from_returns(cem_config, returns_fn)


def make_value_planner(cem_config: CEMConfig, step_fn: Callable, reward_fn: Callable,
                       terminal_value: Optional[Callable] = None, discount: float = 1.0) -> Planner:
    """CEM-MPC scoring candidates by rolling ``step_fn(model_params, normalizer, obs [P, d],
    action [P, a]) -> next_obs [P, d]`` for H steps: Σ_t γ^t r_t, plus γ^H terminal_value(s_H
    [P, d]) → [P] when given (a learned value function closing the horizon). Deterministic: no
    particles, no termination. Same call signature as ``make_planner``."""
    def returns_fn(key, model_params, normalizer, obs, actions):
        del key

        def body(carry, action):
            state, total, weight = carry
            nxt = step_fn(model_params, normalizer, state, action)
            reward = jax.vmap(reward_fn)(state, action, nxt)
            return (nxt, total + weight * reward, weight * discount), None

        start = jnp.broadcast_to(obs, (actions.shape[0], obs.shape[-1]))
        init = (start, jnp.zeros(actions.shape[0]), jnp.ones(()))
        (final, total, weight), _ = jax.lax.scan(body, init, jnp.swapaxes(actions, 0, 1))
        if terminal_value is not None:
            total = total + weight * terminal_value(final)
        return total

    return planner_from_returns(cem_config, returns_fn)


def mean_model_step(model_config: ModelConfig) -> Callable:
    """``step_fn`` of expectation propagation: the members' mean predicted next observation."""
    def step(params, norm, obs, action):
        mean, _ = predict(model_config, params, norm, obs, action)
        return mean.mean(0)[..., : model_config.obs_dim]
    return step


def true_env_step(env, env_params: Any = None) -> Callable:
    """``step_fn`` of the true dynamics (model params and normaliser ignored)."""
    def step(params, norm, obs, action):
        del params, norm
        return jax.vmap(lambda o, a: env.step(env.state_from_obs(o, env_params), a, env_params).obs)(obs, action)
    return step


# ------------------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpisodeSettings(Schema):
    """The ``[evaluation]`` schema of every config that scores a model by CEM-MPC episodes in
    the true env: ``trials`` episodes of ``episode_length`` steps (omitted = the env's own length;
    0 is refused like any other impossible length).

    ``episode_salt`` re-scores the same models on fresh episodes: omitted, the evaluation keys are
    exactly those of a config without the field (same numbers, and the resolved config — hence a
    sweep's config hash — is unchanged, since None values are not written); an integer ≥ 1 is
    folded into the evaluation keys (``salted``), so a second run with ``--set
    evaluation.episode_salt=1`` trains the same models and scores them on other start states and
    planner noise (e.g. to re-score an epoch or model picked on the first run's episodes). Used by
    the sweep (every (model, epoch) episode), reweight and mismatch-map (every model's trials) and
    the attack (its final before/after episodes; the CMA-ES search keeps its keys)."""

    trials: int = setting(5, ge=1)
    episode_length: int | None = setting(None, ge=1)
    episode_salt: int | None = setting(None, ge=1)

    def length(self, env) -> int:
        """Steps per episode in ``env``."""
        return int(env.episode_length) if self.episode_length is None else self.episode_length

    def salted(self, key: jax.Array) -> jax.Array:
        """One evaluation key with ``episode_salt`` folded in; ``key`` itself when it is omitted."""
        return key if self.episode_salt is None else jax.random.fold_in(key, self.episode_salt)


@struct.dataclass
class Trajectory:
    """Transitions of one episode (leading axis [T]): obs [T, d], action [T, a], reward [T],
    next_obs [T, d], done [T] bool (termination), alive [T] bool (the step happened before any
    termination, i.e. counts towards the return and is valid data)."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array
    alive: jax.Array


def mpc_episode(key: jax.Array, env, planner: PlannerFn, model_params, normalizer, num_steps: int,
                env_params: Any = None):
    """One episode: reset, then ``num_steps`` × (plan from the current obs, act in the true env).

    Replans every step with a warm-started plan. One lax.scan; vmap it over models
    (model_params, normalizer) and/or keys. Returns (Trajectory with [num_steps] leading axes,
    total_reward []); rewards after a termination are not counted (the env does not auto-reset).
    """
    reset_key, plan_key = jax.random.split(key)
    state = env.reset(reset_key, env_params)

    def body(carry, step_key):
        state, plan, alive = carry
        action, plan = planner(step_key, model_params, normalizer, state.obs, plan)
        next_state = env.step(state, action, env_params)
        transition = Trajectory(
            obs=state.obs, action=action, reward=jnp.where(alive, next_state.reward, 0.0),
            next_obs=next_state.obs, done=next_state.done, alive=alive)
        alive = jnp.logical_and(alive, jnp.logical_not(next_state.done))
        return (next_state, plan, alive), transition

    keys = jax.random.split(plan_key, num_steps)
    init = (state, planner.initial_plan, jnp.ones((), bool))
    _, trajectory = jax.lax.scan(body, init, keys)
    return trajectory, trajectory.reward.sum()
