"""CMA-ES (evosax 0.3) over the last layer for the adversarial attack (``experiments.attack``):
the settings, the fitness, the LL constraint's repair, and the generation loop. One generation is
ask (+ repair) | evaluate | tell: the two ends are jitted here, the evaluation is the caller's
(jitted, possibly sharded over devices), so a generation's candidates can be spread over devices
while the CMA-ES state stays whole."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax.config_io import Schema, setting
from mismatch_jax.experiments.attack_space import LastLayer

INVALID_FITNESS = 1e9
REPAIR_STEPS = 16  # bisection halvings of the repair scale t (resolution 2⁻¹⁶)
REPAIR_MARGIN = 1e-5  # nats kept inside the LL constraint: more than float32 rounding of a mean LL


@dataclasses.dataclass(frozen=True)
class CMAESSettings(Schema):
    """CMA-ES over the last-layer perturbation.

    population_size: candidates per generation (evaluated in one vmapped call; the final
    before/after evaluation reuses it for three models, so it is at least 4).
    generations: number of ask/tell rounds. sigma: initial step size (parameter units).
    penalty: reward units per nat of validation-LL drop below the original (minus tolerance).
    tolerance: LL drop (nats) allowed without penalty (0 = the paper's "LL must not drop").
    search_space: "full" searches every output-layer parameter (the paper); "low_variance"
    searches δ = U z on the mean outputs, where the columns of U [hidden + 1, subspace_rank] are
    the directions of the output layer's input (hidden features and the bias' 1) that the attack
    dataset excites least (``low_variance_basis``): the parameter directions the likelihood
    barely sees, so CMA-ES spends its few candidates where the LL constraint leaves room.
    sigma is then in units of z (U is orthonormal, so ‖δ‖ = ‖z‖). "whitened" uses every
    direction, each scaled so a unit step moves the predictions on the data equally;
    "output_bias" shifts only the output biases (``_output_bias_space``).
    constraint: "penalty" scores candidates by the penalised fitness; "repair" scales every
    candidate back towards the base model until it meets the LL constraint (``experiments.attack``).
    """

    population_size: int = setting(16, ge=4)
    generations: int = setting(50, ge=1)
    sigma: float = setting(0.01, gt=0.0)
    penalty: float = setting(1000.0, ge=0.0)
    tolerance: float = setting(0.0, ge=0.0)
    search_space: Literal["full", "low_variance", "whitened", "output_bias"] = "full"
    subspace_rank: int = setting(16, ge=1)
    constraint: Literal["penalty", "repair"] = "penalty"


def attack_fitness(reward_mean: jax.Array, ll: jax.Array, ll_reference, penalty, tolerance=0.0):
    """CMA-ES fitness (minimised): reward + penalty · max(0, LL_ref − tolerance − LL).

    reward_mean [C], ll [C] → [C]; non-finite values become ``INVALID_FITNESS``."""
    drop = jnp.maximum(0.0, ll_reference - tolerance - ll)
    fitness = reward_mean + penalty * drop
    return jnp.where(jnp.isfinite(fitness), fitness, INVALID_FITNESS)


def repair_threshold(settings: CMAESSettings, ll_reference):
    """The smallest LL a repaired candidate may have: LL₀ − tolerance, plus ``REPAIR_MARGIN`` so
    float rounding cannot tip a repaired model over the edge."""
    return ll_reference - settings.tolerance + REPAIR_MARGIN


def repair_to_constraint(points, ll_of: Callable, threshold, steps: int = REPAIR_STEPS):
    """Pulls each candidate back along its ray to the base model until it meets the LL constraint.

    points: search points with a leading candidate axis C (a pytree, z = 0 is the base model);
    ll_of(points) -> LL [C]; threshold: the smallest LL allowed (LL₀ − tolerance, which z = 0
    meets). Returns (t·z, t [C]) with t = 1 where z already meets it, else the largest t found by
    ``steps`` bisection halvings of [0, 1] among those that meet it (t = 0 at worst; a NaN LL
    counts as a violation)."""
    count = jax.tree.leaves(points)[0].shape[0]

    def scaled(t):
        return jax.tree.map(lambda z: z * t.reshape((-1,) + (1,) * (z.ndim - 1)).astype(z.dtype), points)

    def halve(_, bounds):
        feasible_t, infeasible_t = bounds
        middle = 0.5 * (feasible_t + infeasible_t)
        ok = ll_of(scaled(middle)) >= threshold
        return jnp.where(ok, middle, feasible_t), jnp.where(ok, infeasible_t, middle)

    feasible_t, _ = jax.lax.fori_loop(0, steps, halve, (jnp.zeros(count), jnp.ones(count)))
    t = jnp.where(ll_of(points) >= threshold, 1.0, feasible_t)
    return scaled(t), t


@struct.dataclass
class AttackState:
    """CMA-ES state plus our own best-so-far record: the best search point (a δ, or z of a
    ``SearchSpace``) and its fitness, reward and LL."""

    es_state: object
    best_delta: object
    best_fitness: jax.Array
    best_reward: jax.Array
    best_ll: jax.Array


@struct.dataclass
class GenerationLog:
    """Per-generation numbers of the convergence curve (each [] per generation).

    gen_best_*: the generation's lowest-fitness candidate; mean_fitness / feasible_fraction:
    over the population (feasible = no LL penalty); best_fitness: best so far; step_size: σ;
    repair_scale: the population's mean repair factor t (1 under ``constraint = "penalty"``)."""

    gen_best_fitness: jax.Array
    gen_best_reward: jax.Array
    gen_best_ll: jax.Array
    mean_fitness: jax.Array
    feasible_fraction: jax.Array
    best_fitness: jax.Array
    step_size: jax.Array
    repair_scale: jax.Array


