"""How a population axis is laid out on the hardware: one ``vmap``, a ``lax.map`` over groups, and
sharding over devices.

Every place that runs many models or seeds (the population trainer, the LL evaluation, the sweep's
reward stage, CEM over models, SAC / MBPO seeds, the attack and re-weighting evaluators) is written
as a *population function*: its per-model arguments and all its outputs carry a leading axis [N],
and model n's outputs depend only on model n's inputs and the shared arguments. ``over_population``
runs such a function under a ``PopulationLayout``:

* ``"vmap"`` — the function as written: all N models in one vectorised program. Every matmul
  becomes one batched GEMM over N. Best on GPUs / TPUs, and on CPUs when the per-model GEMMs are
  small (a batched GEMM of N tiny matrices beats N tiny calls).
* ``"map"`` — ``lax.map`` over groups of ``group_size`` models: the function runs on [group_size]
  models at a time, one group after another. On XLA:CPU a batched GEMM of N medium matrices runs
  well below the speed of a plain GEMM, so with ``group_size = 1`` (every matmul a plain GEMM) a
  population of models ≥ 64 wide trains 1.2–1.4× faster on one CPU device; the population-level
  ``lax.cond`` skips (rows past every model's count, epochs after every model stopped) then act
  per group.
* sharding — ``jit_sharded`` splits the population axis into D contiguous blocks, one per
  device, and runs the (laid out) population function on each block as its own program
  (``shard_map``): no data crosses devices and no device waits for another inside the call (a
  population-level ``lax.cond`` skip is decided per block). On a 2-core CPU split into 2 host
  devices this is how both cores stay busy with plain GEMMs: one model per core at a time,
  rather than Eigen splitting each small GEMM over two threads (benchmarks/RESULTS.md, session 9).

The numbers do not depend on the layout beyond float reassociation inside XLA's kernels (a
batched and a plain GEMM may sum in different orders): models are independent, keys are per
model, and padding repeats a real model whose outputs are dropped. ``"auto"`` resolves to the
documented default of the backend (``default_layout``): measured by
``benchmarks/bench_layout.py`` and recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mismatch_jax.config_io import Schema, setting

Strategy = Literal["auto", "vmap", "map"]


@dataclasses.dataclass(frozen=True)
class PopulationLayout(Schema):
    """The ``[run.layout]`` / ``layout`` table: how many models run side by side.

    strategy: "vmap" (all at once), "map" (``group_size`` at a time) or "auto" (the backend's
        documented default, ``default_layout``).
    group_size: models per step of the map (``"map"`` only; 0 = the default of the backend).
    """

    strategy: Strategy = "auto"
    group_size: int = setting(0, ge=0)

    def resolve(self, backend: str | None = None, width: int | None = None) -> "PopulationLayout":
        """The concrete layout on ``backend`` (default: JAX's) for models whose widest layer has
        ``width`` units (``None``: unknown): strategy "vmap" or "map" with ``group_size ≥ 1``.
        Under ``jit_sharded`` it applies inside each device's block."""
        if self.strategy == "auto" and _OVERRIDE is not None:
            return _OVERRIDE.resolve_default(backend, width)
        return self.resolve_default(backend, width)

    def resolve_default(self, backend: str | None, width: int | None) -> "PopulationLayout":
        """``resolve`` without the process-wide override (``use_layout``)."""
        if self.strategy == "vmap":
            return PopulationLayout("vmap", 0)
        default = default_layout(backend or jax.default_backend(), width)
        if self.strategy == "auto":
            return default if self.group_size == 0 or default.strategy == "vmap" else \
                PopulationLayout("map", self.group_size)
        return PopulationLayout("map", self.group_size or max(default.group_size, 1))


_OVERRIDE: PopulationLayout | None = None


def use_layout(layout: PopulationLayout | None) -> None:
    """Sets the process-wide layout that every ``"auto"`` layout resolves to (the command line's
    ``--layout``; None: back to the documented defaults). Explicit ``"vmap"`` / ``"map"`` in a
    config still win."""
    global _OVERRIDE
    _OVERRIDE = layout


def parse_layout(text: str) -> PopulationLayout:
    """``"vmap"``, ``"auto"``, ``"map"`` or ``"map:G"`` (G models per group) → a layout."""
    from mismatch_jax.errors import InputError

    strategy, _, group = text.partition(":")
    if strategy not in ("auto", "vmap", "map") or (group and not group.isdigit()):
        raise InputError(f"--layout must be vmap, auto, map or map:GROUP_SIZE, got {text!r}")
    return PopulationLayout(strategy, int(group or 0))


# Below this width a per-model GEMM is too small for a plain GEMM call to beat the batched one
# on XLA:CPU (measured: benchmarks/bench_layout.py, RESULTS.md "Population layout").
CPU_MAP_MIN_WIDTH = 64


def default_layout(backend: str, width: int | None = None) -> PopulationLayout:
    """The documented default: ``lax.map`` one model at a time for models ≥ ``CPU_MAP_MIN_WIDTH``
    units wide on a CPU (inside each device's block when the population is sharded); one ``vmap``
    otherwise — on GPUs / TPUs and for narrow models."""
    if backend == "cpu" and width is not None and width >= CPU_MAP_MIN_WIDTH:
        return PopulationLayout("map", 1)
    return PopulationLayout("vmap", 0)


def _leading(tree) -> int | None:
    leaves = jax.tree.leaves(tree)
    return leaves[0].shape[0] if leaves else None


def over_population(fn: Callable, layout: PopulationLayout | None, shared: Sequence[int] = (),
                    width: int | None = None, per_model: Callable | None = None) -> Callable:
    """``fn`` (a population function: per-model arguments and outputs with leading axis [N]) run
    under ``layout``. ``shared``: positions of arguments every model uses whole (data, contexts);
    ``width``: the models' widest layer, for ``"auto"``. Same signature as ``fn``.

    per_model: optional unbatched form of ``fn`` (one model's arguments and outputs, no [N]),
    e.g. ``f`` when ``fn = jax.vmap(f)``. A map of one model at a time then calls it directly
    instead of ``fn`` on a group of one: under a vmap (even of size 1) every ``lax.cond`` whose
    predicate depends on the model becomes a ``select`` that runs both branches, and ``per_model``
    keeps those skips real."""
    concrete = (layout or PopulationLayout()).resolve(width=width)
    if concrete.strategy == "vmap":
        return fn
    group = concrete.group_size
    if group == 1 and per_model is not None:
        def one_at_a_time(*args):
            def run(model_args):
                return per_model(*[model_args[i] if i in model_args else a for i, a in enumerate(args)])

            return jax.lax.map(run, {i: a for i, a in enumerate(args) if i not in shared})

        return one_at_a_time

    def mapped(*args):
        per_model_args = {i: a for i, a in enumerate(args) if i not in shared}
        num_models = _leading(list(per_model_args.values()))
        if num_models is None:
            raise ValueError("over_population: no per-model argument with a leading [N] axis")
        size = min(group, num_models)
        steps = -(-num_models // size)
        # [steps, size] model indices; the last group is padded by repeating the last model, whose
        # extra outputs are dropped.
        order = jnp.minimum(jnp.arange(steps * size), num_models - 1).reshape(steps, size)

        def run(step_args):
            return fn(*[step_args[i] if i in step_args else a for i, a in enumerate(args)])

        outputs = jax.lax.map(run, jax.tree.map(lambda a: a[order], per_model_args))
        return jax.tree.map(lambda a: a.reshape((steps * size,) + a.shape[2:])[:num_models], outputs)

    return mapped


def devices_dividing(num_models: int, devices=None) -> list:
    """The devices to split a population of ``num_models`` over: all of ``devices`` (default: the
    local devices) when their count divides it, else the first one alone (the call then runs
    unsplit rather than padding the population)."""
    devices = list(devices or jax.local_devices())
    return devices if num_models % len(devices) == 0 else devices[:1]


def _blocks(devices, num_args: int, shared: Sequence[int]):
    """(mesh over ``devices`` with one axis "pop", per-argument specs: split or replicated)."""
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.asarray(list(devices)), ("pop",))
    return mesh, tuple(PartitionSpec() if i in shared else PartitionSpec("pop") for i in range(num_args))


def split_over_devices(fn: Callable, num_args: int, shared: Sequence[int], devices) -> Callable:
    """``fn`` (unjitted) with its per-model arguments (positions not in ``shared``) cut along the
    leading axis into one contiguous block per device and the shared ones replicated; each device
    runs ``fn`` on its block (``shard_map``, no collectives) and the outputs, each with the
    leading axis, are concatenated back in order. Usable inside a larger traced function (the
    planner splits a CEM call's candidates with it); ``jit_sharded`` is its jitted form."""
    from jax.sharding import PartitionSpec

    mesh, specs = _blocks(devices, num_args, shared)
    # check_vma=False: the blocks never communicate, and a population-level cond whose predicate
    # differs between blocks is exactly what each block should decide for itself.
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("pop"), check_vma=False)


