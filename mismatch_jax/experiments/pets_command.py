"""``mismatch-jax pets``: PETS (``agents.pets``) with a per-trial progress display, its rewards
written as JSON and drawn (``analysis.pets``)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mismatch_jax.agents.config import PetsConfig, load_pets_config
from mismatch_jax.agents.pets import compile_trial_loop, make_pets, seed_keys
from mismatch_jax.analysis.pets import plot_pets_rewards
from mismatch_jax.envs.registry import make
from mismatch_jax.files import check_writable, write_json
from mismatch_jax.planning.mpc import candidate_devices_for


def run_pets_command(config: Optional[PetsConfig] = None, out_dir: str = "runs/pets", *, env=None,
                     console=None) -> dict:
    """Runs PETS with a per-trial progress bar; writes ``out_dir/pets_rewards.json`` and
    ``pets_rewards.png`` (reward per trial and seed).

    A Python loop around a jitted ``trial_step`` (the same function ``run_seeds`` scans), so the
    display updates between trials. config None: the packaged CPU config. Returns the JSON dict
    (rewards per seed and trial, mean, timings).
    """
    config = load_pets_config() if config is None else config
    check_writable(out_dir)
    env = env if env is not None else make(config.env)
    console = console or Console()
    # Several (host) devices (`--devices`): each planning call's candidates are split over them.
    candidate_devices = candidate_devices_for(config.cem_config(env))
    pets = make_pets(config, env, candidate_devices=candidate_devices)
    keys = seed_keys(config)
    t0 = time.perf_counter()
    init, trial_step = compile_trial_loop(pets, keys, donate_state=True)
    t_compile = time.perf_counter() - t0
    state, random_reward = jax.block_until_ready(init(keys))
    t_init = time.perf_counter() - t0 - t_compile
    console.print(f"PETS {config.env}: {config.num_seeds} seed(s) from seed {config.seed}, "
                  f"{config.num_trials} trials × {pets.trial_length} steps; random trial reward "
                  f"{np.round(np.asarray(random_reward), 1).tolist()}")
    rewards, trial_times = [], []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("trials", total=config.num_trials)
        for trial in range(config.num_trials):
            t = time.perf_counter()
            state, metrics = trial_step(state)
            reward = np.asarray(jax.block_until_ready(metrics.reward))
            trial_times.append(time.perf_counter() - t)
            rewards.append(reward.tolist())
            progress.console.print(
                f"trial {trial + 1:3d}: reward {np.round(reward, 1).tolist()} "
                f"(mean {reward.mean():.1f}, {trial_times[-1]:.1f} s)")
            progress.update(task, advance=1)
    per_seed = np.asarray(rewards).T  # [S, num_trials]
    out = {
        "env": config.env, "config": dataclasses.asdict(config), "seed": config.seed,
        "device": jax.devices()[0].device_kind,
        "candidate_devices": len(candidate_devices) if candidate_devices else 1,
        "random_reward": np.asarray(random_reward).tolist(),
        "trial_rewards": per_seed.tolist(), "mean_trial_rewards": per_seed.mean(0).tolist(),
        "best_reward": per_seed.max(1).tolist(), "compile_s": t_compile, "init_s": t_init, "trial_s": trial_times,
        "total_s": time.perf_counter() - t0,
    }
    path = os.path.join(out_dir, "pets_rewards.json")
    write_json(path, out, indent=1)
    plot_pets_rewards(per_seed, np.asarray(random_reward), os.path.join(out_dir, "pets_rewards.png"),
                      f"PETS {config.env}")
    console.print(f"wrote {path} and pets_rewards.png")
    return out
