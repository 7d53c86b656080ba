"""CEM planning throughput: planning calls per second for 1, 64 and 256 models (vmapped), with
mbrl-lib's CEM agent (benchmarks/peer_mbrl_cem.py, one model at a time) side by side.

    python benchmarks/bench_cem.py [--settings small paper] [--models 1 64 256] [--no-peer]

Prints one JSON object: per (setting, num_models) the compile time, the median/min seconds of one
vmapped call (first call discarded, block_until_ready), planning calls per second
(= num_models / seconds) and the speed-up per planned step over the peer's median.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.models import core as models
from mismatch_jax.planning import CEMConfig, make_planner

# name: (hidden, layers, ensemble, horizon, population, elites, iterations) — as the peer script.
SETTINGS = {
    "small": (64, 3, 5, 15, 100, 10, 3),
    "paper": (200, 4, 5, 30, 500, 50, 5),
}
OBS_DIM, ACT_DIM = 4, 1
PEER_PYTHON = os.environ.get("PEER_PYTHON", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".peer-venv", "bin", "python"))


def swingup_reward(obs, action, next_obs):
    x, theta = next_obs[0], next_obs[1]
    tip_x, tip_y = x - 0.6 * jnp.sin(theta), -0.6 * jnp.cos(theta)
    return jnp.exp(-(tip_x**2 + (tip_y - 0.6) ** 2) / 0.36) - 0.01 * jnp.sum(action**2)


def bench_jax(setting, num_models, repeats):
    hidden, layers, ensemble, horizon, population, elites, iterations = SETTINGS[setting]
    mc = models.ModelConfig(kind="PE", obs_dim=OBS_DIM, action_dim=ACT_DIM, hidden_size=hidden,
                            num_hidden_layers=layers, ensemble_size=ensemble)
    cem = CEMConfig(horizon=horizon, population_size=population, num_elites=elites,
                    num_iterations=iterations, alpha=0.1, propagation="expectation").with_bounds([-3.0], [3.0])
    planner = make_planner(cem, mc, swingup_reward)
    params = jax.vmap(lambda k: models.init(k, mc))(jax.random.split(jax.random.key(0), num_models))
    norms = jax.vmap(lambda _: models.identity_normalizer(mc))(jnp.arange(num_models))
    obs = jnp.zeros((num_models, OBS_DIM))
    plans = jnp.broadcast_to(planner.initial_plan, (num_models, horizon, ACT_DIM))
    plan = jax.jit(jax.vmap(planner))
    keys = jax.random.split(jax.random.key(1), num_models)
    t = time.perf_counter()
    compiled = plan.lower(keys, params, norms, obs, plans).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(keys, params, norms, obs, plans))  # discarded
    times = []
    for r in range(repeats):
        keys = jax.random.split(jax.random.key(2 + r), num_models)
        t = time.perf_counter()
        jax.block_until_ready(compiled(keys, params, norms, obs, plans))
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"setting": setting, "num_models": num_models, "compile_s": compile_s,
            "s_per_call": median, "min_s_per_call": float(np.min(times)),
            "calls_per_s": num_models / median, "s_per_model_call": median / num_models}


def bench_peer(setting, calls):
    if not os.path.exists(PEER_PYTHON):
        return {"error": f"{PEER_PYTHON} not found"}
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_mbrl_cem.py")
    out = subprocess.run([PEER_PYTHON, script, "--setting", setting, "--calls", str(calls)],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        return {"error": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", nargs="+", default=["small", "paper"], choices=sorted(SETTINGS))
    parser.add_argument("--models", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--paper-models", nargs="+", type=int, default=[1, 64],
                        help="model counts for the paper setting (256 takes minutes per call on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-calls", type=int, default=10)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    device = jax.devices()[0]
    report = {"device_kind": device.device_kind, "platform": device.platform,
              "jax": jax.__version__, "propagation": "expectation", "results": []}
    for setting in args.settings:
        peer = None if args.no_peer else bench_peer(setting, args.peer_calls)
        counts = args.paper_models if setting == "paper" else args.models
        for n in counts:
            row = bench_jax(setting, n, args.repeats)
            if peer and "s_per_call" in peer:
                row["peer_s_per_call"] = peer["s_per_call"]
                row["peer_min_s_per_call"] = peer["min_s_per_call"]
                row["speedup_per_planned_step"] = peer["s_per_call"] / row["s_per_model_call"]
            report["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        report.setdefault("peer", {})[setting] = peer
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
