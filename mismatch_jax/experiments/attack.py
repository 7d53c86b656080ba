"""Adversarial attack on a dynamics model's controller performance (Lambert et al. 2020, §4.3,
Fig. 6–7).

Starting from a trained model, CMA-ES (evosax 0.3.2) fine-tunes **only the last layer** (the
weights ``w [E, hidden, out]`` and biases ``b [E, out]`` of the output layer, all E members) so
that the model's controller earns *less* reward in the true environment while its one-step
validation log-likelihood does not drop. The search variable is the perturbation
``δ = (δw, δb)`` added to the original last layer (``cmaes.search_space = "full"``, the paper),
or a point z of a smaller space that ``SearchSpace.expand`` maps to δ: the least-excited
directions of the layer's input on the data ("low_variance"), all directions scaled to move the
predictions equally ("whitened"), or the output biases in predicted-σ units ("output_bias").
CMA-ES starts at zero with step size ``cmaes.sigma`` (that space's units). The base model is
trained here, loaded (``model_path``) or, as in the paper, one member of the final PETS model
(``base_model = "pets_member"``). CMA-ES minimises

    fitness(δ) = R̄(δ) + penalty · max(0, LL₀ − tolerance − LL(δ))

* ``R̄(δ)``: mean episode reward of ``evaluation.trials`` CEM-MPC episodes in the true env driven
  by the perturbed model. All candidates of a generation share the same trial keys (common
  random numbers, so candidates are ranked on the same start states and planner noise); every
  generation draws fresh keys, so the search cannot over-fit one set of episodes.
* ``LL(δ)``: mean one-step log-likelihood (nats, original units,
  ``models.one_step_log_likelihood``) on the validation split of the attack dataset;
  ``LL₀`` is the original model's. ``penalty`` is in reward units per nat ("a large penalty if
  the validation likelihood drops"); ``tolerance`` (default 0) is an allowed drop in nats.
* Non-finite fitness (a diverged rollout) is replaced by +1e9 so CMA-ES ranks it last.

``cmaes.constraint`` chooses how the LL constraint is enforced. "penalty" (default, the paper)
ranks candidates by the fitness above. "repair" pulls every candidate back along its ray to the
base model before it is evaluated: z → t·z with the largest t ∈ [0, 1] (bisection,
``REPAIR_STEPS`` halvings on the exact LL) such that LL(t·z) ≥ LL₀ − tolerance (+
``REPAIR_MARGIN`` so float rounding cannot tip a repaired model over the edge), so every
evaluated model satisfies the constraint and CMA-ES ranks on reward alone (a Baldwinian repair:
CMA-ES keeps its own points, the repaired ones are scored, recorded and returned). With a
penalty most candidates of a full-space search land outside the thin LL-feasible set and the
search spends its generations walking back to it; repair spends them on reward.

The whole population is evaluated in ONE vmapped call (candidates × trials episodes, and the LL
vmapped over candidates); one generation (ask → evaluate → tell) is one jitted function. The
generation loop stays in Python because a generation is seconds of work (hundreds of sequential
MPC steps), so dispatch costs nothing and we can log progress per generation.

Because the best fitness over generations is a minimum over noisy estimates, "before" and
"after" rewards are re-measured on ``evaluation.final_rounds × evaluation.trials`` fresh
episodes for the original model, the best candidate and the final CMA-ES mean (evaluated through
the same compiled population evaluator, padded to the CMA-ES population).

Models are saved and loaded as orbax checkpoints (``models.checkpoint``): ``original_model/`` and
``attacked_model/`` next to ``attack.json``, reusable as ``model_path`` of a later attack.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mismatch_jax import models
from mismatch_jax.analysis.attack import plot_convergence
from mismatch_jax.errors import InputError
from mismatch_jax.experiments.study_models import (STUDY_MODEL, DataSettings, build_dataset,
                                                   make_episode_evaluator, pets_runs_of, train_model)
from mismatch_jax.config_io import Schema, load_toml, setting, to_dict
from mismatch_jax.envs.registry import check_env
from mismatch_jax.files import check_writable, write_json
from mismatch_jax.models.checkpoint import load_model, save_model
from mismatch_jax.models.core import ModelConfig
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import EpisodeSettings, make_planner
from mismatch_jax.population import jit_sharded, over_population
from mismatch_jax.train.config import TrainingSection

TRAIN_SALT = 0xA77A  # fold_in salts separating the attack's random streams
CMA_SALT = 0xC4A
FINAL_SALT = 0xF1A1
INVALID_FITNESS = 1e9
REPAIR_STEPS = 16  # bisection halvings of the repair scale t (resolution 2⁻¹⁶)
REPAIR_MARGIN = 1e-5  # nats kept inside the LL constraint: more than float32 rounding of a mean LL
WHITEN_FLOOR = 1e-6  # smallest eigenvalue a whitened direction is scaled by, relative to the largest


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
    candidate back towards the base model until it meets the LL constraint (module docstring).
    """

    population_size: int = setting(16, ge=4)
    generations: int = setting(50, ge=1)
    sigma: float = setting(0.01, gt=0.0)
    penalty: float = setting(1000.0, ge=0.0)
    tolerance: float = setting(0.0, ge=0.0)
    search_space: Literal["full", "low_variance", "whitened", "output_bias"] = "full"
    subspace_rank: int = setting(16, ge=1)
    constraint: Literal["penalty", "repair"] = "penalty"


