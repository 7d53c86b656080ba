"""Throughput of a ≥1000-model population through train → LL → CEM reward, split by stage.

Each stage of a sweep chunk (``mismatch_jax.sweep.chunk.make_chunk_parts``: training, one-step
LL/MSE on every evaluation dataset, CEM-MPC reward in the true env) is jitted on its own, on the
same chunk, with the sweep's sharding over host devices. For each stage it reports compile time
apart from run time, models/hour and FLOPs, and compares the achieved FLOP/s with a large
``jnp.dot`` measured in the same run.

FLOPs: XLA's ``compiled.cost_analysis()["flops"]`` counts every while-loop body ONCE, whatever its
trip count (and, for an SPMD program, one device's share), so for these loop-built stages it is a
large undercount; it is reported as ``cost_analysis_flops`` (× devices). ``flops`` is our own walk
of the optimised HLO that weights each computation by the ``known_trip_count`` of the loops around
it: dots count 2·|out|·|contracted|, elementwise/reduce ops one per output (input) element,
transcendentals apart — the same rules as XLA's cost analysis; the walk is checked against
``cost_analysis`` on loop-free programs (``flops_check``) and on a scan of dots.

    python benchmarks/bench_population.py                      # the cpu_population_1000 chunk
    python benchmarks/bench_population.py --chunk 24 --devices 2 --kinds P
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sweeps/cpu_population_1000.toml")
    parser.add_argument("--chunk", type=int, default=0, help="models per chunk (0 = the config's chunk_size)")
    parser.add_argument("--devices", type=int, default=2, help="XLA host devices (the sweep's --devices)")
    parser.add_argument("--kinds", default="", help="model types to time, comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per stage after the compile")
    parser.add_argument("--dot-size", type=int, default=2048)
    parser.add_argument("--out", default="", help="also write the JSON here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Trip-count-weighted FLOPs of an optimised HLO module.
# ------------------------------------------------------------------------------------------------

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")
_CALLEES = re.compile(r"(?:calls|to_apply|body|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "compare", "select",
                "negate", "abs", "clamp", "and", "or", "not", "xor", "remainder", "sign", "floor",
                "ceil", "round-nearest-even", "round-nearest-afz", "atan2", "is-finite", "convert",
                "shift-left", "shift-right-logical", "shift-right-arithmetic", "popcnt"}
_TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic",
                   "sqrt", "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "erf"}


def _numel(shape: str) -> int:
    match = _SHAPE.match(shape)
    if not match:
        return 0  # tuples, tokens
    dims = [int(d) for d in match.group(1).split(",") if d]
    out = 1
    for d in dims:
        out *= d
    return out


def _dims(shape: str) -> list[int]:
    match = _SHAPE.match(shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def hlo_flops(hlo_text: str) -> dict:
    """{"flops", "dot_flops", "transcendentals"} of one execution of the module in ``hlo_text``
    (``compiled.as_text()``): every computation weighted by how often it runs — a while body by
    its known trip count, a fusion / call / conditional branch once per call (branches are all
    counted: an upper bound)."""
    computations: dict[str, list[tuple]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # tuple shapes carry /*index=5*/ comments
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("(")[0]:
            current = head.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        match = _INSTRUCTION.match(line)
        if match:
            computations[current].append(match.groups())

    memo: dict[str, tuple[float, float, float]] = {}

    def cost(name: str) -> tuple[float, float, float]:
        if name in memo:
            return memo[name]
        memo[name] = (0.0, 0.0, 0.0)  # guards against cycles (none in valid HLO)
        shapes = {n: s for n, s, _, _ in computations.get(name, [])}
        flops = dots = trans = 0.0
        for _, shape, opcode, rest in computations.get(name, []):
            if opcode == "dot":
                operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
                lhs = _dims(shapes.get(operands[0], "")) if operands else []
                k = 1
                for d in (contracting.group(1).split(",") if contracting and contracting.group(1) else []):
                    k *= lhs[int(d)] if int(d) < len(lhs) else 1
                f = 2.0 * _numel(shape) * k
                flops, dots = flops + f, dots + f
            elif opcode in _ELEMENTWISE:
                flops += _numel(shape)
            elif opcode in _TRANSCENDENTAL:
                trans += _numel(shape)
            elif opcode in ("reduce", "reduce-window"):
                operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
                flops += _numel(shapes.get(operands[0], "")) if operands else 0
                continue  # its to_apply runs per element; counted here already
            callees = _CALLEES.findall(rest)
            branches = _BRANCHES.search(rest)
            if branches:
                callees += re.findall(r"%([\w.\-]+)", branches.group(1))
            trip = _TRIP.search(rest)
            factor = float(trip.group(1)) if (opcode == "while" and trip) else 1.0
            for callee in callees:
                if opcode == "while" and callee not in re.findall(r"body=%([\w.\-]+)", rest):
                    continue  # the condition: a compare per trip, negligible
                if opcode in ("sort", "scatter", "select-and-scatter", "map", "all-reduce",
                              "reduce-scatter"):
                    continue
                f, d, t = cost(callee)
                flops, dots, trans = flops + factor * f, dots + factor * d, trans + factor * t
        memo[name] = (flops, dots, trans)
        return memo[name]

    flops, dots, trans = cost(entry) if entry else (0.0, 0.0, 0.0)
    return {"flops": flops, "dot_flops": dots, "transcendentals": trans}


def flops_of(compiled, num_devices: int) -> dict:
    """Trip-count-weighted FLOPs (whole program: per-device count × devices) and XLA's own
    cost_analysis figure (loop bodies once) of a compiled function."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    walked = hlo_flops(compiled.as_text())
    return {"flops": walked["flops"] * num_devices, "dot_flops": walked["dot_flops"] * num_devices,
            "transcendentals": walked["transcendentals"] * num_devices,
            "cost_analysis_flops": float(analysis.get("flops", float("nan"))) * num_devices}


