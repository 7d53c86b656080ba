"""The attack's CMA-ES candidates on one XLA:CPU device vs sharded over 2 host devices.

Runs ``mismatch-jax attack CONFIG`` with a few generations, alternately without and with
``--devices 2`` (a fresh process each: the device count is fixed when jax starts), ``--rounds``
times (A B A B …). Per run it parses the per-generation seconds the command logs; generation 1
holds the compile and is reported apart. Prints one JSON object: per setting the steady
generations' seconds (median, min–max over all rounds), compile-generation seconds, the whole
run's wall seconds, the median ratio, and the load average at start and end.

    python benchmarks/bench_attack_devices.py --rounds 3 > benchmarks/results/attack_devices.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

GENERATION = re.compile(r"generation (\d+)/\d+: .*?([0-9.]+)s\)$")


def run_once(config: str, generations: int, devices: int) -> dict:
    """One attack process; → per-generation seconds and wall seconds."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "mismatch_jax.cli", "attack", config, "--out", out,
               "--set", f"cmaes.generations={generations}", "--set", "evaluation.final_rounds=1"]
        if devices > 1:
            cmd += ["--devices", str(devices)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    seconds = {int(m.group(1)): float(m.group(2))
               for m in (GENERATION.search(line.strip()) for line in proc.stdout.splitlines()) if m}
    return {"generation_s": [seconds[g] for g in sorted(seconds)], "wall_s": round(wall, 2)}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sweeps/attack_cpu.toml")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = {"one_device": 1, "two_devices": 2}
    report = {"config": args.config, "generations": args.generations, "rounds": args.rounds,
              "load_start": os.getloadavg(), "runs": {name: [] for name in settings}}
    for r in range(args.rounds):
        for name, devices in settings.items():
            result = run_once(args.config, args.generations, devices)
            report["runs"][name].append(result)
            print(f"round {r + 1} {name}: {result}", file=sys.stderr, flush=True)
    report["load_end"] = os.getloadavg()
    for name in settings:
        runs = report["runs"][name]
        report[name] = {"steady_generation_s": spread([s for run in runs for s in run["generation_s"][1:]]),
                        "first_generation_s": spread([run["generation_s"][0] for run in runs]),
                        "wall_s": spread([run["wall_s"] for run in runs])}
    report["steady_speedup_median"] = (report["one_device"]["steady_generation_s"]["median"]
                                       / report["two_devices"]["steady_generation_s"]["median"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
