"""An MBPO-family agent's seeds, run in blocks: here one block after another, or one Ray task per
block (``mismatch-jax mbpo CONFIG --ray [ADDRESS]``).

A block is ``seeds_per_program`` consecutive seeds (0 = all of them, the default: one program)
run as one compiled program ``jit(vmap(train))`` over this process's devices, exactly as
``mbpo_compare.run_agent`` has always run all seeds. Seed i's key is ``seed_keys(config)[i]``
whatever block it lands in, so a block's numbers depend only on the block (its seeds, its size
and the devices its program is split over), not on where it runs: the same
``seeds_per_program`` and devices per program give bit-identical returns locally and on Ray
(``tests/experiments/test_mbpo_seeds.py``). Different block sizes or device counts compile to
different programs and agree only to float round-off.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from typing import Callable, Optional

import jax
import numpy as np

from mismatch_jax.agents import mbpo, mbpo_config
from mismatch_jax.errors import InputError
from mismatch_jax.population import devices_dividing, jit_sharded, over_population


def seed_blocks(num_seeds: int, seeds_per_program: int) -> list[tuple[int, int]]:
    """(first seed, seed count) of every block: ``seeds_per_program`` seeds each (0 = all), the
    last block the remainder."""
    size = seeds_per_program or num_seeds
    return [(first, min(size, num_seeds - first)) for first in range(0, num_seeds, size)]


def run_seed_block(config: mbpo_config.MBPOConfig, first: int, count: int, num_devices: int = 0,
                   cache_dir: Optional[str] = None, env=None, programs: Optional[dict] = None) -> dict:
    """Runs seeds ``first`` … ``first + count - 1`` of ``config`` (an agent's resolved config) as
    one program split over this process's devices (where they divide ``count``); returns
    {"metrics": the ``mbpo.train`` metrics pytree as NumPy, leading axis [count],
    "compile_s", "run_s", "devices"}. ``num_devices`` > 0 (a Ray task): refuses a worker that
    sees another device count, since the program and so the numbers would differ. ``env``:
    ``mbpo_config.make_env(config)`` when None (a Ray task builds its own; the distractor draw
    is a function of the config). ``programs``: compiled block programs by seed count, filled and
    reused across calls (blocks of one size are one program: compiled once, same numbers)."""
    if num_devices and len(jax.local_devices()) != num_devices:
        raise InputError(f"a Ray worker on {socket.gethostname()} (pid {os.getpid()}) sees "
                         f"{len(jax.local_devices())} device(s), but the seed blocks were planned for "
                         f"{num_devices}; match --devices to what each task gets")
    if cache_dir:
        from mismatch_jax.compilation import enable_compilation_cache

        enable_compilation_cache(cache_dir)
    env = mbpo_config.make_env(config) if env is None else env
    keys = mbpo.seed_keys(config)[first:first + count]
    devices = devices_dividing(count)
    programs = {} if programs is None else programs
    t = time.perf_counter()
    if count not in programs:
        train = mbpo.make_train(config, env)
        program = jit_sharded(over_population(jax.vmap(train), None, width=config.sac.hidden_size,
                                              per_model=train), 1, devices=devices)
        programs[count] = program.lower(keys).compile()
    compiled = programs[count]
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    _, metrics = jax.block_until_ready(compiled(keys))
    return {"metrics": jax.device_get(metrics), "compile_s": compile_s, "run_s": time.perf_counter() - t,
            "devices": len(devices)}


def run_seeds(config: mbpo_config.MBPOConfig, seeds_per_program: int = 0, cluster=None,
              status: Callable[[str], None] = lambda s: None, env=None) -> dict:
    """Every seed of ``config`` (an agent's resolved config) in blocks (``seed_blocks``): one after
    another in this process, or one Ray task per block on ``cluster`` (a
    ``sweep.ray_runner.ChunkCluster``). Returns ``run_seed_block``'s dict for all seeds: metrics
    concatenated in seed order, compile_s and run_s summed over blocks (on Ray: the blocks' own
    times, which overlap), devices per block."""
    blocks = seed_blocks(config.sac.num_seeds, seeds_per_program)
    if cluster is None:
        programs = {}
        parts = [run_seed_block(config, first, count, env=env, programs=programs) for first, count in blocks]
    else:
        cache = os.environ.get("MISMATCH_JAX_CACHE")
        calls = [(config, first, count, cluster.devices_per_task, cache) for first, count in blocks]
        names = [f"seeds {first}..{first + count - 1}" for first, count in blocks]
        parts = [None] * len(blocks)
        for index, part in cluster.map(run_seed_block, calls, names, status, "seed-block"):
            parts[index] = part
    return {"metrics": jax.tree.map(lambda *leaves: np.concatenate(leaves), *[p["metrics"] for p in parts]),
            "compile_s": sum(p["compile_s"] for p in parts), "run_s": sum(p["run_s"] for p in parts),
            "devices": parts[0]["devices"], "blocks": len(blocks)}


def with_seeds(config: mbpo_config.MBPOConfig, num_seeds: Optional[int]) -> mbpo_config.MBPOConfig:
    """``config`` with ``num_seeds`` seeds (unchanged when None)."""
    if num_seeds is None:
        return config
    return dataclasses.replace(config, sac=dataclasses.replace(config.sac, num_seeds=num_seeds))
