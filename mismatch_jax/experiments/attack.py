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
vmapped over candidates); one generation is ask (+ repair) | evaluate | tell, three jitted calls
(``attack_cmaes``), the evaluation sharded over the local devices when they divide the
candidates (``mismatch-jax attack --devices 2``). The generation loop stays in Python because a generation is seconds of work (hundreds of sequential
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
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

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
from mismatch_jax.population import devices_dividing, jit_sharded, over_population
from mismatch_jax.train.config import TrainingSection
# The search variable and the CMA-ES machinery live in their own modules; their public names are
# part of this module's interface (``attack.make_search_space``, ``attack.run_cmaes``, …).
from mismatch_jax.experiments.attack_cmaes import (INVALID_FITNESS, REPAIR_MARGIN, REPAIR_STEPS,
                                                   AttackState, CMAESSettings, GenerationLog, attack_fitness,
                                                   make_cmaes_attack, repair_threshold, repair_to_constraint,
                                                   run_cmaes)
from mismatch_jax.experiments.attack_space import (WHITEN_FLOOR, LastLayer, SearchSpace, last_layer,
                                                   low_variance_basis, make_candidate_ll, make_search_space,
                                                   matched_random_points, perturb_last_layer, point_norm,
                                                   zero_delta)

__all__ = ["AttackConfig", "AttackEvaluation", "load_attack_config", "pets_member_model",
           "make_candidate_evaluator", "run_attack",
           # re-exported from attack_cmaes / attack_space
           "INVALID_FITNESS", "REPAIR_MARGIN", "REPAIR_STEPS", "AttackState", "CMAESSettings", "GenerationLog",
           "attack_fitness", "make_cmaes_attack", "repair_threshold", "repair_to_constraint", "run_cmaes",
           "WHITEN_FLOOR", "LastLayer", "SearchSpace", "last_layer", "low_variance_basis", "make_candidate_ll",
           "make_search_space", "matched_random_points", "perturb_last_layer", "point_norm", "zero_delta"]

TRAIN_SALT = 0xA77A  # fold_in salts separating the attack's random streams
CMA_SALT = 0xC4A
FINAL_SALT = 0xF1A1
BASELINE_SALT = 0xBA5E


@dataclasses.dataclass(frozen=True)
class AttackEvaluation(EpisodeSettings):
    """Episodes in the true env: ``trials`` per candidate and generation; the final
    before/after comparison uses ``final_rounds × trials`` fresh episodes per model.
    episode_length 0 = the env's episode length. path_baselines: random last-layer changes of
    the search space, each scaled to the attacked model's LL change, planned along the expert path
    with the same keys as Fig. 6's two models — the baseline of the attack's planned-action gap
    (0 = none)."""

    final_rounds: int = setting(2, ge=1)
    path_baselines: int = setting(4, ge=0)


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
                             validation, episode_length: int, env_params=None, layout=None):
    """Scores last-layer perturbations of ``base_params``; ``layout`` lays out the candidates
    (``mismatch_jax.population``; None = "auto"); jit ``evaluate`` with ``population.jit_sharded``
    to split the candidates over devices.

    validation: (obs [V, d], action [V, a], next_obs [V, d]) — the LL constraint's data.
    Returns ``(evaluate_one, evaluate)``:
    ``evaluate_one(delta, trial_keys [K]) -> (rewards [K], ll [])`` for one candidate, and
    ``evaluate(deltas [C]-stacked LastLayer, trial_keys [K]) -> (rewards [C, K], ll [C])``,
    the same over candidates (one call runs C × K episodes). Pure; jit them.
    """
    episodes = make_episode_evaluator(env, planner, episode_length, env_params)
    candidate_ll = make_candidate_ll(model_config, base_params, normalizer, validation)

    def evaluate_one(delta: LastLayer, trial_keys: jax.Array):
        return episodes(perturb_last_layer(base_params, delta), normalizer, trial_keys), candidate_ll(delta)

    evaluate = over_population(jax.vmap(evaluate_one, in_axes=(0, None)), layout, shared=(1,),
                               width=model_config.hidden_size, per_model=evaluate_one)

    return evaluate_one, evaluate


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
    devices = devices_dividing(config.cmaes.population_size)
    _, evaluate = make_candidate_evaluator(env, planner, mcfg, params, norm, validation, length)
    template = zero_delta(params)
    space = make_search_space(config.cmaes.search_space, config.cmaes.subspace_rank, mcfg, params, norm,
                              dataset.obs, dataset.action)
    ll_original = float(models.one_step_log_likelihood(mcfg, params, norm, *validation))
    num_dims = sum(int(np.size(a)) for a in jax.tree.leaves(space.template))
    log(f"attack: original validation LL {ll_original:.4f}; CMA-ES over {num_dims} "
        f"{'last-layer parameters' if config.cmaes.search_space == 'full' else 'low-variance last-layer directions'}, "
        f"{config.cmaes.population_size} candidates × {config.evaluation.trials} trials per generation")

    t = time.perf_counter()
    evaluate_points = jit_sharded(lambda points, keys: evaluate(jax.vmap(space.expand)(points), keys), 2,
                                  shared=(1,), devices=devices)
    candidate_ll = make_candidate_ll(mcfg, params, norm, validation)
    ll_of_points = jax.vmap(lambda z: candidate_ll(space.expand(z)))
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
    eval_jit = jit_sharded(evaluate, 2, shared=(1,), devices=devices)
    rounds = []
    final_root = config.evaluation.salted(jax.random.fold_in(root, FINAL_SALT))
    for r in range(config.evaluation.final_rounds):
        keys = jax.random.split(jax.random.fold_in(final_root, r),
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
        baselines, baseline_info = None, None
        if config.evaluation.path_baselines:  # the gap's baseline: random changes costing the same LL
            points, scales, matched = matched_random_points(
                jax.random.fold_in(root, BASELINE_SALT), space.template, jax.jit(ll_of_points), float(lls[1]),
                ll_original, config.evaluation.path_baselines, float(point_norm(state.best_delta)))
            deltas = jax.vmap(space.expand)(points)
            baselines = {f"random_{i}": (perturb_last_layer(params, jax.tree.map(lambda a: a[i], deltas)), norm)
                         for i in range(config.evaluation.path_baselines)}
            baseline_info = {"matched": matched, "attack_ll_change": float(lls[1]) - ll_original,
                             "ll_change": (np.asarray(ll_of_points(points), np.float64) - ll_original).tolist(),
                             "search_norm": np.asarray(scales, np.float64).tolist(),
                             "attack_search_norm": float(point_norm(state.best_delta))}
        paths = write_planned_paths(root, planner, {"original": (params, norm), "attacked": (attacked, norm)},
                                    pets_runs_of(config.data, config.env, config.seed, env, log), out,
                                    baselines, baseline_info)
        if "random_baseline" in paths:
            rb = paths["random_baseline"]
            log(f"attack: planned-action gap along the expert path {paths['mean_abs_gap']:.3f} (attacked vs "
                f"original); random changes at the same LL ({rb['matched']}): {rb['mean_abs_gap_mean']:.3f} "
                f"[{rb['mean_abs_gap_range'][0]:.3f}, {rb['mean_abs_gap_range'][1]:.3f}]")
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
        "planned_paths": None if paths is None else {
            **{k: paths[k] for k in ("largest_gap_step", "mean_abs_gap")},
            **({} if "random_baseline" not in paths else {
                "random_baseline_mean_abs_gap": paths["random_baseline"]["mean_abs_gap"],
                "random_baseline_matched": paths["random_baseline"]["matched"],
                "random_baseline_ll_change": paths["random_baseline"]["ll_change"]})},
        "ll_original": ll_original, "ll_attacked": float(lls[1]), "ll_final_mean": float(lls[2]),
        "reward_original": before, "reward_attacked": after, "reward_final_mean": mean_after,
        "search_best": {"fitness": float(state.best_fitness), "reward_mean": float(state.best_reward),
                        "ll": float(state.best_ll)},
        "convergence": {k: v.tolist() for k, v in history.items()},
        "timings": timings, "device_kind": jax.devices()[0].device_kind, "candidate_devices": len(devices),
    }
    write_json(out / "attack.json", report)
    plot_convergence(history, ll_original, before["mean"], after["mean"], float(lls[1]),
                     out / "attack_convergence.png", tolerance)
    log(f"attack: reward {before['mean']:.1f} → {after['mean']:.1f} "
        f"({config.evaluation.final_rounds * config.evaluation.trials} fresh trials), "
        f"LL {ll_original:.4f} → {float(lls[1]):.4f}; wrote {out}/attack.json")
    return report
