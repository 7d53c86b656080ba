"""Is the sweep's controller competent? Reward only says something about a model when the
controller that scores it can succeed with a good model and fails with a bad one.

Before a population is scored, the sweep's CEM controller (``[cem]``, ``[evaluation]``) plans
with two models on ``COMPETENCE_TRIALS`` full episodes each:

- the **expert** model: the final model of the PETS run that produced the expert data (the
  model whose trials *are* the expert episodes, so a competent controller should match them);
- an **untrained** model of the population's architecture (kind P, its initial weights).

The check passes when the expert model reaches ``expert_threshold`` in at least
``min_expert_successes`` of the trials and the untrained one stays below ``untrained_ceiling``
in every trial (Lambert et al. 2020's expert cart-pole data are episodes above 179 of 200).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from mismatch_jax import models
from mismatch_jax.envs.base import Env
from mismatch_jax.errors import InputError
from mismatch_jax.files import write_json
from mismatch_jax.planning.cem import CEMConfig
from mismatch_jax.planning.mpc import make_planner, mpc_episode
from mismatch_jax.sweep.config import COMPETENCE_TRIALS, CompetenceTarget  # noqa: F401 (re-exported)
from mismatch_jax.sweep.study_data import StudyData, pets_models, pets_runs

COMPETENCE_SALT = 0xC0_4E7E  # fold_in salt of the check's episode keys


def episode_rewards(key: jax.Array, env: Env, cem: CEMConfig, model_config: models.ModelConfig,
                    params, normalizer, trials: int, episode_length: int) -> tuple[np.ndarray, float, float]:
    """Rewards [trials] of CEM-MPC episodes with one model (params / normalizer unbatched), the
    trials run as one vmapped program → (rewards, compile_s, run_s)."""
    planner = make_planner(cem.for_env(env), model_config, env.reward_fn, env.termination_fn)

    def run(keys, p, n):
        return jax.vmap(lambda k: mpc_episode(k, env, planner, p, n, episode_length)[1])(keys)

    keys = jax.random.split(key, trials)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(keys, params, normalizer).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    rewards = np.asarray(jax.block_until_ready(compiled(keys, params, normalizer)))
    return rewards, compile_s, time.perf_counter() - start


def check_competence(key: jax.Array, env: Env, cem: CEMConfig, episode_length: int,
                     expert: tuple, expert_config: models.ModelConfig,
                     untrained_config: models.ModelConfig,
                     target: CompetenceTarget = CompetenceTarget(),
                     log: Callable[[str], None] = print) -> dict:
    """Scores ``expert`` = (params, normalizer) of ``expert_config`` and a freshly initialised
    model of ``untrained_config`` with controller ``cem`` → a JSON-ready dict (rewards per model,
    pass / fail per model and overall, seconds per episode with compile apart)."""
    expert_key, untrained_key, init_key = jax.random.split(key, 3)
    untrained = (models.init(init_key, untrained_config), models.identity_normalizer(untrained_config))
    report = {"controller": dataclasses.asdict(cem), "episode_length": episode_length,
              "target": dataclasses.asdict(target)}
    for name, run_key, config, (params, normalizer) in (
            ("expert", expert_key, expert_config, expert),
            ("untrained", untrained_key, untrained_config, untrained)):
        rewards, compile_s, run_s = episode_rewards(run_key, env, cem, config, params, normalizer,
                                                    target.trials, episode_length)
        report[name] = {"rewards": [round(float(r), 2) for r in rewards],
                        "model": f"{config.kind} {config.num_hidden_layers}x{config.hidden_size}"
                                 + (f" x{config.ensemble_size}" if config.ensemble_size > 1 else ""),
                        "compile_s": round(compile_s, 2),
                        "seconds_per_episode": round(run_s / target.trials, 3)}
    expert_rewards = np.asarray(report["expert"]["rewards"])
    successes = int((expert_rewards >= target.expert_threshold).sum())
    report["expert"]["successes"] = successes
    report["expert"]["passed"] = successes >= target.min_expert_successes
    report["untrained"]["passed"] = bool(np.all(np.asarray(report["untrained"]["rewards"]) < target.untrained_ceiling))
    report["passed"] = report["expert"]["passed"] and report["untrained"]["passed"]
    log(f"competence: expert ({report['expert']['model']}) rewards {report['expert']['rewards']}: "
        f"{successes}/{target.trials} >= {target.expert_threshold:g} "
        f"({'pass' if report['expert']['passed'] else 'FAIL'}, need {target.min_expert_successes})")
    log(f"competence: untrained ({report['untrained']['model']}) rewards {report['untrained']['rewards']}: "
        f"all < {target.untrained_ceiling:g}: {'pass' if report['untrained']['passed'] else 'FAIL'}")
    log(f"competence: {report['expert']['seconds_per_episode']} s per {episode_length}-step episode "
        f"with the expert model, {report['untrained']['seconds_per_episode']} s with a population model "
        "(one model, trials vmapped)")
    return report


def sweep_competence(config, env: Env, out_dir, log: Callable[[str], None] = print) -> dict | None:
    """The competence check of a sweep (``config.competence.enabled``), once per output
    directory: scores the final model of the sweep's (cached) PETS runs and an untrained
    population model with the sweep's controller; writes ``competence.json`` and returns it
    (the saved one on a resume; None when the check is off)."""
    target = config.competence
    if not target.enabled:
        return None
    path = Path(out_dir) / "competence.json"
    if path.is_file():
        report = json.loads(path.read_text())
        log(f"competence: checked before ({'pass' if report.get('passed') else 'FAIL'}; {path})")
        return report
    request = StudyData.of_sweep(config)
    if not {"expert", "on_policy"} & set(request.names):
        raise InputError("competence.enabled needs the PETS runs behind the expert / on_policy datasets; "
                          "add one of them to datasets.train or datasets.eval, or set competence.enabled = false")
    runs = pets_runs(request, env, Path(config.datasets.cache_dir), log)
    expert = jax.tree.map(lambda a: a[0], pets_models(request, env, runs))
    expert_config = dataclasses.replace(config.datasets.pets, env=config.env).model_config(env)
    key = jax.random.fold_in(jax.random.key(config.seed), COMPETENCE_SALT)
    report = check_competence(key, env, config.cem, config.evaluation.length(env), expert, expert_config,
                              config.population.model_of("P", env), target, log)
    report["pets_trial_rewards"] = np.round(np.asarray(runs["trial_rewards"]), 2).tolist()
    if not report["passed"]:
        log("competence: warning: the controller does not separate a good model from an untrained one "
            "here, so rewards carry little information about the models; see [cem] / [evaluation]")
    write_json(path, report)
    return report
