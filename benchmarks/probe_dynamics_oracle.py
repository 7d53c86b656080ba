"""What the sweep's controller earns with the *true* dynamics in each ``[env_params]`` setting:
the ceiling a learned model can reach there (prints one JSON object).

    python benchmarks/probe_dynamics_oracle.py sweeps/cartpole_dynamics_cpu.toml --trials 2

Every setting's episodes run in one program: CEM-MPC (the sweep's ``[cem]``, its
``[evaluation]`` episode length) planning on ``env.step`` with that setting's constants, the
episodes vmapped over settings × trials.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a sweep TOML with an [env_params] section")
    parser.add_argument("--trials", type=int, default=2, help="episodes per setting")
    args = parser.parse_args()

    import jax
    import numpy as np

    from mismatch_jax.envs import make
    from mismatch_jax.planning.mpc import make_true_dynamics_planner, mpc_episode
    from mismatch_jax.sweep.config import load
    from mismatch_jax.sweep.env_params import expand

    config = load(args.config)
    env = make(config.env)
    settings = expand(config.dynamics, env, config.seed)
    if settings is None:
        raise SystemExit(f"{args.config} has no [env_params] section")
    cem = config.cem.for_env(env)
    length = config.evaluation.length(env)
    load_start = os.getloadavg()

    def episode(key, env_params):
        planner = make_true_dynamics_planner(env, cem, env_params)
        return mpc_episode(key, env, planner, None, None, length, env_params)[1]

    keys = jax.random.split(jax.random.key(config.seed), args.trials)
    run = jax.jit(jax.vmap(lambda p: jax.vmap(lambda k: episode(k, p))(keys)))
    t = time.perf_counter()
    compiled = run.lower(settings.params).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    rewards = np.asarray(jax.block_until_ready(compiled(settings.params)))
    run_s = time.perf_counter() - t
    print(json.dumps({
        "benchmark": "probe_dynamics_oracle", "config": args.config, "episode_length": length,
        "cem": [cem.horizon, cem.population_size, cem.num_elites, cem.num_iterations],
        "settings": {name: values.tolist() for name, values in settings.values.items()},
        "oracle_rewards": rewards.round(2).tolist(), "oracle_mean": rewards.mean(axis=1).round(2).tolist(),
        "compile_s": round(compile_s, 1), "run_s": round(run_s, 1),
        "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