# ------------------------------------------------------------------------------------------------
# The benchmark.
# ------------------------------------------------------------------------------------------------


def _timed(fn, *args, repeats: int = 1):
    import jax

    out = None
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return out, min(times)


def _compile(fn, *args):
    t = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t


def flops_checks(num_devices: int) -> dict:
    """The HLO walk vs XLA's cost_analysis on loop-free programs (should agree) and on a scan of
    ten dots (the walk sees 10×, cost_analysis 1×)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((128, 128))
    mlp = lambda a: jnp.tanh(jnp.tanh(a @ x) @ x).sum()
    scan = lambda a: jax.lax.scan(lambda c, _: (c @ x, None), a, None, length=10)[0]
    out = {}
    for name, fn in (("dot", lambda a: a @ x), ("mlp_with_grad", jax.grad(mlp)), ("scan_of_10_dots", scan)):
        compiled = jax.jit(fn).lower(x).compile()
        out[name] = {k: v for k, v in flops_of(compiled, 1).items() if k in ("flops", "cost_analysis_flops")}
    out["note"] = "loop-free: walk ≈ cost_analysis; scan: walk = 10 × cost_analysis"
    return out


def dot_peak(size: int, num_devices: int, repeats: int = 5) -> dict:
    """FLOP/s of a large f32 jnp.dot on one device and of one such dot per device at once."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    single = jax.jit(lambda u, v: u @ v)
    compiled, compile_s = _compile(single, a, a)
    _timed(compiled, a, a)
    _, seconds = _timed(compiled, a, a, repeats=repeats)
    flops = 2.0 * size**3
    result = {"size": size, "compile_s": compile_s, "single_device_s": seconds,
              "single_device_flops_per_s": flops / seconds}
    if num_devices > 1:
        mesh = Mesh(np.asarray(jax.devices()[:num_devices]), ("pop",))
        batch = jax.device_put(jnp.stack([a] * num_devices), NamedSharding(mesh, PartitionSpec("pop")))
        sharded = jax.jit(lambda u: jnp.einsum("nij,njk->nik", u, u))
        compiled, _ = _compile(sharded, batch)
        _timed(compiled, batch)
        _, seconds = _timed(compiled, batch, repeats=repeats)
        result.update(all_devices_s=seconds, all_devices_flops_per_s=num_devices * flops / seconds)
    result["peak_flops_per_s"] = max(result["single_device_flops_per_s"], result.get("all_devices_flops_per_s", 0.0))
    return result


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from mismatch_jax.envs import make
    from mismatch_jax.sweep.config import load
    from mismatch_jax.sweep.chunk import chunk_model_arguments, chunk_size_for, make_chunk_parts, stack_study_data
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    config = load(args.config)
    env = make(config.env)
    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("pop",))
    sharded, replicated = NamedSharding(mesh, PartitionSpec("pop")), NamedSharding(mesh, PartitionSpec())
    log = lambda s: print(s, file=sys.stderr, flush=True)

    t = time.perf_counter()
    sets, _ = build_study_datasets(StudyData.of_sweep(config), env, log=log)
    dataset_s = time.perf_counter() - t
    train_data, eval_sets, env_settings = stack_study_data(config, sets)

    report = {
        "benchmark": "bench_population", "config": args.config, "jax": jax.__version__,
        "devices": len(devices), "device_kind": devices[0].device_kind,
        "num_models_in_sweep": config.num_models, "dataset_s": dataset_s,
        "datasets": {name: int(ds.size) for name, ds in sets.items()},
        "population": {"hidden_size": config.population.model.hidden_size,
                       "num_hidden_layers": config.population.model.num_hidden_layers,
                       "epochs": config.training.num_epochs, "eval_epochs": list(config.training.eval_epochs),
                       "cem": [config.cem.horizon, config.cem.population_size, config.cem.num_elites,
                               config.cem.num_iterations],
                       "trials": config.evaluation.trials,
                       "episode_length": config.evaluation.episode_length},
        "flops_check": flops_checks(len(devices)),
        "dot": dot_peak(args.dot_size, len(devices)),
        "kinds": {},
    }
    peak = report["dot"]["peak_flops_per_s"]
    kinds = [k for k in args.kinds.split(",") if k] or list(config.population.model_types)
    for kind in kinds:
        size = args.chunk or chunk_size_for(config, env, kind, int(train_data.capacity), len(devices))
        size = max(len(devices), size // len(devices) * len(devices))
        t_index = config.population.model_types.index(kind)
        first = t_index * config.models_per_type
        indices = np.arange(first, first + size, dtype=np.int32)  # the sweep's first chunk of this type
        dataset_index, setting_index = chunk_model_arguments(config, indices)
        parts = make_chunk_parts(config, env, kind)
        stages = {
            "train": jax.jit(parts.train, in_shardings=(sharded, sharded, replicated)),
            "likelihood": jax.jit(parts.likelihood, in_shardings=(sharded, sharded, sharded, replicated)),
            "reward": jax.jit(parts.reward, in_shardings=(sharded, sharded, sharded, sharded, replicated)),
        }
        entry = {"chunk_models": int(size), "stages": {}}
        log(f"{kind}: chunk of {size} models; compiling + running train")
        train_args = (jnp.asarray(indices), jnp.asarray(dataset_index), train_data)
        compiled, compile_s = _compile(stages["train"], *train_args)
        trained, run_s = _timed(compiled, *train_args, repeats=args.repeats)
        entry["stages"]["train"] = {"compile_s": compile_s, "run_s": run_s, **flops_of(compiled, len(devices))}
        setting_index = jnp.asarray(setting_index)
        for name, stage_args in (("likelihood", (trained.kept_params, trained.normalizers, setting_index, eval_sets)),
                                 ("reward", (trained.kept_params, trained.normalizers, trained.epoch_keys,
                                             setting_index, env_settings))):
            log(f"{kind}: compiling + running {name}")
            compiled, compile_s = _compile(stages[name], *stage_args)
            _, run_s = _timed(compiled, *stage_args, repeats=args.repeats)
            entry["stages"][name] = {"compile_s": compile_s, "run_s": run_s, **flops_of(compiled, len(devices))}
        total_run = sum(s["run_s"] for s in entry["stages"].values())
        for stage in entry["stages"].values():
            stage["models_per_hour"] = size / stage["run_s"] * 3600.0
            stage["share_of_run"] = stage["run_s"] / total_run
            stage["flops_per_model"] = stage["flops"] / size
            stage["achieved_flops_per_s"] = stage["flops"] / stage["run_s"]
            stage["fraction_of_dot_peak"] = stage["achieved_flops_per_s"] / peak
        entry["all_stages"] = {"run_s": total_run, "models_per_hour": size / total_run * 3600.0,
                               "compile_s": sum(s["compile_s"] for s in entry["stages"].values()),
                               "hours_for_sweep": config.num_models / (size / total_run * 3600.0)}
        report["kinds"][kind] = entry
        log(json.dumps({kind: entry["all_stages"]}))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