def make_cmaes_attack(evaluate: Callable, template: LastLayer, settings: CMAESSettings,
                      num_trials: int, ll_reference, ll_of: Callable | None = None):
    """CMA-ES over last-layer perturbations.

    evaluate(deltas [C], trial_keys [K]) -> (rewards [C, K], ll [C]) (``make_candidate_evaluator``),
    called between two jitted halves of a generation, so pass it jitted (``jax.jit`` or
    ``population.jit_sharded`` to spread the candidates over devices); template: a δ with the
    output layer's shapes; ll_of(deltas [C]) -> LL [C], needed by ``settings.constraint =
    "repair"``. Returns ``(es, init, generation)``: ``init(key) -> AttackState`` and
    ``generation(state, key) -> (state, GenerationLog)`` (ask and repair, evaluate, tell).
    """
    from evosax.algorithms import CMA_ES

    repair = settings.constraint == "repair"
    if repair and ll_of is None:
        raise ValueError('cmaes.constraint = "repair" needs ll_of, the LL of a batch of candidates')

    es = CMA_ES(population_size=settings.population_size, solution=template)
    es_params = es.default_params.replace(std_init=jnp.asarray(settings.sigma, jnp.float32))

    def init(key) -> AttackState:
        zero = jax.tree.map(jnp.zeros_like, template)
        with jax.numpy_rank_promotion("allow"):  # evosax broadcasts [D] + [C, D] implicitly
            es_state = es.init(key, zero, es_params)
        return AttackState(es_state=es_state, best_delta=zero,
                           best_fitness=jnp.asarray(jnp.inf), best_reward=jnp.asarray(jnp.nan),
                           best_ll=jnp.asarray(jnp.nan))

    @jax.jit
    def propose(state: AttackState, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        with jax.numpy_rank_promotion("allow"):  # evosax broadcasts [D] + [C, D] implicitly
            population, es_state = es.ask(ask_key, state.es_state, es_params)
        if repair:  # Baldwinian: CMA-ES is told its own points, the repaired ones are scored
            scored, scale = repair_to_constraint(population, ll_of, repair_threshold(settings, ll_reference))
        else:
            scored, scale = population, jnp.ones(settings.population_size)
        return population, es_state, scored, scale, jax.random.split(eval_key, num_trials), tell_key

    def generation(state: AttackState, key) -> tuple[AttackState, GenerationLog]:
        population, es_state, scored, scale, trial_keys, tell_key = propose(state, key)
        rewards, ll = evaluate(scored, trial_keys)
        return record(state, population, es_state, scored, scale, rewards, ll, tell_key)

    @jax.jit
    def record(state: AttackState, population, es_state, scored, scale, rewards, ll, tell_key):
        reward_mean = rewards.mean(-1)
        fitness = attack_fitness(reward_mean, ll, ll_reference, settings.penalty, settings.tolerance)
        with jax.numpy_rank_promotion("allow"):
            es_state, _ = es.tell(tell_key, population, fitness, es_state, es_params)
        i = jnp.argmin(fitness)
        improved = fitness[i] < state.best_fitness
        pick = lambda new, old: jnp.where(improved, new, old)
        state = AttackState(
            es_state=es_state,
            best_delta=jax.tree.map(lambda p, old: pick(p[i], old), scored, state.best_delta),
            best_fitness=pick(fitness[i], state.best_fitness),
            best_reward=pick(reward_mean[i], state.best_reward),
            best_ll=pick(ll[i], state.best_ll))
        feasible = ll >= ll_reference - settings.tolerance
        log = GenerationLog(gen_best_fitness=fitness[i], gen_best_reward=reward_mean[i],
                            gen_best_ll=ll[i], mean_fitness=fitness.mean(),
                            feasible_fraction=feasible.mean(), best_fitness=state.best_fitness,
                            step_size=es_state.std, repair_scale=scale.mean())
        return state, log

    return es, init, generation


def run_cmaes(key, evaluate: Callable, template: LastLayer, settings: CMAESSettings,
              num_trials: int, ll_reference, log: Callable[[str], None] = lambda s: None,
              ll_of: Callable | None = None):
    """Runs ``settings.generations`` CMA-ES generations from δ = 0 (``make_cmaes_attack``).

    Returns (final AttackState, history: dict of [G] numpy arrays (GenerationLog fields),
    final CMA-ES mean δ, repaired like a candidate under ``constraint = "repair"``)."""
    es, init, generation = make_cmaes_attack(evaluate, template, settings, num_trials, ll_reference, ll_of)
    init_key, run_key = jax.random.split(key)
    state = init(init_key)
    logs = []
    for g in range(settings.generations):
        t = time.perf_counter()
        state, entry = generation(state, jax.random.fold_in(run_key, g))
        entry = jax.device_get(entry)
        logs.append(entry)
        log(f"  generation {g + 1}/{settings.generations}: best reward {float(entry.gen_best_reward):.2f} "
            f"LL {float(entry.gen_best_ll):.4f} fitness {float(entry.gen_best_fitness):.2f} "
            f"(best so far {float(entry.best_fitness):.2f}, σ {float(entry.step_size):.4g}, "
            + (f"repair t {float(entry.repair_scale):.3f}, " if settings.constraint == "repair" else "")
            + f"{time.perf_counter() - t:.1f}s)")
    history = {f.name: np.asarray([getattr(e, f.name) for e in logs], np.float64)
               for f in dataclasses.fields(GenerationLog)}
    with jax.numpy_rank_promotion("allow"):
        mean = es.get_mean(state.es_state)
    if settings.constraint == "repair":
        repaired, _ = repair_to_constraint(jax.tree.map(lambda z: z[None], mean), ll_of,
                                           repair_threshold(settings, ll_reference))
        mean = jax.tree.map(lambda z: z[0], repaired)
    return state, history, mean
