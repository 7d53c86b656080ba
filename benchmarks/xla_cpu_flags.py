"""Do XLA:CPU's own options speed up the population trainer? (issue: fair benchmarks, item 3)

Runs the JAX side of ``compare_peer.py`` (``--no-peer --only gemm,train``: hidden 200 × N = 64 models by
default, the question where our batched GEMMs lag a plain one) once per XLA_FLAGS setting, in a
fresh process each (XLA reads its flags at start-up), the settings interleaved round by round
(baseline, flag 1, flag 2, …, baseline, flag 1, …) so drifting machine load hits all alike. Prints
one JSON object: per setting the per-round model-steps/s (each the median of ``--reps`` timed runs
inside its process), its median and min–max over rounds, the median ratio to the baseline of the
same round, the compile time apart, and the load average at start and end. A setting XLA rejects
(an unknown flag or value) is reported with its error instead of a figure.

    python benchmarks/xla_cpu_flags.py --rounds 3 > benchmarks/results/xla_cpu_flags.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

SETTINGS = {
    "baseline": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_eigen_threads": "--xla_cpu_multi_thread_eigen=false",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}


def run_once(flags: str, args) -> dict:
    """One process of compare_peer.py under ``flags``; returns its train entry (or the error)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(x for x in (os.environ.get("XLA_FLAGS", ""), flags) if x)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, os.path.join(HERE, "compare_peer.py"), "--no-peer", "--only", "gemm,train",
               "--hidden", str(args.hidden), "--num-models", str(args.num_models), "--reps", str(args.reps),
               "--epochs", str(args.epochs), "--out", out.name]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail)}
        report = json.load(open(out.name))
    entry = report["train"][f"{args.hidden}_{args.num_models}"]
    return {"model_steps_per_s": entry["ours"]["median"], "compile_s": entry["ours_compile_s"],
            "gemm_fraction": entry["gemm_fraction"]["median"], "gemm_gflops": report["gemm_gflops"]["median"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="timed runs inside each process")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--num-models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {list(SETTINGS)}")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or names[0] != "baseline":
        parser.error(f"--settings must start with baseline and name only {list(SETTINGS)}; got {names}")

    report = {"question": f"train hidden {args.hidden} x N {args.num_models}", "rounds": args.rounds,
              "reps_per_process": args.reps, "epochs": args.epochs, "load_start": os.getloadavg(),
              "settings": {n: {"xla_flags": SETTINGS[n], "rounds": []} for n in names}}
    for r in range(args.rounds):
        for name in names:
            result = run_once(SETTINGS[name], args)
            report["settings"][name]["rounds"].append(result)
            print(f"round {r + 1}: {name}: {result}", file=sys.stderr, flush=True)
    report["load_end"] = os.getloadavg()
    baseline = report["settings"]["baseline"]["rounds"]
    for name in names:
        rounds = report["settings"][name]["rounds"]
        speeds = [x.get("model_steps_per_s") for x in rounds]
        if any(s is None for s in speeds):
            report["settings"][name]["error"] = next(x["error"] for x in rounds if "error" in x)
            continue
        ratios = sorted(s / b["model_steps_per_s"] for s, b in zip(speeds, baseline) if "error" not in b)
        ordered = sorted(speeds)
        report["settings"][name].update(
            model_steps_per_s={"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1]},
            ratio_to_baseline_same_round={"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1]},
            compile_s_median=sorted(x["compile_s"] for x in rounds)[len(rounds) // 2])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
