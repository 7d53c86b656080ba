"""The chunk-task interface: what one chunk of a sweep needs, and the one function that turns a
chunk into its table rows — called by the local loop (``sweep.runner``) and by a Ray task
(``sweep.ray_runner``) alike, so both run the same program on the same arguments.

``SweepInputs`` holds everything a chunk takes besides its model range, as host (NumPy) arrays so
that it can travel (pickled into Ray's object store once per sweep). A ``ChunkRunner`` places
those inputs on its process's devices once (replicated over a ``pop`` mesh of the local devices),
lowers and compiles one program per model type (``sweep.chunk.make_chunk_fn``; in background
threads when given a ``BackgroundCompiler``) and runs ``ChunkTask``s → ``ChunkResult`` (the rows
``chunk_rows`` makes, plus timings). Writing the rows is the driver's job: nothing here touches
files. ``run_chunk_task`` is the entry point of a remote task: it keeps one runner per process,
so a worker that runs many chunks of a sweep places the data and compiles each program once.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import pandas as pd

from mismatch_jax.sweep.chunk import chunk_model_arguments, chunk_rows, make_chunk_fn
from mismatch_jax.sweep.config import SweepConfig


class PetsRows(NamedTuple):
    """What a PETS population's rows carry beyond the chunk's outputs: trial_rewards [S, T + 1]
    and train_rows [S · T] (``PetsPopulationData``'s fields of the same names)."""

    trial_rewards: np.ndarray
    train_rows: np.ndarray


class SweepInputs(NamedTuple):
    """A sweep's shared chunk arguments on the host. train_data, eval_sets, env_settings as
    ``chunk.stack_study_data`` returns them (a PETS population's as ``PetsPopulationData``'s);
    pets_models: PETS's own (params, normalizer) [S · T, ...] or None; settings: the
    ``env_params.Settings`` (table columns) or None; pets_rows: ``PetsRows`` or None."""

    config: SweepConfig
    train_data: Any
    eval_sets: tuple
    env_settings: Any
    pets_models: Any = None
    settings: Any = None
    pets_rows: PetsRows | None = None

    @classmethod
    def on_host(cls, config: SweepConfig, train_data, eval_sets, env_settings, settings=None,
                pets=None) -> "SweepInputs":
        """The inputs with every array fetched to NumPy (``pets``: a ``PetsPopulationData``)."""
        get = jax.device_get
        return cls(config, get(train_data), get(eval_sets), get(env_settings),
                   None if pets is None else get(pets.pets_models),
                   None if settings is None else settings._replace(params=get(settings.params)),
                   None if pets is None else PetsRows(np.asarray(pets.trial_rewards), np.asarray(pets.train_rows)))


class ChunkTask(NamedTuple):
    """Models first..last (inclusive) of type ``kind``, run as a program for ``size`` models
    (the last chunk of a type is padded by repeating its last model)."""

    kind: str
    first: int
    last: int
    size: int


class ChunkResult(NamedTuple):
    """One chunk's table rows and where / how long it ran (host: "<hostname> pid <pid>";
    seconds: the program's run; compile_wait_s: time spent waiting for its compile)."""

    task: ChunkTask
    frame: pd.DataFrame
    seconds: float
    compile_wait_s: float
    host: str
    devices: list[str]


class ChunkRunner:
    """Runs chunk tasks of one sweep on this process's devices (see the module docstring)."""

    def __init__(self, inputs: SweepInputs, devices=None):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from mismatch_jax.envs import make

        self.inputs, self.config = inputs, inputs.config
        self.env = make(self.config.env)
        self.devices = list(devices or jax.local_devices())
        self.mesh = Mesh(np.asarray(self.devices), ("pop",))
        self._sharded = NamedSharding(self.mesh, PartitionSpec("pop"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._shared: dict[bool, tuple] = {}
        self._programs: dict[str, Any] = {}

    def shared(self, kind: str) -> tuple:
        """The replicated shared arguments of a chunk of ``kind``: PETS's own models take the
        training data's place for model type "PETS" (``chunk.ChunkParts.train``)."""
        pets = kind == "PETS"
        if pets not in self._shared:
            first = self.inputs.pets_models if pets else self.inputs.train_data
            self._shared[pets] = jax.device_put((first, self.inputs.eval_sets, self.inputs.env_settings),
                                                self._replicated)
        return self._shared[pets]

    def arguments(self, task: ChunkTask) -> tuple[np.ndarray, tuple]:
        """(the chunk's model indices [n], its per-model arguments [size] on the devices)."""
        indices = np.arange(task.first, task.last + 1)
        padded = np.concatenate([indices, np.full(task.size - indices.size, indices[-1])]).astype(np.int32)
        return indices, jax.device_put((padded, *chunk_model_arguments(self.config, padded)), self._sharded)

    def prepare(self, task: ChunkTask, compiler=None) -> None:
        """Lowers the program of ``task.kind`` (serially: tracing holds the GIL) and compiles it,
        in ``compiler``'s threads when given (a ``compilation.BackgroundCompiler``)."""
        if task.kind in self._programs:
            return
        fn = make_chunk_fn(self.config, self.env, task.kind, self.mesh)
        lowered = fn.lower(*self.arguments(task)[1], *self.shared(task.kind))
        self._programs[task.kind] = compiler.submit(lowered) if compiler is not None else lowered.compile()

    def run(self, task: ChunkTask) -> ChunkResult:
        """Runs one chunk → its rows (one per model × eval epoch, ``chunk.chunk_rows``)."""
        self.prepare(task)
        indices, per_model = self.arguments(task)
        t = time.perf_counter()
        program = self._programs[task.kind]
        if hasattr(program, "result"):  # a future of the background compiler
            program = self._programs[task.kind] = program.result()
        compile_wait = time.perf_counter() - t
        t = time.perf_counter()
        out = jax.device_get(program(*per_model, *self.shared(task.kind)))
        seconds = time.perf_counter() - t
        out = {k: np.asarray(v)[: indices.size] for k, v in out.items()}
        frame = chunk_rows(self.config, indices, out, list(self.config.datasets.eval), self.inputs.settings,
                           self.inputs.pets_rows)
        return ChunkResult(task, frame, seconds, compile_wait, f"{socket.gethostname()} pid {os.getpid()}",
                           [str(d) for d in self.devices])


_RUNNER: dict[str, ChunkRunner] = {}  # this process's runner, by the key of its sweep


def run_chunk_task(key: str, inputs: SweepInputs, task: ChunkTask, num_devices: int, gpu: bool = False,
                   cache_dir: str | None = None) -> ChunkResult:
    """The body of one remote chunk task: runs ``task`` with a runner kept per process for the
    sweep ``key`` (its config hash and inputs' identity), after checking that this worker sees
    the ``num_devices`` devices the driver planned chunks for (GPUs when ``gpu``; so its numbers
    are the local run's); ``cache_dir``: the persistent compilation cache to use, if any."""
    from mismatch_jax.errors import InputError

    if key not in _RUNNER:
        from mismatch_jax.compilation import enable_compilation_cache

        enable_compilation_cache(cache_dir)
        devices = jax.local_devices()
        if len(devices) != num_devices or gpu != (devices[0].platform == "gpu"):
            raise InputError(f"a Ray worker on {socket.gethostname()} (pid {os.getpid()}) sees {len(devices)} "
                             f"device(s) ({devices[0].platform}), but chunks were planned for {num_devices} "
                             f"{'GPU' if gpu else 'CPU'} device(s); match --ray-gpus (GPU) or --devices (CPU) "
                             "to what each task gets, and install jax with GPU support on GPU nodes")
        _RUNNER.clear()  # one sweep at a time per worker: drop another sweep's data and programs
        _RUNNER[key] = ChunkRunner(inputs, devices)
    return _RUNNER[key].run(task)
