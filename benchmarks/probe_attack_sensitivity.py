"""How far can the attack's base model move before its controller notices? (issue: the mismatch,
shown; REPRODUCTION.md, Fig. 6-7)

Perturbs the output layer of an attack config's base model at random in each search space of
``experiments.attack`` and prints one JSON object: per perturbation the episode rewards (full
episodes, the config's controller, common random numbers) and the validation LL change. It
tells whether an LL-preserving change of the last layer moves reward at all — the premise of
the CMA-ES attack.

    python benchmarks/probe_attack_sensitivity.py sweeps/attack_cpu.toml --trials 2 \
        > benchmarks/results/attack_sensitivity_d.json
    python benchmarks/probe_attack_sensitivity.py sweeps/attack_cpu_pets_member.toml --trials 2 \
        > benchmarks/results/attack_sensitivity_pets_member.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# (search space, perturbation scale in that space's units, random draws)
RANDOM_CASES = [("full", 0.001, 3), ("full", 0.003, 3), ("full", 0.01, 3), ("full", 0.03, 3),
                ("low_variance", 0.3, 3), ("low_variance", 1.0, 3), ("low_variance", 3.0, 3),
                ("whitened", 0.003, 3), ("whitened", 0.01, 3)]
BIAS_SHIFTS = [1.0, 3.0]  # one mean output at a time, in predicted-σ units (output_bias space)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()

    from mismatch_jax import models
    from mismatch_jax.envs import make
    from mismatch_jax.experiments import attack
    from mismatch_jax.experiments.study_models import build_dataset, train_model
    from mismatch_jax.planning.mpc import make_planner

    quiet = lambda s: None
    config = attack.load_attack_config(args.config)
    env = make(config.env)
    dataset, _ = build_dataset(config.data, config.env, config.seed, env, quiet)
    val = dataset.validation()
    validation = (val.obs, val.action, val.next_obs)
    if config.base_model == "pets_member":
        mcfg, params, norm = attack.pets_member_model(config.data, config.env, config.seed, env,
                                                      config.pets_member, quiet)
    else:
        mcfg = config.model.for_env(env)
        params, norm, _ = train_model(jax.random.fold_in(jax.random.key(config.seed), attack.TRAIN_SALT),
                                      mcfg, config.training, dataset)
    planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
    _, evaluate = attack.make_candidate_evaluator(env, planner, mcfg, params, norm, validation,
                                                  config.evaluation.length(env))
    evaluate = jax.jit(evaluate)
    keys = jax.random.split(jax.random.key(config.seed + 101), args.trials)
    ll_base = float(models.one_step_log_likelihood(mcfg, params, norm, *validation))

    cases, deltas = [], []
    draw = jax.random.key(config.seed + 202)
    for space_name, scale, draws in RANDOM_CASES:
        settings = dataclasses.replace(config.cmaes, search_space=space_name)
        space = attack.make_search_space(settings, mcfg, params, norm, dataset.obs, dataset.action)
        for i in range(draws):
            draw, k = jax.random.split(draw)
            z = jax.tree.map(lambda t: scale * jax.random.normal(k, t.shape), space.template)
            deltas.append(space.expand(z))
            cases.append({"space": space_name, "scale": scale, "draw": i})
    bias = attack.make_search_space(dataclasses.replace(config.cmaes, search_space="output_bias"),
                                    mcfg, params, norm, dataset.obs, dataset.action)
    for shift in BIAS_SHIFTS:
        for dim in range(mcfg.target_dim):
            for sign in (1.0, -1.0):
                deltas.append(bias.expand(jnp.zeros_like(bias.template).at[:, dim].set(sign * shift)))
                cases.append({"space": "output_bias", "scale": sign * shift, "output": dim})
    deltas.append(attack.zero_delta(params))
    cases.append({"space": "none", "scale": 0.0})
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *deltas)

    start = time.perf_counter()
    rewards, lls = jax.device_get(evaluate(batch, keys))
    wall = time.perf_counter() - start
    for case, r, ll in zip(cases, np.asarray(rewards), np.asarray(lls)):
        case.update(rewards=np.round(r, 1).tolist(), reward_mean=round(float(r.mean()), 2),
                    ll_change=round(float(ll) - ll_base, 4))
    report = {"config": args.config, "base_model": config.base_model, "model": f"{mcfg.kind} "
              f"{mcfg.num_hidden_layers}x{mcfg.hidden_size}", "controller": dataclasses.asdict(config.cem),
              "trials": args.trials, "ll_base": round(ll_base, 4), "ll_tolerance": config.cmaes.tolerance,
              "episodes": int(np.size(rewards)), "wall_s_including_compile": round(wall, 1),
              "load_average": os.getloadavg(), "device_kind": jax.devices()[0].device_kind, "cases": cases}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
