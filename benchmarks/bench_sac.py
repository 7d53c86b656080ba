"""SAC on Pendulum: the 5-seed acceptance run in one vmapped call, then S seeds vmapped vs S
sequential runs of the same (shorter) configuration.

    python benchmarks/bench_sac.py [--config sweeps/sac_pendulum.toml] [--seeds 5]
                                   [--compare-seeds 8] [--compare-steps 2000] [--no-compare]

Prints one JSON object:
* ``acceptance``: compile time (AOT lower + compile) apart from run time of ``jit(vmap(train))``
  over ``--seeds`` seeds with the config as given; env steps/s summed over seeds; the final
  evaluation return of each seed, their mean and whether it beats -200; the eval-return curve
  (mean over seeds) per evaluation interval. The run is long, so it is timed once (compilation
  is already excluded by the AOT compile).
* ``vmap_vs_sequential``: the same config shortened to ``--compare-steps`` env steps (warm-up
  200 steps, so most steps also update): one vmapped call over ``--compare-seeds`` seeds against
  that many sequential calls of the single-seed program; each program's first call is discarded.
"""

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import numpy as np

from mismatch_jax.agents import sac_config
from mismatch_jax.agents import sac_loop

ROOT = pathlib.Path(__file__).resolve().parents[1]


def timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def acceptance(config, num_seeds):
    config = dataclasses.replace(config, num_seeds=num_seeds)
    env = sac_config.make_env(config)
    keys = sac_config.seed_keys(config)
    train = jax.jit(jax.vmap(sac_loop.make_train(config, env)))
    t = time.perf_counter()
    compiled = train.lower(keys).compile()
    compile_s = time.perf_counter() - t
    (_, metrics), run_s = timed(compiled, keys)
    final = np.asarray(metrics.eval_return[:, -1])
    return {
        "num_seeds": num_seeds,
        "total_env_steps": config.total_env_steps,
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "env_steps_per_s": round(num_seeds * config.total_env_steps / run_s, 1),
        "final_eval_returns": [round(float(r), 1) for r in final],
        "final_eval_return_mean": round(float(final.mean()), 1),
        "final_eval_return_std": round(float(final.std()), 1),
        "solved_mean_gt_-200": bool(final.mean() > -200.0),
        "eval_return_curve_mean": [round(float(r), 1) for r in np.asarray(metrics.eval_return).mean(0)],
        "env_steps_curve": [int(s) for s in np.asarray(metrics.env_steps[0])],
        "final_alpha_mean": round(float(np.asarray(metrics.alpha[:, -1]).mean()), 4),
    }


def vmap_vs_sequential(config, num_seeds, steps):
    config = dataclasses.replace(config, total_env_steps=steps, eval_interval=steps // 2,
                                 learning_starts=200, num_seeds=num_seeds)
    env = sac_config.make_env(config)
    keys = sac_config.seed_keys(config)
    train = sac_loop.make_train(config, env)

    batched = jax.jit(jax.vmap(train)).lower(keys).compile()
    timed(batched, keys)  # discarded
    _, vmap_s = timed(batched, keys)

    single = jax.jit(train).lower(keys[0]).compile()
    timed(single, keys[0])  # discarded
    t = time.perf_counter()
    for k in keys:
        jax.block_until_ready(single(k))
    sequential_s = time.perf_counter() - t
    return {
        "num_seeds": num_seeds,
        "env_steps_per_seed": steps,
        "vmapped_s": round(vmap_s, 2),
        "sequential_s": round(sequential_s, 2),
        "speedup": round(sequential_s / vmap_s, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "sweeps" / "sac_pendulum.toml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--compare-seeds", type=int, default=8)
    parser.add_argument("--compare-steps", type=int, default=2000)
    parser.add_argument("--no-acceptance", action="store_true")
    parser.add_argument("--no-compare", action="store_true")
    args = parser.parse_args()

    config = sac_config.load_sac_config(args.config)
    device = jax.devices()[0]
    result = {
        "benchmark": "sac_pendulum",
        "config": args.config,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "num_devices": jax.device_count(),
        "hyperparameters": dataclasses.asdict(config),
    }
    if not args.no_acceptance:
        result["acceptance"] = acceptance(config, args.seeds)
        print(json.dumps(result["acceptance"]), flush=True)
    if not args.no_compare:
        result["vmap_vs_sequential"] = vmap_vs_sequential(config, args.compare_seeds, args.compare_steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
