"""Which population layout is fastest here: one vmap, lax.map over groups, sharding over devices.

    python benchmarks/bench_layout.py                              # train at widths 32-200, N = 64
    python benchmarks/bench_layout.py --only train --widths 200 --num-models 64,256
    python benchmarks/bench_layout.py --devices 2 --layouts vmap,map:1,shard:vmap,shard:map:1
    python benchmarks/bench_layout.py --only cem,seeds

For each question every layout is compiled first (compile seconds reported apart, plus one
discarded warm-up call), then the layouts run interleaved (L1 L2 … L1 L2 …), ``--reps`` times,
and each reports ``{min, median, max, reps, values}`` of seconds per call. The same run measures a
2048² ``jnp.dot`` (``gemm_gflops``) and the load average at start and end. ``max_rel_diff``: over
the outputs (trained parameters and metrics), the largest |difference| from the first layout's
array relative to that array's largest |value| (float reassociation, amplified by training).

Layouts: ``vmap``; ``map:G`` (lax.map over groups of G models); ``shard:vmap`` / ``shard:map:G``
(the population axis sharded over all devices of the process — with ``--devices D`` the CPU is
split into D XLA devices — and laid out inside each device's block).

Questions (``--only``): ``train`` — the population trainer (P models, ``--layers`` × width, SiLU,
5 epochs of 2048 rows at batch 256, the compare_peer.py data) at each ``--widths`` × ``--num-models``;
``cem`` — one CEM planning call for M models (``--cem-setting`` of bench_common.CEM_SETTINGS);
``seeds`` — MBPO, ``--seeds`` seeds of sweeps/mbpo_pendulum_quick.toml in one program.
Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="train", help="comma-separated of train, cem, seeds")
    p.add_argument("--layouts", default="vmap,map:1,map:4,map:16")
    p.add_argument("--widths", default="32,64,128,200")
    p.add_argument("--num-models", default="64")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cem-setting", default="small_h15")
    p.add_argument("--cem-models", type=int, default=16)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--devices", type=int, default=0, help="split the CPU into this many XLA devices")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.devices}").strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_common import gemm_gflops, linear_system, summarize  # noqa: E402
from mismatch_jax.data import TransitionData  # noqa: E402
from mismatch_jax.models import core as models  # noqa: E402
from mismatch_jax.population import jit_sharded, over_population, parse_layout  # noqa: E402
from mismatch_jax.train import TrainConfig, TrainHParams, make_train_fn, model_keys  # noqa: E402


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def laid_out(fn, name, shared, per_model_args, per_model=None):
    """``fn`` jitted under layout ``name`` (``map:1`` calls ``per_model`` when given)."""
    sharded = name.startswith("shard:")
    layout = parse_layout(name.removeprefix("shard:"))
    shards = len(jax.devices()) if sharded else 1
    f = over_population(fn, layout, shared=shared, per_model=per_model)
    return jit_sharded(f, per_model_args, shared, devices=jax.devices()[:shards])


def race(question, fn, args, shared, layouts, reps, per_model=None):
    """Compile every layout, then time them interleaved; returns the question's JSON entry."""
    entry, programs, reference = {}, {}, None
    for name in layouts:
        jitted = laid_out(fn, name, shared, len(args), per_model)
        t = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        entry[name] = {"compile_s": compile_s, "warmup_s": time.perf_counter() - t}
        leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(out) if np.asarray(a).dtype != bool]
        if reference is None:
            reference = leaves
        # Per output array: largest |difference| over the array's largest |value| (an element-wise
        # relative difference is dominated by parameters near zero).
        entry[name]["max_rel_diff"] = max(
            (float(np.nanmax(np.abs(a - b)) / (np.nanmax(np.abs(b)) + 1e-12)) for a, b in zip(leaves, reference) if a.size),
            default=0.0)
        programs[name] = compiled
    times = {name: [] for name in layouts}
    for rep in range(reps):
        for name, compiled in programs.items():
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[name].append(time.perf_counter() - t)
        log(f"[{question}] rep {rep}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in layouts))
    for name in layouts:
        entry[name]["seconds"] = summarize(times[name])
    fastest = min(layouts, key=lambda n: entry[n]["seconds"]["median"])
    entry["fastest"] = fastest
    entry["speedup_fastest_over_vmap"] = (entry["vmap"]["seconds"]["median"] / entry[fastest]["seconds"]["median"]
                                          if "vmap" in entry else None)
    return entry


def train_question(width, n, args):
    obs, act, nxt = linear_system(2048)
    data = TransitionData.from_arrays(jax.random.key(42), obs, act, nxt, validation_fraction=0.1)
    mcfg = models.ModelConfig("P", obs.shape[1], act.shape[1], hidden_size=width,
                              num_hidden_layers=args.layers, activation="silu")
    train = make_train_fn(TrainConfig(model=mcfg, num_epochs=5, batch_size=256))

    def population(keys, hparams, dataset_index, data):
        result = train(keys, None, data, hparams, dataset_index)
        return result.params, result.metrics

    inputs = (model_keys(jax.random.key(0), 0, n), TrainHParams.population(n), jnp.zeros(n, jnp.int32), data)
    hp = jax.tree.map(lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (n,)), inputs[1])
    inputs = (inputs[0], hp, inputs[2], inputs[3])
    entry = race(f"train {width}_{n}", population, inputs, (3,), args.layout_names, args.reps)
    entry.update(width=width, num_models=n, layers=args.layers)
    return entry