@dataclasses.dataclass(frozen=True)
class AttackEvaluation(EpisodeSettings):
    """Episodes in the true env: ``trials`` per candidate and generation; the final
    before/after comparison uses ``final_rounds × trials`` fresh episodes per model.
    episode_length 0 = the env's episode length."""

    final_rounds: int = setting(2, ge=1)


@dataclasses.dataclass(frozen=True)
class AttackConfig(Schema):
    """One adversarial attack run (``mismatch-jax attack CONFIG``).

    base_model: "trained" trains a fresh model (``[model]``, ``[training]`` on ``[data]``);
    "pets_member" takes member ``pets_member`` of the final model of the PETS run behind
    ``[data.pets]`` (seed 0) as a P (or D) model — the paper's base, "a P dynamics model from
    the last trial of a PETS run" — and ignores ``[model]`` / ``[training]``.
    model_path: "" or a model directory written by ``models.checkpoint.save_model`` (its
    ModelConfig replaces ``[model]``; needs base_model = "trained").
    """

    env: str = "cartpole_swingup"
    name: str = "attack"
    seed: int = setting(0, ge=0)
    out_dir: str = "runs/attack"
    model_path: str = ""
    base_model: Literal["trained", "pets_member"] = "trained"
    pets_member: int = setting(0, ge=0)
    model: ModelConfig = STUDY_MODEL
    data: DataSettings = DataSettings()
    training: TrainingSection = TrainingSection()
    cem: CEMConfig = CEMConfig(horizon=25, population_size=400, num_elites=40)
    evaluation: AttackEvaluation = AttackEvaluation()
    cmaes: CMAESSettings = CMAESSettings()

    def check(self):
        check_env(self.env)
        self.training.fixed("learning_rate")
        self.training.fixed("weight_decay")
        if self.base_model == "pets_member":
            if self.model_path:
                raise ValueError("model_path and base_model = \"pets_member\" both name the base model; "
                                  "set one of them")
            if self.data.kind not in ("on_policy", "expert"):
                raise ValueError(f"base_model = \"pets_member\" needs the PETS run of data.kind "
                                  f"\"on_policy\" or \"expert\", got {self.data.kind!r}")


def load_attack_config(path) -> AttackConfig:
    """Reads and validates an attack TOML (``ConfigError`` names the offending key)."""
    return load_toml(AttackConfig, path)


class LastLayer(NamedTuple):
    """Output layer of an ensemble model: w [E, hidden, out], b [E, out] (leading candidate
    axes [C] when stacked)."""

    w: jax.Array
    b: jax.Array


def last_layer(params: models.ModelParams) -> LastLayer:
    """The output layer of ``params``."""
    w, b = params.layers[-1]
    return LastLayer(w=w, b=b)


def perturb_last_layer(params: models.ModelParams, delta: LastLayer) -> models.ModelParams:
    """params with δ added to its output layer (every other parameter unchanged)."""
    w, b = params.layers[-1]
    return params.replace(layers=params.layers[:-1] + ((w + delta.w, b + delta.b),))