def jit_sharded(fn: Callable, num_args: int, shared: Sequence[int] = (), devices=None) -> Callable:
    """``jax.jit`` of the population function ``fn`` with its population split over ``devices``
    (default: the local devices): the per-model arguments (every position not in ``shared``) are
    cut along their leading [N] axis into one contiguous block per device, the shared ones are
    replicated, and each device runs ``fn`` on its own block as an independent program
    (``shard_map``; no collectives). Every output of ``fn`` must carry the leading [N] axis
    (outputs are concatenated back in model order). With one device, plain ``jax.jit``. N must
    be a multiple of the device count (ValueError otherwise). Arguments committed to another
    layout are re-laid out (``jax.device_put``) on each call."""
    from jax.sharding import NamedSharding

    devices = list(devices or jax.local_devices())
    if len(devices) == 1:
        return jax.jit(fn)
    mesh, specs = _blocks(devices, num_args, shared)
    shardings = tuple(NamedSharding(mesh, spec) for spec in specs)
    compiled = jax.jit(split_over_devices(fn, num_args, shared, devices), in_shardings=shardings)

    def check(args):
        for i, a in enumerate(args):
            leaves = [] if i in shared else jax.tree.leaves(a)
            if leaves and leaves[0].shape[0] % len(devices):
                raise ValueError(f"jit_sharded: argument {i} has N = {leaves[0].shape[0]} models, not a "
                                 f"multiple of the {len(devices)} devices; pad the population or use fewer devices")

    def call(*args):
        check(args)
        # Arguments already committed elsewhere (e.g. the replicated output of another program
        # on the same devices) are moved to the expected layout first; jit would refuse them.
        return compiled(*(jax.device_put(a, sh) for a, sh in zip(args, shardings)))

    def lower(*args):
        check(args)
        return compiled.lower(*args)

    call.lower = lower  # AOT use (``jit_sharded(...).lower(*args).compile()``) keeps working
    return call
