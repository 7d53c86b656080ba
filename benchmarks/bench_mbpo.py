"""MBPO acceptance numbers (issue 5): (a) Pendulum return > -200 with fewer env steps than SAC,
(b) S seeds as one compiled program vs S sequential runs, (c) VaGraM vs MLE with distractors.

    python benchmarks/bench_mbpo.py [--config sweeps/mbpo_pendulum.toml] [--seeds 4]
        [--compare-config sweeps/mbpo_pendulum_quick.toml] [--compare-seeds 8]
        [--distractor-config sweeps/vagram_distractors_cpu.toml] [--distractor-seeds 4]
        [--no-acceptance] [--no-compare] [--no-distractors] [--out DIR]

Prints one JSON object (each section also as one line as soon as it is done):

* ``acceptance``: ``jit(vmap(train))`` of agent "mbpo" over ``--seeds`` seeds; compile time (AOT
  lower + compile) apart from run time; eval-return curve (mean and per seed); the first env-step
  count whose seed-mean return exceeds -200 and the same per seed; SAC's reference (~15k steps,
  benchmarks/RESULTS.md, sweeps/sac_pendulum.toml) is quoted, not rerun.
* ``vmap_vs_sequential``: the quick config, one vmapped call over ``--compare-seeds`` seeds
  against that many sequential calls of the single-seed program; both programs are AOT-compiled
  first (compile times reported apart) and each run is timed once (runs are long and
  deterministic in cost, so no warm-up call is needed after AOT compilation).
* ``distractors``: agents "mbpo" (MLE) and "vagram" on the distractor config, paired seeds;
  final return mean ± std and per seed.
"""

import argparse
import dataclasses
import json
import pathlib
import time

import jax
import numpy as np

from mismatch_jax.agents import mbpo
from mismatch_jax.agents import mbpo_config
from mismatch_jax.experiments import mbpo_compare
from mismatch_jax.population import PopulationLayout, devices_dividing, jit_sharded, over_population

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAC_REFERENCE = {
    "source": "benchmarks/RESULTS.md, python benchmarks/bench_sac.py (sweeps/sac_pendulum.toml)",
    "env_steps_to_above_-200": "~15000 (final return -162.8 ± 21.2 at 15k steps, 5 seeds)",
}


def timed(fn, *args):
    """(result of ``fn(*args)`` after block_until_ready, seconds it took)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def acceptance(config: mbpo_compare.CompareConfig, num_seeds):
    result = mbpo_compare.run_agent("mbpo", config.mbpo, num_seeds=num_seeds, threshold=-200.0)
    result["sac_reference"] = SAC_REFERENCE
    result["total_env_steps"] = config.mbpo.sac.total_env_steps
    result["fewer_steps_than_sac_15k"] = (result["steps_to_threshold_mean_curve"] is not None
                                          and result["steps_to_threshold_mean_curve"] < 15000)
    return result


def seed_programs(config: mbpo_compare.CompareConfig, num_seeds, layout=None):
    """The quick-config MBPO agent as (a) one ``jit(vmap(train))`` program over ``num_seeds`` seeds
    and (b) the single-seed ``jit(train)`` program, both AOT-compiled (seconds apart): a dict with
    ``batched``, ``single``, ``keys`` [num_seeds], ``config``, ``vmapped_compile_s``,
    ``single_compile_s``, ``layout`` (the seeds' population layout, resolved; None = "auto"), ``train``
    (the single-seed function, to compile for other devices).
    Shared with compare_peer.py's ``seeds`` question."""
    cfg = mbpo_config.agent_config("mbpo", config.mbpo)
    cfg = dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, num_seeds=num_seeds))
    env = mbpo_config.make_env(cfg)
    keys = mbpo.seed_keys(cfg)
    train = mbpo.make_train(cfg, env)
    t = time.perf_counter()
    # With several (host) devices the seeds are sharded over them, laid out inside each block.
    devices = devices_dividing(num_seeds, jax.devices())
    layout = (layout or PopulationLayout()).resolve(width=cfg.sac.hidden_size)
    program = over_population(jax.vmap(train), layout, per_model=train)
    batched = jit_sharded(program, 1, devices=devices).lower(keys).compile()
    vmapped_compile_s = time.perf_counter() - t
    t = time.perf_counter()
    single = jax.jit(train).lower(keys[0]).compile()
    single_compile_s = time.perf_counter() - t
    return {"batched": batched, "single": single, "train": train, "keys": keys, "config": cfg, "layout": layout,
            "shards": len(devices),
            "vmapped_compile_s": vmapped_compile_s, "single_compile_s": single_compile_s}