def zero_delta(params: models.ModelParams) -> LastLayer:
    """δ = 0 with the shapes of the output layer (CMA-ES's initial mean)."""
    return jax.tree.map(jnp.zeros_like, last_layer(params))


def low_variance_basis(config: models.ModelConfig, params: models.ModelParams,
                       normalizer: models.Normalizer, obs, action, rank: int,
                       whiten: bool = False) -> jax.Array:
    """The ``rank`` least-excited directions of the output layer's input on a dataset.

    The output layer reads φ = [hidden features, 1] (``models.hidden_features``, the 1 carries
    the bias). Over the rows (obs [N, d], action [N, a]) a change δ of the layer moves the
    normalised prediction by φᵀδ, whose mean square is δᵀ G δ with G = E[φ φᵀ]; the eigenvectors
    of G with the smallest eigenvalues span the changes the data (and so the likelihood) sees
    least. Returns U [E, hidden + 1, rank], orthonormal columns, smallest eigenvalue first;
    with ``whiten`` each column is divided by √λ (λ floored at ``WHITEN_FLOOR`` × the largest), so
    a unit step along any column moves the predictions on the data by the same mean square.
    """
    hidden = config.hidden_size
    if not 1 <= rank <= hidden + 1:
        raise InputError(f"cmaes.subspace_rank must be in [1, hidden_size + 1 = {hidden + 1}], got {rank}")
    x = models.normalize_inputs(normalizer, models.model_inputs(config, jnp.asarray(obs), jnp.asarray(action)))
    features = models.hidden_features(config, params, x)  # [E, N, H]
    phi = jnp.concatenate([features, jnp.ones(features.shape[:-1] + (1,), features.dtype)], -1)
    gram = jnp.einsum("enh,eng->ehg", phi, phi) / phi.shape[1]
    values, vectors = jnp.linalg.eigh(gram)  # ascending eigenvalues
    if whiten:
        floor = WHITEN_FLOOR * values[..., -1:]
        vectors = vectors / jnp.sqrt(jnp.maximum(values, floor))[..., None, :]
    return vectors[..., :rank]


class SearchSpace(NamedTuple):
    """What CMA-ES searches: ``template`` is the search variable at zero (a pytree; its shapes
    fix CMA-ES's dimension) and ``expand(z) -> LastLayer`` maps one point to the last-layer δ."""

    template: object
    expand: Callable


def make_search_space(settings: CMAESSettings, config: models.ModelConfig, params: models.ModelParams,
                      normalizer: models.Normalizer, obs, action) -> SearchSpace:
    """The search space ``settings.search_space`` names (see ``CMAESSettings``); obs/action: the
    rows that define the low-variance directions (the attack dataset)."""
    template = zero_delta(params)
    if settings.search_space == "full":
        return SearchSpace(template, lambda delta: delta)
    if settings.search_space == "output_bias":
        return _output_bias_space(config, params, normalizer, obs, action, template)
    whiten = settings.search_space == "whitened"
    rank = config.hidden_size + 1 if whiten else settings.subspace_rank
    basis = low_variance_basis(config, params, normalizer, obs, action, rank, whiten)
    hidden, outputs = template.w.shape[1], template.w.shape[2]
    attacked = config.target_dim  # the mean columns come first (logvar follows for P / PE)

    def expand(z: jax.Array) -> LastLayer:
        change = jnp.einsum("ehk,eko->eho", basis, z)  # [E, H + 1, target_dim]
        change = jnp.pad(change, ((0, 0), (0, 0), (0, outputs - attacked)))
        return LastLayer(w=change[:, :hidden], b=change[:, hidden])

    return SearchSpace(jnp.zeros((config.ensemble_size, rank, attacked)), expand)