def cem_question(args):
    from compare_peer import cem_inputs

    planner, params, norms, obs, plans = cem_inputs(args.cem_setting, args.cem_models)
    keys = jax.random.split(jax.random.key(1), args.cem_models)
    entry = race(f"cem {args.cem_setting} x{args.cem_models}", jax.vmap(planner), (keys, params, norms, obs, plans),
                 (), args.layout_names, args.reps, per_model=planner)
    entry.update(setting=args.cem_setting, num_models=args.cem_models)
    return entry


def seeds_question(args):
    import dataclasses

    from mismatch_jax.agents import mbpo, mbpo_config
    from mismatch_jax.experiments import mbpo_compare

    config = mbpo_compare.load_compare_config(os.path.join(ROOT, "sweeps", "mbpo_pendulum_quick.toml"))
    cfg = mbpo_config.agent_config("mbpo", config.mbpo)
    cfg = dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, num_seeds=args.seeds))
    env = mbpo_config.make_env(cfg)
    train = mbpo.make_train(cfg, env)
    entry = race(f"seeds x{args.seeds}", jax.vmap(train), (mbpo.seed_keys(cfg),), (),
                 args.layout_names, max(1, min(args.reps, 3)), per_model=train)
    entry.update(num_seeds=args.seeds, sac_hidden=cfg.sac.hidden_size)
    return entry


def main(args):
    args.layout_names = [name for name in args.layouts.split(",") if name]
    for name in args.layout_names:
        parse_layout(name.removeprefix("shard:"))
    report = {"backend": jax.default_backend(), "devices": len(jax.devices()), "loadavg_start": os.getloadavg(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "gemm_gflops": gemm_gflops(), "train": {}, "cem": None, "seeds": None,
              "command": "python benchmarks/bench_layout.py " + " ".join(sys.argv[1:])}
    sections = args.only.split(",")

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)

    if "train" in sections:
        for n in (int(v) for v in args.num_models.split(",")):
            for width in (int(v) for v in args.widths.split(",")):
                report["train"][f"{width}_{n}"] = train_question(width, n, args)
                save()
    if "cem" in sections:
        report["cem"] = cem_question(args)
        save()
    if "seeds" in sections:
        report["seeds"] = seeds_question(args)
    report["loadavg_end"] = os.getloadavg()
    report["gemm_gflops_end"] = gemm_gflops()
    save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(ARGS)