def vmap_vs_sequential(config: mbpo_compare.CompareConfig, num_seeds):
    """One timed run of the vmapped program vs ``num_seeds`` sequential single-seed runs
    (compare_peer.py's ``seeds`` question repeats this interleaved, with min/median/max)."""
    progs = seed_programs(config, num_seeds)
    keys = progs["keys"]
    (_, vm_metrics), vmap_s = timed(progs["batched"], keys)
    t = time.perf_counter()
    finals = []
    for k in keys:
        _, m = jax.block_until_ready(progs["single"](k))
        finals.append(float(m.eval_return[-1]))
    sequential_s = time.perf_counter() - t
    vm_final = np.asarray(vm_metrics.eval_return[:, -1])
    return {
        "num_seeds": num_seeds,
        "env_steps_per_seed": progs["config"].sac.total_env_steps,
        "vmapped_compile_s": round(progs["vmapped_compile_s"], 2),
        "single_compile_s": round(progs["single_compile_s"], 2),
        "vmapped_run_s": round(vmap_s, 2),
        "sequential_run_s": round(sequential_s, 2),
        "speedup_sequential_over_vmapped": round(sequential_s / vmap_s, 2),
        "max_abs_final_return_diff_vmapped_vs_sequential": round(float(np.max(np.abs(vm_final - np.asarray(finals)))), 4),
    }


def distractors(config: mbpo_compare.CompareConfig, num_seeds):
    env = mbpo_config.make_env(config.mbpo)
    out = {"env": env.name, "num_distractors": config.mbpo.num_distractors}
    for name in ("mbpo", "vagram"):
        r = mbpo_compare.run_agent(name, config.mbpo, env, num_seeds, config.threshold)
        out[name] = {k: r[k] for k in ("agent", "num_seeds", "final_return_mean", "final_return_std", "final_returns",
                                        "eval_return_mean", "eval_return_std", "env_steps", "compile_s", "run_s",
                                        "last_model_val_mse")}
    out["vagram_minus_mle_final_mean"] = round(out["vagram"]["final_return_mean"] - out["mbpo"]["final_return_mean"], 2)
    paired = np.asarray(out["vagram"]["final_returns"]) - np.asarray(out["mbpo"]["final_returns"])
    out["paired_difference_per_seed"] = [round(float(d), 2) for d in paired]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "sweeps" / "mbpo_pendulum.toml"))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--compare-config", default=str(ROOT / "sweeps" / "mbpo_pendulum_quick.toml"))
    parser.add_argument("--compare-seeds", type=int, default=8)
    parser.add_argument("--distractor-config", default=str(ROOT / "sweeps" / "vagram_distractors_cpu.toml"))
    parser.add_argument("--distractor-seeds", type=int, default=None)
    parser.add_argument("--no-acceptance", action="store_true")
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--no-distractors", action="store_true")
    parser.add_argument("--out", default=None, help="also write bench_mbpo.json and learning-curve PNGs here")
    args = parser.parse_args()

    device = jax.devices()[0]
    result = {"benchmark": "mbpo", "platform": device.platform, "device_kind": device.device_kind,
              "num_devices": jax.device_count()}
    sections = (
        ("acceptance", args.no_acceptance, lambda: acceptance(mbpo_compare.load_compare_config(args.config), args.seeds)),
        ("vmap_vs_sequential", args.no_compare,
         lambda: vmap_vs_sequential(mbpo_compare.load_compare_config(args.compare_config), args.compare_seeds)),
        ("distractors", args.no_distractors,
         lambda: distractors(mbpo_compare.load_compare_config(args.distractor_config), args.distractor_seeds)),
    )
    for name, skip, run in sections:
        if skip:
            continue
        result[name] = run()
        print(json.dumps({name: result[name]}), flush=True)
    print(json.dumps(result, indent=2))
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_mbpo.json").write_text(json.dumps(result, indent=2))
        if "acceptance" in result:
            mbpo_compare.plot_curves([result["acceptance"]], out / "acceptance.png", "MBPO, Pendulum", -200.0)
        if "distractors" in result:
            d = result["distractors"]
            mbpo_compare.plot_curves([d["mbpo"], d["vagram"]], out / "distractors.png", d["env"], -200.0)


if __name__ == "__main__":
    main()