def _output_bias_space(config, params, normalizer, obs, action, template: LastLayer) -> SearchSpace:
    """z [E, outputs] shifts the output biases: the mean columns in units of the model's median
    predicted standard deviation on the rows (so z_d = 1 moves that prediction by about one
    predicted σ, ≈ ½ nat of LL), the log-variance columns (P / PE) in nats."""
    x = models.normalize_inputs(normalizer, models.model_inputs(config, jnp.asarray(obs), jnp.asarray(action)))
    _, logvar = models.apply_normalized(config, params, x)  # [E, N, target_dim]
    mean_scale = jnp.median(jnp.exp(0.5 * logvar), axis=1) if config.probabilistic else jnp.ones_like(logvar[:, 0])
    scale = mean_scale if not config.probabilistic else jnp.concatenate([mean_scale, jnp.ones_like(mean_scale)], -1)

    def expand(z: jax.Array) -> LastLayer:
        return LastLayer(w=jnp.zeros_like(template.w), b=z * scale)

    return SearchSpace(jnp.zeros_like(template.b), expand)


def pets_member_model(data: DataSettings, env_name: str, seed: int, env, member: int, log=print):
    """Member ``member`` of the final model of the PETS run behind ``data`` (its first seed) as a
    one-member model: (ModelConfig P or D, params, normalizer)."""
    from mismatch_jax.sweep.study_data import StudyData, pets_models

    runs = pets_runs_of(data, env_name, seed, env, log)
    request = StudyData(data, (data.kind,), env_name, seed, data.validation_fraction)
    params, normalizer = jax.tree.map(lambda a: a[0], pets_models(request, env, runs))
    pets_config = dataclasses.replace(data.pets, env=env_name).model_config(env)
    if member >= pets_config.ensemble_size:
        raise InputError(f"pets_member = {member}, but the PETS model has {pets_config.ensemble_size} "
                         f"members; pick one in [0, {pets_config.ensemble_size - 1}]")
    one = params.replace(layers=tuple((w[member:member + 1], b[member:member + 1]) for w, b in params.layers))
    kind = "P" if pets_config.probabilistic else "D"
    return dataclasses.replace(pets_config, kind=kind, ensemble_size=1), one, normalizer


def make_candidate_evaluator(env, planner, model_config: models.ModelConfig,
                             base_params: models.ModelParams, normalizer: models.Normalizer,
                             validation, episode_length: int, env_params=None, layout=None,
                             num_shards: int = 1):
    """Scores last-layer perturbations of ``base_params``; ``layout`` lays out the candidates
    (``mismatch_jax.population``; None = "auto"), ``num_shards`` devices they are sharded over
    (jit the result with ``population.jit_sharded``).

    validation: (obs [V, d], action [V, a], next_obs [V, d]) — the LL constraint's data.
    Returns ``(evaluate_one, evaluate)``:
    ``evaluate_one(delta, trial_keys [K]) -> (rewards [K], ll [])`` for one candidate, and
    ``evaluate(deltas [C]-stacked LastLayer, trial_keys [K]) -> (rewards [C, K], ll [C])``,
    the same over candidates (one call runs C × K episodes). Pure; jit them.
    """
    val_obs, val_action, val_next = (jnp.asarray(a) for a in validation)
    episodes = make_episode_evaluator(env, planner, episode_length, env_params)

    def evaluate_one(delta: LastLayer, trial_keys: jax.Array):
        params = perturb_last_layer(base_params, delta)
        ll = models.one_step_log_likelihood(model_config, params, normalizer, val_obs, val_action, val_next)
        return episodes(params, normalizer, trial_keys), ll

    evaluate = over_population(jax.vmap(evaluate_one, in_axes=(0, None)), layout, shared=(1,),
                               num_shards=num_shards, width=model_config.hidden_size, per_model=evaluate_one)

    return evaluate_one, evaluate


def attack_fitness(reward_mean: jax.Array, ll: jax.Array, ll_reference, penalty, tolerance=0.0):
    """CMA-ES fitness (minimised): reward + penalty · max(0, LL_ref − tolerance − LL).

    reward_mean [C], ll [C] → [C]; non-finite values become ``INVALID_FITNESS``."""
    drop = jnp.maximum(0.0, ll_reference - tolerance - ll)
    fitness = reward_mean + penalty * drop
    return jnp.where(jnp.isfinite(fitness), fitness, INVALID_FITNESS)


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
            scored, scale = repair_to_constraint(population, ll_of,
                                                 ll_reference - settings.tolerance + REPAIR_MARGIN)
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
                                           ll_reference - settings.tolerance + REPAIR_MARGIN)
        mean = jax.tree.map(lambda z: z[0], repaired)
    return state, history, mean


