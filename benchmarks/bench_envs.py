"""Step throughput of the MuJoCo/brax environments: ``jit(vmap(scan(env.step)))``.

For each (env, backend, batch) the timed function runs ``steps`` transitions of ``batch`` parallel
environments with uniform random actions. The first call (trace + compile + run) is reported as
``compile_s`` and discarded; ``run_s`` is the median of ``repeats`` further calls (each
``block_until_ready``); ``env_steps_per_s = batch * steps / run_s``.

Usage (prints one JSON document on stdout):
    python benchmarks/bench_envs.py                       # swing-up + halfcheetah backends
    python benchmarks/bench_envs.py --only swingup --batches 1,64,256   # scan_rk4 vs mjx.step
    python benchmarks/bench_envs.py --only brax --backends positional,spring --batches 1,256
Never runs mjx at batch >= 1024 on CPU (it deadlocked there on this machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from mismatch_jax.envs import make
from mismatch_jax.envs.cartpole_swingup import CartpoleSwingup


def make_rollout(env, steps: int):
    """[batch] keys -> final observations [batch, obs_dim]; steps transitions each."""

    def single(key):
        reset_key, action_key = jax.random.split(key)
        state = env.reset(reset_key)
        actions = jax.random.uniform(
            action_key,
            (steps, env.action_dim),
            minval=jnp.asarray(env.action_low),
            maxval=jnp.asarray(env.action_high),
        )

        def body(state, action):
            return env.step(state, action), None

        final, _ = jax.lax.scan(body, state, actions)
        return final.obs

    return jax.jit(jax.vmap(single))


def measure(env, batch: int, steps: int, repeats: int) -> dict:
    rollout = make_rollout(env, steps)
    keys = jax.random.split(jax.random.key(0), batch)
    start = time.perf_counter()
    jax.block_until_ready(rollout(keys))
    compile_s = time.perf_counter() - start
    runs = []
    for repeat in range(repeats):
        keys = jax.random.split(jax.random.key(repeat + 1), batch)
        start = time.perf_counter()
        jax.block_until_ready(rollout(keys))
        runs.append(time.perf_counter() - start)
    run_s = statistics.median(runs)
    row = {
        "batch": batch,
        "steps": steps,
        "compile_s": round(compile_s, 3),
        "run_s": round(run_s, 5),
        "env_steps_per_s": round(batch * steps / run_s, 1),
    }
    print(f"{env.name} batch={batch}: {row}", file=sys.stderr, flush=True)  # progress
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["swingup", "brax", "all"], default="all")
    parser.add_argument("--batches", default="1,64,256", help="comma-separated batch sizes")
    parser.add_argument("--brax-batches", default="1,256")
    parser.add_argument("--brax-env", default="halfcheetah")
    parser.add_argument("--backends", default="positional,spring,generalized,mjx")
    parser.add_argument("--steps", type=int, default=100, help="transitions per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = jax.devices()[0]
    results = []
    if args.only in ("swingup", "all"):
        # The env's own single-forward RK4 and mjx.step side by side: same states, compile time
        # and run time compared in one process.
        envs = {name: CartpoleSwingup(integrator=name) for name in ("scan_rk4", "mjx_step")}
        for batch in [int(b) for b in args.batches.split(",")]:
            for integrator, env in envs.items():
                row = {"env": "cartpole_swingup", "backend": "mjx", "integrator": integrator}
                row.update(measure(env, batch, args.steps, args.repeats))
                results.append(row)
    if args.only in ("brax", "all"):
        for backend in args.backends.split(","):
            env = make(args.brax_env, backend=backend)
            for batch in [int(b) for b in args.brax_batches.split(",")]:
                if backend == "mjx" and batch >= 1024 and device.platform == "cpu":
                    continue
                row = {"env": args.brax_env, "backend": backend}
                row.update(measure(env, batch, args.steps, args.repeats))
                results.append(row)
    print(
        json.dumps(
            {
                "benchmark": "env_step_throughput",
                "device_kind": device.device_kind,
                "platform": device.platform,
                "jax": jax.__version__,
                "host_cpus": __import__("os").cpu_count(),
                "python": platform.python_version(),
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
