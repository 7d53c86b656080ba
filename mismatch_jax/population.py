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
* sharding — when the caller's population axis is sharded over D devices (a ``NamedSharding`` on a
  mesh), pass ``num_shards = D``: the groups are formed inside each device's block of models (step
  s of the map runs group s of every device at once), so sharding and mapping compose without any
  data crossing devices.

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

    def resolve(self, backend: str | None = None, width: int | None = None,
                num_shards: int = 1) -> "PopulationLayout":
        """The concrete layout on ``backend`` (default: JAX's) for models whose widest layer has
        ``width`` units (``None``: unknown), the population sharded over ``num_shards`` devices:
        strategy "vmap" or "map" with ``group_size ≥ 1``."""
        if self.strategy == "auto" and _OVERRIDE is not None:
            return _OVERRIDE.resolve_default(backend, width, num_shards)
        return self.resolve_default(backend, width, num_shards)

    def resolve_default(self, backend: str | None, width: int | None, num_shards: int = 1) -> "PopulationLayout":
        """``resolve`` without the process-wide override (``use_layout``)."""
        if self.strategy == "vmap":
            return PopulationLayout("vmap", 0)
        default = default_layout(backend or jax.default_backend(), width, num_shards)
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


def default_layout(backend: str, width: int | None = None, num_shards: int = 1) -> PopulationLayout:
    """The documented default: ``lax.map`` one model at a time for models ≥ ``CPU_MAP_MIN_WIDTH``
    units wide on an unsharded CPU population; one ``vmap`` otherwise — on GPUs / TPUs, for narrow
    models, and when the CPU is split into several devices (there a map of plain GEMMs per device
    measured slower than vmap: RESULTS.md)."""
    if backend == "cpu" and num_shards == 1 and width is not None and width >= CPU_MAP_MIN_WIDTH:
        return PopulationLayout("map", 1)
    return PopulationLayout("vmap", 0)


def _leading(tree) -> int | None:
    leaves = jax.tree.leaves(tree)
    return leaves[0].shape[0] if leaves else None


def over_population(fn: Callable, layout: PopulationLayout | None, shared: Sequence[int] = (),
                    num_shards: int = 1, width: int | None = None,
                    per_model: Callable | None = None) -> Callable:
    """``fn`` (a population function: per-model arguments and outputs with leading axis [N]) run
    under ``layout``. ``shared``: positions of arguments every model uses whole (data, contexts);
    ``num_shards``: devices the population axis is sharded over (groups stay inside a device's
    block); ``width``: the models' widest layer, for ``"auto"``. Same signature as ``fn``.

    per_model: optional unbatched form of ``fn`` (one model's arguments and outputs, no [N]),
    e.g. ``f`` when ``fn = jax.vmap(f)``. A map of one model at a time then calls it directly
    instead of ``fn`` on a group of one: under a vmap (even of size 1) every ``lax.cond`` whose
    predicate depends on the model becomes a ``select`` that runs both branches, and ``per_model``
    keeps those skips real."""
    concrete = (layout or PopulationLayout()).resolve(width=width, num_shards=num_shards)
    if concrete.strategy == "vmap":
        return fn
    group = concrete.group_size
    if group == 1 and num_shards == 1 and per_model is not None:
        def one_at_a_time(*args):
            def run(model_args):
                return per_model(*[model_args[i] if i in model_args else a for i, a in enumerate(args)])

            return jax.lax.map(run, {i: a for i, a in enumerate(args) if i not in shared})

        return one_at_a_time

    def mapped(*args):
        per_model = {i: a for i, a in enumerate(args) if i not in shared}
        num_models = _leading(list(per_model.values()))
        if num_models is None:
            raise ValueError("over_population: no per-model argument with a leading [N] axis")
        if num_models % num_shards:
            raise ValueError(f"over_population: N = {num_models} is not a multiple of num_shards = {num_shards}")
        block = num_models // num_shards
        size = min(group, block)
        steps = -(-block // size)
        # Model order [shard, step, member] -> [step, shard * member]: step s holds member slots of
        # every shard, so a sharded population axis stays sharded in each step.
        slot = jnp.arange(num_shards)[:, None, None] * block + jnp.minimum(
            jnp.arange(steps)[None, :, None] * size + jnp.arange(size)[None, None, :], block - 1)
        order = jnp.swapaxes(slot, 0, 1).reshape(steps, num_shards * size)

        def gather(a):
            return a[order]

        def run(step_args):
            full = [step_args[i] if i in step_args else a for i, a in enumerate(args)]
            return fn(*full)

        outputs = jax.lax.map(run, jax.tree.map(gather, per_model))
        # [step, shard * member, ...] -> [shard, step * member, ...], padding (repeats) dropped.
        def scatter(a):
            a = a.reshape((steps, num_shards, size) + a.shape[2:])
            a = jnp.moveaxis(a, 1, 0).reshape((num_shards, steps * size) + a.shape[3:])
            return a[:, :block].reshape((num_models,) + a.shape[2:])

        return jax.tree.map(scatter, outputs)

    return mapped


def jit_sharded(fn: Callable, num_args: int, shared: Sequence[int] = (), devices=None) -> Callable:
    """``jax.jit(fn)`` with its per-model arguments (every position not in ``shared``) sharded
    along their leading [N] axis over ``devices`` (default: the local devices) and the shared
    ones replicated; with one device, plain ``jax.jit``. N must be a multiple of the device count.
    Arguments committed to another layout are re-laid out (``jax.device_put``) on each call."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = list(devices or jax.local_devices())
    if len(devices) == 1:
        return jax.jit(fn)
    mesh = Mesh(np.asarray(devices), ("pop",))
    per_model, whole = NamedSharding(mesh, PartitionSpec("pop")), NamedSharding(mesh, PartitionSpec())
    shardings = tuple(whole if i in shared else per_model for i in range(num_args))
    compiled = jax.jit(fn, in_shardings=shardings)

    def call(*args):
        # Arguments already committed elsewhere (e.g. the replicated output of another program
        # on the same devices) are moved to the expected layout first; jit would refuse them.
        return compiled(*(jax.device_put(a, sh) for a, sh in zip(args, shardings)))

    call.lower = compiled.lower  # AOT use (``jit_sharded(...).lower(*args).compile()``) keeps working
    return call
