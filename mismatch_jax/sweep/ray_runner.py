"""A sweep's chunks as Ray tasks: the way past one machine.

The driver (``sweep.runner.run_sweep`` with ``ray=RayOptions(...)``) connects to a cluster
(``connect``), builds the datasets itself, puts the sweep's ``SweepInputs`` into Ray's object store
once, and submits one task per chunk (``ChunkCluster.run``) with a resource request — one GPU per
task where the cluster has GPUs, else one CPU (both configurable); every task runs
``chunk_task.run_chunk_task``, the same ``ChunkRunner`` the local loop runs, so its rows are the
local run's for the same chunk size and devices per task. Results come back to the driver, which
alone writes files: the workers need no shared filesystem. A task whose worker or node dies is
retried by Ray (``max_retries``); a killed driver leaves the chunks it wrote, and ``--resume``
continues from them.

Addresses: None — ``RAY_ADDRESS`` when set, else a Ray instance started on this machine for the
sweep; ``"auto"`` — ``RAY_ADDRESS``, else the cluster ``ray start`` started on this machine;
``HOST:PORT`` — that cluster's head (GCS); ``ray://HOST:PORT`` — Ray Client. A HOST:PORT that
does not answer is refused within seconds, naming the address (and the variable it came from).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from typing import Callable, Iterator

from mismatch_jax.errors import InputError
from mismatch_jax.sweep.chunk_task import ChunkResult, ChunkTask, SweepInputs, run_chunk_task

CONNECT_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how a sweep's chunk tasks run. address: see the module docstring. num_gpus:
    GPUs per task (None: 1 where the cluster has GPUs, else 0); num_cpus: CPUs per task;
    max_retries: times Ray re-runs a task whose worker or node died; devices: XLA CPU devices
    per task when it gets no GPU (``--devices``; 0 = one)."""

    address: str | None = None
    num_gpus: float | None = None
    num_cpus: float = 1.0
    max_retries: int = 3
    devices: int = 0

    def check(self) -> None:
        """Raises ``InputError`` naming the flag of a value out of range."""
        for flag, value, low in (("--ray-cpus", self.num_cpus, 0.0), ("--ray-gpus", self.num_gpus, 0.0)):
            if value is not None and not (math.isfinite(value) and value >= low):
                raise InputError(f"{flag} must be a finite number >= {low:g}, got {value}")
        if self.num_gpus is not None and self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise InputError(f"--ray-gpus must be a whole number above 1 (each GPU is one device of a task's "
                             f"chunk), got {self.num_gpus}")
        if not 0 <= self.max_retries <= 1000:
            raise InputError(f"--ray-retries must be in [0, 1000], got {self.max_retries}")


def resolve_address(address: str | None) -> tuple[str, str]:
    """(the address to give ``ray.init``, what to call it in an error: the flag or the
    environment variable it came from). Checks a HOST:PORT's form and that something listens
    there (within ``CONNECT_TIMEOUT_S``), so a wrong address fails now rather than after
    Ray's own minute of retries."""
    named = f"--ray {address}"
    if address in (None, "auto"):
        if os.environ.get("RAY_ADDRESS"):
            address, named = os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
        else:
            return ("local" if address is None else "auto"), ("--ray" if address is None else named)
    if address in ("local", "auto"):
        return address, named
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{named}: expected HOST:PORT (the head node's `ray start --head --port` address), "
                         "ray://HOST:PORT, 'auto', or nothing for a local Ray instance")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{named}: no Ray cluster answers at {hostport} ({reason}); start one with "
                         f"`ray start --head --port {port}` there, or fix the address") from None
    return address, named


