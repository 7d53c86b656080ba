"""CEM model-predictive control with PETS trajectory propagation, pure and vmappable.

Semantics (facts taken from Chua et al. 2018 and mbrl-lib 0.2 ``CEMOptimizer`` /
``TrajectoryOptimizer`` / ``ModelEnv.evaluate_action_sequences``; the code is our own):

* The optimisation variable is an action sequence ``[H, A]``. Every planning call starts from the
  previous plan shifted by one step, the freed last step filled with the middle of the action box
  (warm start), and from a *fresh* variance ``((high − low) / 4)²`` (= (high−low)²/16, as mbrl-lib
  and the original PETS code; the variance is not carried between calls).
* Sampling (``sampling = "truncated_normal"``, the mbrl-lib default): each coordinate is drawn from
  a normal truncated at ±2 standard deviations whose variance is capped at
  ``min(var, ((mean − low)/2)², ((high − mean)/2)²)``, so samples never leave the box and no
  clipping is needed. ``sampling = "clipped_normal"`` instead samples ``mean + std · N(0, 1)``
  with an initial std of 1 and clips to the box (mbrl-lib's ``clipped_normal=True``).
* The elites are the ``num_elites`` best candidates; mean and variance (unbiased, ddof = 1, like
  ``torch.var``) are smoothed: ``new = α · old + (1 − α) · elite statistic``.
* The returned solution is the final mean (``return_mean_elites = True``, mbrl-lib's PETS config)
  or the best candidate seen over all iterations (``False``).
* Candidates whose return is NaN are ranked last (mbrl-lib replaces NaN with −1e−10, which can let
  a diverged rollout become an elite when all returns are negative; −inf cannot).
* The objective of a candidate is its return over the horizon averaged over particles; rewards
  after a predicted termination are zero (the terminating step itself still counts).

Propagation (``propagation``), for an ensemble of E members:

* ``"expectation"``: deterministic; the next state is the average of the members' predicted means
  (PETS "E" / Lambert et al.'s expectation planner). Particles are meaningless and ``num_particles``
  is ignored (one rollout per candidate, evaluated by all E members).
* ``"ts1"``: each particle's next state is sampled from the Gaussian of a member re-drawn at every
  step. ``"tsinf"``: each particle keeps one member for the whole horizon. Like mbrl-lib, members
  are assigned by a random permutation of all ``population_size · num_particles`` particles
  split into E equal groups (each member evaluates exactly B/E particles: one forward pass per
  particle instead of E), so ``population_size · num_particles`` must be divisible by E.
  Deterministic models (D, DE) propagate the chosen member's mean without noise.

Unlike mbrl-lib, planning is a pure function of ``(key, model_params, normalizer, obs, prev_plan)``
so it vmaps over start states, over models, or both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.models.core import ModelConfig, ModelParams, Normalizer, predict

PROPAGATIONS = ("expectation", "ts1", "tsinf")
SAMPLINGS = ("truncated_normal", "clipped_normal")


@dataclasses.dataclass(frozen=True)
class CEMConfig:
    """Static settings of CEM-MPC (hashable).

    horizon: planned steps H. population_size: candidates per iteration.
    num_elites: candidates kept per iteration (mbrl-lib: ceil(elite_ratio · population)).
    num_iterations: CEM generations per planning call. alpha: smoothing of mean and variance.
    propagation: "expectation" | "ts1" | "tsinf"; num_particles: particles per candidate (ts only).
    action_low / action_high: per-dimension box (tuples); None until bound to an env with
        ``with_bounds``/``for_env``.
    sampling: "truncated_normal" (mbrl-lib default) | "clipped_normal".
    return_mean_elites: return the final mean (True) or the best candidate seen (False).
    """

    horizon: int = 15
    population_size: int = 350
    num_elites: int = 35
    num_iterations: int = 5
    alpha: float = 0.1
    propagation: str = "expectation"
    num_particles: int = 20
    action_low: Optional[tuple] = None
    action_high: Optional[tuple] = None
    sampling: str = "truncated_normal"
    return_mean_elites: bool = True

    def __post_init__(self):
        for name in ("horizon", "population_size", "num_elites", "num_iterations", "num_particles"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CEMConfig.{name} must be a positive integer, got {value!r}")
        if self.num_elites > self.population_size:
            raise ValueError(
                f"CEMConfig.num_elites ({self.num_elites}) must be <= population_size "
                f"({self.population_size})"
            )
        if self.num_elites < 2:
            raise ValueError(
                "CEMConfig.num_elites must be >= 2 (the elite variance uses ddof = 1)"
            )
        if not 0.0 <= float(self.alpha) < 1.0:
            raise ValueError(f"CEMConfig.alpha must be in [0, 1), got {self.alpha!r}")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(
                f"CEMConfig.propagation must be one of {PROPAGATIONS}, got {self.propagation!r}"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"CEMConfig.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("CEMConfig.action_low and action_high must be given together")
        if self.action_low is not None:
            low = np.asarray(self.action_low, np.float64)
            high = np.asarray(self.action_high, np.float64)
            if low.ndim != 1 or low.shape != high.shape:
                raise ValueError(
                    "CEMConfig.action_low / action_high must be 1-D tuples of equal length, got "
                    f"{self.action_low!r} / {self.action_high!r}"
                )
            if not np.all(high > low):
                raise ValueError("CEMConfig.action_high must exceed action_low in every dimension")

    @property
    def action_dim(self) -> int:
        self._require_bounds()
        return len(self.action_low)

    @property
    def particles(self) -> int:
        """Rollouts per candidate actually simulated (1 for expectation)."""
        return 1 if self.propagation == "expectation" else self.num_particles

    def with_bounds(self, low, high) -> "CEMConfig":
        """Copy with the action box set (arrays or sequences of floats)."""
        return dataclasses.replace(
            self,
            action_low=tuple(float(v) for v in np.ravel(low)),
            action_high=tuple(float(v) for v in np.ravel(high)),
        )

    def for_env(self, env) -> "CEMConfig":
        """Copy with the action box of ``env``."""
        return self.with_bounds(env.action_low, env.action_high)

    def _require_bounds(self):
        if self.action_low is None:
            raise ValueError(
                "CEMConfig has no action bounds: use cem_config.for_env(env) or "
                "cem_config.with_bounds(low, high)"
            )


def _bounds(config: CEMConfig):
    config._require_bounds()
    low = jnp.asarray(config.action_low, jnp.float32)
    high = jnp.asarray(config.action_high, jnp.float32)
    return low, high


def initial_plan(config: CEMConfig) -> jax.Array:
    """The plan before any optimisation: the middle of the action box. → [H, A]."""
    low, high = _bounds(config)
    return jnp.broadcast_to((low + high) / 2.0, (config.horizon, low.shape[0]))


def shift_plan(config: CEMConfig, solution: jax.Array) -> jax.Array:
    """Warm start for the next step: solution [H, A] shifted left by one, last step = middle."""
    low, high = _bounds(config)
    return jnp.concatenate([solution[1:], ((low + high) / 2.0)[None]], axis=0)


class CEMInfo(NamedTuple):
    """Diagnostics of one optimisation: best_return [] (best candidate seen),
    final_std [H, A] (standard deviation of the last sampling distribution)."""

    best_return: jax.Array
    final_std: jax.Array


def initial_dispersion(config: CEMConfig, shape) -> jax.Array:
    """Dispersion at the start of every planning call: the variance ((high − low)/4)² for
    truncated-normal sampling, the standard deviation 1 for clipped-normal sampling. → shape."""
    low, high = _bounds(config)
    if config.sampling == "truncated_normal":
        return jnp.broadcast_to(((high - low) ** 2) / 16.0, tuple(shape)).astype(jnp.float32)
    return jnp.ones(shape, jnp.float32)


def sample_candidates(key: jax.Array, config: CEMConfig, mean: jax.Array,
                      dispersion: jax.Array) -> jax.Array:
    """population_size candidates [P, H, A] around mean [H, A], always inside the action box.

    truncated_normal: dispersion is a variance, capped so that ±2 std stays in the box.
    clipped_normal: dispersion is a standard deviation; samples are clipped to the box.
    """
    low, high = _bounds(config)
    low, high = jnp.broadcast_to(low, mean.shape), jnp.broadcast_to(high, mean.shape)
    shape = (config.population_size,) + mean.shape
    if config.sampling == "truncated_normal":
        room = jnp.minimum(((mean - low) / 2.0) ** 2, ((high - mean) / 2.0) ** 2)
        std = jnp.sqrt(jnp.minimum(room, dispersion))
        samples = mean[None] + std[None] * jax.random.truncated_normal(key, -2.0, 2.0, shape)
        # ±2 std lies inside the box in exact arithmetic; the clip only removes float rounding.
        return jnp.clip(samples, low[None], high[None])
    samples = mean[None] + dispersion[None] * jax.random.normal(key, shape)
    return jnp.clip(samples, low[None], high[None])


def cem_optimize(key: jax.Array, objective: Callable, init_mean: jax.Array, config: CEMConfig):
    """Maximises ``objective(key, actions [P, H, A]) -> returns [P]`` over the action box.

    init_mean: [H, A] warm start. Returns (solution [H, A], CEMInfo). Pure; one lax.scan over
    iterations.
    """
    truncated = config.sampling == "truncated_normal"
    init_dispersion = initial_dispersion(config, init_mean.shape)

    def iteration(carry, key):
        mean, dispersion, best_value, best_solution = carry
        sample_key, eval_key = jax.random.split(key)
        population = sample_candidates(sample_key, config, mean, dispersion)
        values = objective(eval_key, population)
        values = jnp.where(jnp.isnan(values), -jnp.inf, values)
        elite_values, elite_idx = jax.lax.top_k(values, config.num_elites)
        elites = population[elite_idx]
        elite_mean = elites.mean(0)
        if truncated:
            elite_dispersion = elites.var(0, ddof=1)
        else:
            elite_dispersion = elites.std(0, ddof=1)
        mean = config.alpha * mean + (1.0 - config.alpha) * elite_mean
        dispersion = config.alpha * dispersion + (1.0 - config.alpha) * elite_dispersion
        improved = elite_values[0] > best_value
        best_value = jnp.where(improved, elite_values[0], best_value)
        best_solution = jnp.where(improved, elites[0], best_solution)
        return (mean, dispersion, best_value, best_solution), None

    init = (init_mean.astype(jnp.float32), init_dispersion.astype(jnp.float32),
            jnp.asarray(-jnp.inf, jnp.float32), init_mean.astype(jnp.float32))
    keys = jax.random.split(key, config.num_iterations)
    (mean, dispersion, best_value, best_solution), _ = jax.lax.scan(iteration, init, keys)
    solution = mean if config.return_mean_elites else best_solution
    std = jnp.sqrt(dispersion) if truncated else dispersion
    return solution, CEMInfo(best_return=best_value, final_std=std)


# ------------------------------------------------------------------------------------------------
# Planners
# ------------------------------------------------------------------------------------------------


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
                 reward_fn: Optional[Callable], termination_fn: Optional[Callable] = None) -> Planner:
    """CEM-MPC on a learned model.

    reward_fn(obs [d], action [a], next_obs [d]) -> [] and termination_fn(next_obs [d]) -> [] bool
    are unbatched (env.reward_fn / env.termination_fn). Returns a ``Planner``:
    ``planner(key, model_params, normalizer, obs [d], prev_plan [H, A]) -> (action [A], next_plan)``.
    Pure: vmap it over models (params, normalizer) and/or start states (obs, prev_plan).
    """
    cem_config._require_bounds()
    if cem_config.action_dim != model_config.action_dim:
        raise ValueError(
            f"CEMConfig has {cem_config.action_dim} action dims but the model has "
            f"{model_config.action_dim}"
        )

    def plan_with_info(key, model_params, normalizer, obs, prev_plan):
        def objective(eval_key, actions):
            return model_returns(cem_config, model_config, reward_fn, termination_fn, eval_key,
                                 model_params, normalizer, obs, actions)

        solution, info = cem_optimize(key, objective, prev_plan, cem_config)
        return solution[0], shift_plan(cem_config, solution), solution, info

    return Planner(config=cem_config, plan_with_info=plan_with_info)


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

    def plan_with_info(key, model_params, normalizer, obs, prev_plan):
        del model_params, normalizer

        def objective(eval_key, actions):
            del eval_key
            return true_dynamics_returns(cem_config, env, env_params, obs, actions)

        solution, info = cem_optimize(key, objective, prev_plan, cem_config)
        return solution[0], shift_plan(cem_config, solution), solution, info

    return Planner(config=cem_config, plan_with_info=plan_with_info)


# ------------------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------------------


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


def mpc_episode(key: jax.Array, env, planner: Planner, model_params, normalizer, num_steps: int,
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
