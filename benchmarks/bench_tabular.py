"""Benchmark: the Fig. 2a comparison (MnM, Q-learning, VMBPO; sampled mode) for N seeds in one
compiled JAX call vs a plain NumPy loop over the same seeds (``tests/tabular_reference.py``).

Prints one JSON object. Compile time is reported apart; the first JAX run is discarded; results
are block_until_ready'd. Usage:
  python benchmarks/bench_tabular.py --seeds 1000 --num-iters 100 [--numpy-seeds 1000]
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from mismatch_jax.envs import tabular as T
from mismatch_jax.experiments.tabular_figures import compare_methods

# The NumPy loop is the tests' reference implementation (tests/tabular_reference.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.tabular_reference import run_numpy  # noqa: E402

METHODS = ("mnm", "q_learning", "vmbpo")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--num-iters", type=int, default=100)
    parser.add_argument("--numpy-seeds", type=int, default=None,
                        help="seeds for the NumPy loop (default: same as --seeds)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    numpy_seeds = args.numpy_seeds or args.seeds
    mdp = T.gridworld()
    keys = jax.random.split(jax.random.key(0), args.seeds)

    t0 = time.perf_counter()
    first = jax.block_until_ready(compare_methods(mdp, METHODS, keys, args.num_iters,
                                                  track_bounds=False))
    compile_and_first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compare_methods(mdp, METHODS, keys, args.num_iters,
                                                    track_bounds=False))
        times.append(time.perf_counter() - t0)
    jax_run = min(times)

    t0 = time.perf_counter()
    numpy_final = {m: [] for m in METHODS}
    for seed in range(numpy_seeds):
        for method in METHODS:
            ref = run_numpy(method, mdp, seed=seed, num_iters=args.num_iters)
            numpy_final[method].append(float(np.exp(ref["log_expected_return"][-1])))
    numpy_time = time.perf_counter() - t0
    numpy_total_est = numpy_time * args.seeds / numpy_seeds

    result = {
        "benchmark": "tabular_fig2a_seeds",
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "cpu": platform.processor() or platform.machine(),
        "seeds": args.seeds, "num_iters": args.num_iters, "methods": list(METHODS),
        "jax_compile_plus_first_run_s": compile_and_first,
        "jax_run_s": jax_run, "jax_run_repeats_s": times,
        "numpy_seeds_timed": numpy_seeds, "numpy_loop_s": numpy_time,
        "numpy_loop_s_for_all_seeds": numpy_total_est,
        "numpy_loop_extrapolated": numpy_seeds != args.seeds,
        "speedup_run": numpy_total_est / jax_run,
        "final_return_mean_jax": {m: float(np.mean(out[m].expected_return[:, -1]))
                                  for m in METHODS},
        "final_return_mean_numpy": {m: float(np.mean(v)) for m, v in numpy_final.items()},
    }
    del first
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
