"""Why the population is split over host devices on a CPU: a bare GEMM chain, one device vs two.

A population of 64 "models", each a chain of plain matrix products (input 5 → 4 × 200 → 8, batch
256, no biases or activations) trained by 40 SGD steps of its own (forward + backward), the models
run one at a time (``lax.map``) — on one XLA:CPU device, and on 2 host devices with each device's
block of 32 models as its own program (``shard_map``); each with Eigen's intra-op threads on and
off (``--xla_cpu_multi_thread_eigen=false``). Every setting runs in a fresh process (XLA reads
``XLA_FLAGS`` at start-up), the settings alternate round by round, and each process reports the
median of 5 calls and the fraction of a 2048² ``jnp.dot`` timed in the same process.

    python benchmarks/probe_host_split.py --rounds 2 > benchmarks/results/host_split_probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "one_device": "",
    "one_device_no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
    "two_devices": "--xla_force_host_platform_device_count=2",
    "two_devices_no_eigen_threads": "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false",
}


def child() -> None:
    """One setting in this process: prints {"ms_per_model_step", "fraction_of_dot", "dot_gflops"}."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_common import gemm_gflops

    hidden, models, batch, layers, d_in, d_out, steps = 200, 64, 256, 4, 5, 8, 40
    sizes = [d_in] + [hidden] * layers + [d_out]

    def init(key):
        keys = jax.random.split(key, len(sizes))
        return [jax.random.normal(k, (a, b)) * 0.05 for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def forward(weights, x):
        for w in weights:
            x = x @ w
        return x

    def one_model(weights, x):
        def body(i, weights):
            grads = jax.grad(lambda ws: jnp.sum(forward(ws, x * (1 + i * 1e-6)) ** 2))(weights)
            return [w - 1e-6 * g for w, g in zip(weights, grads)]
        return jax.lax.fori_loop(0, steps, body, weights)

    population = lambda ws, x: jax.lax.map(lambda a: one_model(*a), (ws, x))  # noqa: E731
    weights = jax.vmap(init)(jax.random.split(jax.random.key(0), models))
    x = jax.random.normal(jax.random.key(1), (models, batch, d_in))
    devices = jax.devices()
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("pop",))
        weights, x = jax.device_put((weights, x), NamedSharding(mesh, P("pop")))
        fn = jax.jit(jax.shard_map(population, mesh=mesh, in_specs=(P("pop"), P("pop")), out_specs=P("pop"),
                                   check_vma=False))
    else:
        fn = jax.jit(population)
    jax.block_until_ready(fn(weights, x))
    dot = gemm_gflops(2048, 5)["median"]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(fn(weights, x))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    flops = models * steps * 3 * 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    print(json.dumps({"devices": len(devices), "ms_per_model_step": seconds / (models * steps) * 1e3,
                      "fraction_of_dot": flops / seconds / 1e9 / dot, "dot_gflops": dot}))


def main() -> None:
    """Alternate the settings for ``--rounds`` rounds; print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    report = {"benchmark": "probe_host_split", "loadavg_start": list(os.getloadavg()),
              "runs": {name: [] for name in SETTINGS}}
    for round_index in range(args.rounds):
        for name, flags in SETTINGS.items():
            env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
            out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                 check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            report["runs"][name].append(result)
            print(f"round {round_index + 1} {name}: {result}", file=sys.stderr, flush=True)
    report["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