class ChunkCluster:
    """A connection to a Ray cluster that runs a sweep's chunks (``connect`` makes it)."""

    def __init__(self, options: RayOptions, address: str):
        import ray

        self.options, self.address, self.started_here = options, address, address == "local"
        resources = ray.cluster_resources()
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self.cpus, self.gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        self.num_gpus = options.num_gpus if options.num_gpus is not None else (1.0 if self.gpus else 0.0)
        self.devices_per_task = max(1, int(self.num_gpus)) if self.num_gpus else max(1, options.devices)

    def describe(self) -> str:
        """One line: the cluster and what each task asks for."""
        ask = f"{self.options.num_cpus:g} CPU" + (f" + {self.num_gpus:g} GPU" if self.num_gpus else "")
        where = "a local instance" if self.started_here else self.address
        return (f"Ray ({where}: {self.nodes} node(s), {self.cpus:g} CPU, {self.gpus:g} GPU; {ask} and "
                f"{self.devices_per_task} device(s) per task)")

    def run(self, inputs: SweepInputs, tasks: list[ChunkTask], digest: str,
            status: Callable[[str], None]) -> Iterator[ChunkResult]:
        """Submits one task per chunk and yields their results as they finish (any order).
        Raises ``InputError`` for a task's bad-input error (e.g. a worker with another device
        count) and ``RuntimeError`` naming the chunk when Ray gives up on one."""
        import ray

        if not tasks:
            return
        shared = ray.put(inputs)
        key = f"{digest}-{shared.hex()}"
        cache = os.environ.get("MISMATCH_JAX_CACHE")
        calls = [(key, shared, task, self.devices_per_task, bool(self.num_gpus), cache) for task in tasks]
        names = [f"chunk {task.first}..{task.last} ({task.kind})" for task in tasks]
        for _, result in self.map(run_chunk_task, calls, names, status, "chunk"):
            yield result

    def map(self, function: Callable, calls: list[tuple], names: list[str], status: Callable[[str], None],
            what: str = "task") -> Iterator[tuple[int, object]]:
        """Runs ``function(*call)`` for every call as one Ray task with this cluster's resource
        request (and the ``--devices`` split in every CPU worker); yields (index, result) as
        they finish. A task's ``InputError`` is raised as one; when Ray gives up on a task
        (its worker or node died ``max_retries`` + 1 times) a ``RuntimeError`` names it
        (``names[index]``). ``function`` must be importable on the workers (a module-level
        function of this package)."""
        import ray

        env_vars = {}
        if not self.num_gpus and self.devices_per_task > 1:  # the --devices split, in every worker
            env_vars["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={self.devices_per_task}"
        settings = dict(num_cpus=self.options.num_cpus, num_gpus=self.num_gpus, max_retries=self.options.max_retries,
                        retry_exceptions=False)
        if env_vars:
            settings["runtime_env"] = {"env_vars": env_vars}
        remote = ray.remote(function).options(**settings)
        pending = {remote.remote(*call): index for index, call in enumerate(calls)}
        status(f"{len(pending)} {what} task(s) on Ray")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                if isinstance(cause, InputError):
                    raise InputError(str(cause)) from None
                raise RuntimeError(f"{names[index]} failed in its Ray task: {exc}") from None
            except ray.exceptions.RayError as exc:
                raise RuntimeError(f"{names[index]}: Ray gave up after {self.options.max_retries} retries "
                                   f"({type(exc).__name__}); what was written is kept — re-run with --resume "
                                   "where the command has it") from None
            status(f"{len(pending)} {what} task(s) on Ray")
            yield index, result

    def close(self) -> None:
        """Disconnects (and stops the Ray instance this driver started)."""
        import ray

        ray.shutdown()


def connect(options: RayOptions, log: Callable[[str], None] = print) -> ChunkCluster:
    """Checks ``options``, connects to (or starts) the cluster and logs one line about it;
    raises ``InputError`` naming the address (and its variable) when nothing answers there."""
    options.check()
    address, named = resolve_address(options.address)
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'mismatch-jax[ray]'") from None
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                 include_dashboard=False if address == "local" else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"{named}: cannot connect to a Ray cluster ({str(exc).splitlines()[0][:200]})") from None
    cluster = ChunkCluster(options, address)
    log(f"connected to {cluster.describe()}")
    return cluster
