"""Which CPU controller is competent on the cart-pole swing-up? (issue: the mismatch, shown)

Scores the PETS-trained expert model of a sweep config's datasets and an untrained population
model with several CEM settings on full episodes, and prints one JSON object: per setting the
rewards, successes and seconds per episode (compile apart). The PETS runs come from the sweep's
dataset cache (``mismatch-jax datasets CONFIG`` builds them).

    python benchmarks/probe_competence.py sweeps/cartpole_study_cpu.toml \
        --cem 20,100,10,3 --cem 25,200,20,4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--cem", action="append", default=[],
                        help="horizon,population,elites,iterations[,propagation] (repeatable)")
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()

    from mismatch_jax.envs import make
    from mismatch_jax.sweep import config as sweep_config
    from mismatch_jax.sweep.competence import CompetenceTarget, check_competence
    from mismatch_jax.sweep.study_data import StudyData, pets_models, pets_runs

    config = sweep_config.load(args.config)
    env = make(config.env)
    request = StudyData.of_sweep(config)
    runs = pets_runs(request, env, Path(config.datasets.cache_dir), print)
    params, normalizer = jax.tree.map(lambda a: a[0], pets_models(request, env, runs))
    expert_config = dataclasses.replace(config.datasets.pets, env=config.env).model_config(env)
    untrained_config = config.population.model_of("P", env)
    settings = args.cem or ["{},{},{},{},{}".format(config.cem.horizon, config.cem.population_size,
                                                    config.cem.num_elites, config.cem.num_iterations,
                                                    config.cem.propagation)]
    report = {"config": args.config, "load_start": os.getloadavg(),
              "pets_trial_rewards": runs["trial_rewards"].round(1).tolist(), "settings": {}}
    for text in settings:
        fields = text.split(",")
        horizon, population, elites, iterations = (int(x) for x in fields[:4])
        propagation = fields[4] if len(fields) > 4 else config.cem.propagation
        cem = dataclasses.replace(config.cem, horizon=horizon, population_size=population,
                                  num_elites=elites, num_iterations=iterations, propagation=propagation)
        start = time.perf_counter()
        result = check_competence(jax.random.key(config.seed), env, cem,
                                  config.evaluation.length(env), (params, normalizer), expert_config,
                                  untrained_config, CompetenceTarget(trials=args.trials))
        result["wall_s"] = round(time.perf_counter() - start, 1)
        report["settings"][text] = result
    report["load_end"] = os.getloadavg()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
