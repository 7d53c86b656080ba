"""Compiling several programs at once.

XLA compiles one program on one core, and on a 2-core CPU a cold quickstart spends more time
compiling (every program that steps the MJX cart-pole takes ~13 s for the physics alone) than
running. Programs whose argument shapes are known before they are needed are therefore lowered
(tracing holds the GIL, so it stays serial) and compiled in threads (XLA releases the GIL), and
the resulting executables are called directly.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Sequence

import jax


def compile_concurrently(lowered: Sequence[jax.stages.Lowered],
                         max_workers: int | None = None) -> list[jax.stages.Compiled]:
    """Compiles every ``Lowered`` program in its own thread → executables in the same order.

    An executable takes exactly the argument shapes, dtypes and shardings it was lowered with.
    With the persistent compilation cache on, programs compiled before are loaded from it.
    """
    if len(lowered) <= 1:
        return [program.compile() for program in lowered]
    workers = max_workers or min(len(lowered), os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: program.compile(), lowered))