def _summary(rewards: np.ndarray) -> dict:
    rewards = np.asarray(rewards, np.float64)
    return {"mean": float(rewards.mean()), "std": float(rewards.std()), "trials": rewards.tolist()}


def run_attack(config: AttackConfig, out_dir=None, log: Callable[[str], None] = print) -> dict:
    """Trains (or loads) a model, attacks its last layer with CMA-ES, evaluates before/after on
    fresh episodes; writes attack.json, attack_convergence.png and the original_model/ and
    attacked_model/ checkpoints to ``out_dir`` (default ``config.out_dir``). Returns the JSON dict."""
    from mismatch_jax.envs import make

    out = Path(out_dir or config.out_dir)
    check_writable(out)
    started = time.perf_counter()
    env = make(config.env)
    length = config.evaluation.length(env)
    root = jax.random.key(config.seed)
    timings = {}

    t = time.perf_counter()
    dataset, notes = build_dataset(config.data, config.env, config.seed, env, log)
    timings["dataset_s"] = time.perf_counter() - t
    val = dataset.validation()
    validation = (val.obs, val.action, val.next_obs)

    t = time.perf_counter()
    if config.base_model == "pets_member":
        mcfg, params, norm = pets_member_model(config.data, config.env, config.seed, env,
                                               config.pets_member, log)
        source = {"pets_member": config.pets_member, "pets_trials": config.data.pets.num_trials}
        log(f"attack: base model = member {config.pets_member} of the final PETS model ({mcfg.kind}, "
            f"{mcfg.num_hidden_layers} × {mcfg.hidden_size})")
    elif config.model_path:
        mcfg, params, norm = load_model(config.model_path)
        if (mcfg.obs_dim, mcfg.action_dim) != (env.obs_dim, env.action_dim):
            raise InputError(f"model_path: the model's dims ({mcfg.obs_dim}, {mcfg.action_dim}) do not "
                             f"match env {config.env} ({env.obs_dim}, {env.action_dim})")
        source = {"model_path": str(config.model_path)}
    else:
        mcfg = config.model.for_env(env)
        log(f"attack: training a {mcfg.kind} model on {config.data.kind} data ({dataset.size} transitions)")
        params, norm, result = train_model(jax.random.fold_in(root, TRAIN_SALT), mcfg, config.training, dataset)
        source = {"trained_on": config.data.kind, "epochs_trained": int(result.epochs_trained[0]),
                  "best_epoch": int(result.best_epoch[0])}
    timings["model_s"] = time.perf_counter() - t

    planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
    # Candidates spread over the local devices (`mismatch-jax attack --devices 2` on a CPU) when
    # they divide the population; the final before/after batch is padded to the same size.
    devices = jax.local_devices()
    shards = len(devices) if config.cmaes.population_size % len(devices) == 0 else 1
    _, evaluate = make_candidate_evaluator(env, planner, mcfg, params, norm, validation, length,
                                           num_shards=shards)
    template = zero_delta(params)
    space = make_search_space(config.cmaes, mcfg, params, norm, dataset.obs, dataset.action)
    ll_original = float(models.one_step_log_likelihood(mcfg, params, norm, *validation))
    num_dims = sum(int(np.size(a)) for a in jax.tree.leaves(space.template))
    log(f"attack: original validation LL {ll_original:.4f}; CMA-ES over {num_dims} "
        f"{'last-layer parameters' if config.cmaes.search_space == 'full' else 'low-variance last-layer directions'}, "
        f"{config.cmaes.population_size} candidates × {config.evaluation.trials} trials per generation")

    t = time.perf_counter()
    evaluate_points = jit_sharded(lambda points, keys: evaluate(jax.vmap(space.expand)(points), keys), 2,
                                  shared=(1,), devices=devices[:shards])
    val_arrays = tuple(jnp.asarray(a) for a in validation)
    ll_of_points = jax.vmap(lambda z: models.one_step_log_likelihood(
        mcfg, perturb_last_layer(params, space.expand(z)), norm, *val_arrays))
    state, history, mean_point = run_cmaes(jax.random.fold_in(root, CMA_SALT), evaluate_points,
                                           space.template, config.cmaes, config.evaluation.trials,
                                           ll_original, log, ll_of=ll_of_points)
    best_delta, mean_delta = space.expand(state.best_delta), space.expand(mean_point)
    timings["cmaes_s"] = time.perf_counter() - t

    # Before/after on fresh episodes: [original, best, final mean] padded to the population size
    # so the compiled population evaluator is reused.
    t = time.perf_counter()
    pop = config.cmaes.population_size
    trio = [template, best_delta, mean_delta]
    batch = jax.tree.map(lambda *xs: jnp.stack(list(xs) + [xs[0]] * (pop - 3)), *trio)
    eval_jit = jit_sharded(evaluate, 2, shared=(1,), devices=devices[:shards])
    rounds = []
    for r in range(config.evaluation.final_rounds):
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(root, FINAL_SALT), r),
                                config.evaluation.trials)
        rewards, lls = jax.device_get(eval_jit(batch, keys))
        rounds.append(rewards[:3])
    final = np.concatenate(rounds, axis=1)  # [3, rounds × trials]
    timings["final_eval_s"] = time.perf_counter() - t
    lls = np.asarray(lls[:3], np.float64)

    attacked = perturb_last_layer(params, best_delta)
    save_model(out / "original_model", mcfg, params, norm, {"source": source})
    save_model(out / "attacked_model", mcfg, attacked, norm,
               {"source": source, "attack": "best CMA-ES candidate (last layer only)"})
    before, after, mean_after = (_summary(final[i]) for i in range(3))
    paths = None
    if config.data.kind in ("on_policy", "expert"):  # Fig. 6 along the best PETS trial
        from mismatch_jax.experiments.attack_paths import write_planned_paths
        paths = write_planned_paths(root, planner, {"original": (params, norm), "attacked": (attacked, norm)},
                                    pets_runs_of(config.data, config.env, config.seed, env, log), out)
    timings["total_s"] = time.perf_counter() - started
    tolerance = config.cmaes.tolerance
    report = {
        "name": config.name, "env": config.env, "config": to_dict(config), "model": dataclasses.asdict(mcfg),
        "model_source": source, "dataset": {"kind": config.data.kind, "size": dataset.size,
                                            "validation_rows": int(val.size), "notes": notes},
        "fitness": ("reward_mean of the candidate scaled back to ll >= ll_original - tolerance"
                    if config.cmaes.constraint == "repair"
                    else "reward_mean + penalty * max(0, ll_original - tolerance - ll)"),
        "constraint": config.cmaes.constraint,
        "num_attacked_parameters": num_dims, "search_space": config.cmaes.search_space,
        "base_reward": before["mean"], "attacked_reward": after["mean"], "base_ll": ll_original,
        "attacked_ll": float(lls[1]), "fresh_trials": int(final.shape[1]), "ll_tolerance": tolerance,
        "reward_ratio": after["mean"] / before["mean"] if before["mean"] else None,
        "target_met": bool(after["mean"] <= 0.7 * before["mean"] and lls[1] >= ll_original - tolerance),
        "planned_paths": None if paths is None else {k: paths[k] for k in ("largest_gap_step", "mean_abs_gap")},
        "ll_original": ll_original, "ll_attacked": float(lls[1]), "ll_final_mean": float(lls[2]),
        "reward_original": before, "reward_attacked": after, "reward_final_mean": mean_after,
        "search_best": {"fitness": float(state.best_fitness), "reward_mean": float(state.best_reward),
                        "ll": float(state.best_ll)},
        "convergence": {k: v.tolist() for k, v in history.items()},
        "timings": timings, "device_kind": jax.devices()[0].device_kind, "candidate_devices": shards,
    }
    write_json(out / "attack.json", report)
    plot_convergence(history, ll_original, before["mean"], after["mean"], float(lls[1]),
                     out / "attack_convergence.png", tolerance)
    log(f"attack: reward {before['mean']:.1f} → {after['mean']:.1f} "
        f"({config.evaluation.final_rounds * config.evaluation.trials} fresh trials), "
        f"LL {ll_original:.4f} → {float(lls[1]):.4f}; wrote {out}/attack.json")
    return report
