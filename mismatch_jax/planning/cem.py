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

Propagation (``propagation``, implemented by ``planning.mpc.model_returns``), for an ensemble of E
members:

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
from typing import Callable, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.config_io import Schema, setting


PROPAGATIONS = ("expectation", "ts1", "tsinf")
SAMPLINGS = ("truncated_normal", "clipped_normal")


@dataclasses.dataclass(frozen=True)
class CEMConfig(Schema):
    """Static settings of CEM-MPC (hashable); also the ``[cem]`` / ``[planner]`` table of every
    config that plans (each parent gives its own defaults).

    horizon: planned steps H. population_size: candidates per iteration.
    num_elites: candidates kept per iteration (mbrl-lib: ceil(elite_ratio · population)).
    num_iterations: CEM generations per planning call. alpha: smoothing of mean and variance.
    propagation: "expectation" | "ts1" | "tsinf"; num_particles: particles per candidate (ts only).
    action_low / action_high: per-dimension box (tuples); None until bound to an env with
        ``with_bounds``/``for_env``.
    sampling: "truncated_normal" (mbrl-lib default) | "clipped_normal".
    return_mean_elites: return the final mean (True) or the best candidate seen (False).
    """

    horizon: int = setting(15, ge=1)
    population_size: int = setting(350, ge=1)
    num_elites: int = setting(35, ge=2)  # the elite variance uses ddof = 1
    num_iterations: int = setting(5, ge=1)
    alpha: float = setting(0.1, ge=0.0, lt=1.0)
    propagation: Literal["expectation", "ts1", "tsinf"] = "expectation"
    num_particles: int = setting(20, ge=1)
    action_low: Optional[tuple[float, ...]] = None
    action_high: Optional[tuple[float, ...]] = None
    sampling: Literal["truncated_normal", "clipped_normal"] = "truncated_normal"
    return_mean_elites: bool = True

    def check(self):
        if self.num_elites > self.population_size:
            raise ValueError(
                f"CEMConfig.num_elites ({self.num_elites}) must be <= population_size "
                f"({self.population_size})"
            )
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
