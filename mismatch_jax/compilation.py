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
from pathlib import Path
from typing import Sequence

import jax


class BackgroundCompiler:
    """Compiles lowered programs in worker threads as they are submitted, so that compiling one
    program overlaps lowering (or running) the next. Use as a context manager::

        with BackgroundCompiler(workers) as compiler:
            future = compiler.submit(jax.jit(f).lower(*args))
            ...
            executable = future.result()
    """

    def __init__(self, max_workers: int | None = None):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or os.cpu_count() or 1)

    def submit(self, lowered: jax.stages.Lowered) -> "concurrent.futures.Future[jax.stages.Compiled]":
        """Starts compiling ``lowered``; the future's result is the executable."""
        return self._pool.submit(lowered.compile)

    def __enter__(self) -> "BackgroundCompiler":
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True)


def compile_concurrently(lowered: Sequence[jax.stages.Lowered],
                         max_workers: int | None = None) -> list[jax.stages.Compiled]:
    """Compiles every ``Lowered`` program in its own thread → executables in the same order.

    An executable takes exactly the argument shapes, dtypes and shardings it was lowered with.
    With the persistent compilation cache on, programs compiled before are loaded from it.
    """
    if len(lowered) <= 1:
        return [program.compile() for program in lowered]
    with BackgroundCompiler(max_workers or min(len(lowered), os.cpu_count() or 1)) as compiler:
        futures = [compiler.submit(program) for program in lowered]
        return [future.result() for future in futures]


def enable_compilation_cache(path: str | Path | None = None) -> None:
    """Persists compiled programs on disk (default ~/.cache/mismatch_jax/xla, or
    $MISMATCH_JAX_CACHE), so a resumed or repeated sweep does not compile again."""
    path = Path(path or os.environ.get("MISMATCH_JAX_CACHE") or Path.home() / ".cache" / "mismatch_jax" / "xla")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a cache is an optimisation only
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
