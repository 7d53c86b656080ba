"""PETS end to end: per-trial rewards of the CPU quickstart and the paper configuration.

    python benchmarks/bench_pets.py --configs cpu            # minutes on a 2-core CPU
    python benchmarks/bench_pets.py --configs paper          # 5 seeds × 15 trials: GPU-sized

Each config runs all its seeds in one jitted ``run_seeds`` (compile timed apart via
lower().compile(); the run is timed once: a PETS run is long enough that dispatch noise does not
matter and repeating it would double the cost). Prints JSON with per-seed/per-trial rewards and
whether the target (paper ≥ 170 within 15 trials, CPU ≥ 150) is reached by every seed / by the
seed mean.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from mismatch_jax.agents.config import load_pets_config
from mismatch_jax.agents.pets import make_pets, seed_keys
from mismatch_jax.envs.registry import make

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "cpu": (os.path.join(ROOT, "sweeps", "pets_cartpole_cpu.toml"), 150.0),
    "paper": (os.path.join(ROOT, "sweeps", "pets_cartpole_paper.toml"), 170.0),
}


def bench(name, seeds=None, trials=None):
    path, target = CONFIGS[name]
    config = load_pets_config(path)
    if seeds is not None:
        config = dataclasses.replace(config, num_seeds=seeds)
    if trials is not None:
        config = dataclasses.replace(config, num_trials=trials)
    env = make(config.env)
    pets = make_pets(config, env)
    keys = seed_keys(config)
    t = time.perf_counter()
    compiled = jax.jit(pets.run_seeds).lower(keys).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    result = jax.block_until_ready(compiled(keys))
    run_s = time.perf_counter() - t
    rewards = np.asarray(result.trial_rewards)  # [S, trials]
    best = rewards.max(axis=1)
    return {
        "config": name, "path": os.path.relpath(path, ROOT), "env": config.env,
        "num_seeds": config.num_seeds, "num_trials": config.num_trials, "target": target,
        "compile_s": compile_s, "run_s": run_s,
        "random_reward": np.asarray(result.random_reward).round(2).tolist(),
        "trial_rewards": rewards.round(2).tolist(),
        "mean_trial_rewards": rewards.mean(0).round(2).tolist(),
        "best_reward_per_seed": best.round(2).tolist(),
        "first_trial_reaching_target": [int(np.argmax(r >= target)) + 1 if (r >= target).any() else None
                                        for r in rewards],
        "every_seed_reaches_target": bool((best >= target).all()),
        "mean_reaches_target": bool(rewards.mean(0).max() >= target),
        "val_mse": np.asarray(result.metrics.val_mse).round(4).tolist(),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["cpu"], choices=sorted(CONFIGS))
    parser.add_argument("--seeds", type=int, default=None, help="override num_seeds")
    parser.add_argument("--trials", type=int, default=None, help="override num_trials")
    args = parser.parse_args()
    device = jax.devices()[0]
    report = {"device_kind": device.device_kind, "platform": device.platform, "jax": jax.__version__,
              "results": []}
    for name in args.configs:
        row = bench(name, args.seeds, args.trials)
        print(json.dumps(row), file=sys.stderr, flush=True)
        report["results"].append(row)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
