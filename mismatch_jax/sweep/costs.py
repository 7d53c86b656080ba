"""What a compiled program costs, from XLA's own analyses, and how long that takes on a named
device.

XLA's ``compiled.cost_analysis()`` counts the body of every ``while`` loop (every ``lax.scan`` /
``lax.map`` / ``fori_loop``) **once**, whatever its trip count, so for the loop-built programs of
a sweep it undercounts by orders of magnitude. ``program_cost`` corrects that with XLA's own
numbers: it cuts the optimised HLO (``compiled.as_text()``) into one module per loop body,
asks XLA's cost analysis (``hlo_module_cost_analysis``, the function behind
``compiled.cost_analysis()``) for each, and weights each body by the ``known_trip_count`` that
XLA annotates on the loop — recursively, so a loop inside a loop counts outer × inner times:

    T(X) = C(X) + Σ_{loops w directly in X} [ n_w · s_w · T(body_w) − C(body_w) + n_w · C(cond_w) ]

(C: XLA's count with every body once; n_w: the trip count; s_w: an optional scale for loops that
skip work at run time, see ``trip_scale``). A loop without a known trip count (a data-dependent
``while_loop``) is counted once and reported in ``unknown_loops``. A ``lax.cond`` counts as its
most expensive branch (XLA's rule), an upper bound where a branch is skipped at run time.

``DEVICES`` holds peak rates of named devices (datasheet figures, sources cited) and
``measure_cpu`` measures this machine; ``roofline_s`` is max(FLOPs / peak, bytes / bandwidth).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable

_HEAD = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s+\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_NAME = re.compile(r"%([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
# Instructions that launch no work of their own (views, tuples, control flow whose bodies count).
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional",
         "call", "after-all", "partition-id", "replica-id", "opt-barrier", "domain"}


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs, transcendental ops, bytes read + written and executed HLO ops (kernels) of one run."""

    flops: float = 0.0
    transcendentals: float = 0.0
    bytes: float = 0.0
    ops: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __sub__(self, other: "Cost") -> "Cost":
        return self + other * -1.0

    def __mul__(self, k: float) -> "Cost":
        return Cost(*(a * k for a in dataclasses.astuple(self)))

    __rmul__ = __mul__


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """One compiled program: ``cost`` trip-count weighted (one execution), ``xla`` what
    ``cost_analysis()`` says (every loop body once), ``peak_bytes`` its peak memory on one device
    (``memory_analysis``: arguments + outputs + temporaries − aliased), ``loops`` the while loops
    with a known trip count, ``unknown_loops`` those without (counted once)."""

    cost: Cost
    xla: Cost
    peak_bytes: int
    loops: int
    unknown_loops: int


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    """One stage: ``program`` is one execution on one device; it runs ``runs`` times in all, of
    which ``parallel`` at a time (one per device)."""

    name: str
    program: ProgramCost
    runs: int
    parallel: int

    @property
    def total(self) -> Cost:
        """What all its runs cost together."""
        return self.program.cost * self.runs


@dataclasses.dataclass(frozen=True)
class _Loop:
    body: str
    condition: str
    trips: int | None
    where: tuple[str, str]  # (file, function) of the innermost Python frame that built it


class HloModuleText:
    """The optimised HLO text of a compiled program, cut into computations: their lines, the
    computations each calls, the while loops each contains and where (file, function) each loop
    was built."""

    def __init__(self, text: str):
        self.header: list[str] = []  # the metadata tables every sub-module keeps
        self.lines: dict[str, list[str]] = {}
        self.order: list[str] = []
        self.entry = ""
        self._tables: dict[str, dict[int, str]] = {name: {} for name in _SECTIONS}
        current, section = None, None
        for line in text.splitlines():
            if current is None:
                head = _HEAD.match(line)
                if head:
                    current = head.group(2)
                    self.order.append(current)
                    self.lines[current] = [line]
                    self.entry = current if head.group(1) else self.entry
                    continue
                section = line if line in _SECTIONS else (None if not line.strip() else section)
                if section and line not in _SECTIONS:
                    key, _, value = line.partition(" ")
                    self._tables[section][int(key)] = value
                if not line.startswith("HloModule"):
                    self.header.append(line)
                continue
            self.lines[current].append(line)
            if line.startswith("}"):
                current = None
        names = set(self.lines)
        self.callees: dict[str, list[str]] = {}
        self.control: dict[str, list[str]] = {}  # called as control flow: loop bodies, branches, calls
        self.loops: dict[str, list[_Loop]] = {}
        for name, body in self.lines.items():
            calls, control, loops = [], [], []
            for line in body[1:]:
                match = _INSTRUCTION.match(line)
                if not match:
                    continue
                called = [n for n in _NAME.findall(match.group(2)) if n in names and n != name]
                calls += called
                opcode = _opcode(match.group(2))
                if opcode in ("while", "conditional", "call"):
                    control += called
                if opcode == "while":
                    loops.append(self._loop(line))
            self.callees[name], self.control[name], self.loops[name] = calls, control, loops
        self._in_loops = {c for loops in self.loops.values() for loop in loops for c in (loop.body, loop.condition)}

    def _loop(self, line: str) -> _Loop:
        body = re.search(r"body=%([\w.\-]+)", line).group(1)
        condition = re.search(r"condition=%([\w.\-]+)", line).group(1)
        trips = _TRIP.search(line)
        frame = _FRAME.search(line)
        return _Loop(body, condition, int(trips.group(1)) if trips else None,
                     self.frame(int(frame.group(1))) if frame else ("", ""))

    def frame(self, frame_id: int) -> tuple[str, str]:
        """(file, function) of a stack frame id of the HLO metadata ("" when absent)."""
        frame = self._tables["StackFrames"].get(frame_id, "")
        location = self._tables["FileLocations"].get(int(_field(frame, "file_location_id") or -1), "")
        unquote = lambda s: s.strip().strip('"')
        return (unquote(self._tables["FileNames"].get(int(_field(location, "file_name_id") or -1), "")),
                unquote(self._tables["FunctionNames"].get(int(_field(location, "function_name_id") or -1), "")))

    def _closure(self, root: str, edges: dict[str, list[str]], stop=frozenset()) -> list[str]:
        seen, todo = {root}, [root]
        while todo:
            for callee in edges[todo.pop()]:
                if callee not in seen and callee not in stop:
                    seen.add(callee)
                    todo.append(callee)
        return [c for c in self.order if c in seen]

    def reachable(self, root: str) -> list[str]:
        """Computations ``root`` calls, directly or not, and itself, in the module's order."""
        return self._closure(root, self.callees)

    def loops_below(self, root: str) -> list[_Loop]:
        """The while loops that ``root`` runs without entering another loop's body."""
        return [loop for c in self._closure(root, self.control, self._in_loops) for loop in self.loops[c]]

    def kernels(self, root: str) -> int:
        """HLO ops that run as work of their own (fusions, dots, custom calls, sorts, ...) in
        ``root`` and the control flow it calls, every loop body and branch once."""
        count = 0
        for name in self._closure(root, self.control):
            for line in self.lines[name][1:]:
                match = _INSTRUCTION.match(line)
                count += bool(match) and _opcode(match.group(2)) not in _FREE
        return count

    def module_text(self, root: str) -> str:
        """An HLO module whose entry is computation ``root`` (with what it calls)."""
        out = ["HloModule sub_" + root.replace(".", "_"), *self.header]
        for name in self.reachable(root):
            body = list(self.lines[name])
            head = body[0][len("ENTRY "):] if body[0].startswith("ENTRY ") else body[0]
            body[0] = ("ENTRY " if name == root else "") + head
            out.extend(body)
            out.append("")
        return "\n".join(out)


def _field(text: str, name: str) -> str | None:
    match = re.search(name + r"=(\d+)", text)
    return match.group(1) if match else None


def _opcode(rest: str) -> str:
    """The opcode of an instruction's right-hand side ``shape opcode(operands), attributes``."""
    i = 0
    if rest.startswith("("):  # a tuple shape
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
    rest = rest[i:].split(" ", 1)[-1] if " " in rest[i:] else rest[i:]
    match = re.match(r"\s*([\w\-]+)\(", rest)
    return match.group(1) if match else ""


def _xla_cost(analysis: dict) -> Cost:
    return Cost(flops=float(analysis.get("flops", 0.0)), transcendentals=float(analysis.get("transcendentals", 0.0)),
                bytes=float(analysis.get("bytes accessed", 0.0)))


def program_cost(compiled, trip_scale: Callable[[tuple[str, str]], float] | None = None) -> ProgramCost:
    """The trip-count-weighted cost of one execution of ``compiled`` (a ``jax.stages.Compiled``
    of one device; see the module docstring). ``trip_scale((file, function))``: the fraction of a
    loop's trips that do work at run time, for loops built in that Python function (e.g. the
    trainer's minibatch loop, whose slots past every model's rows are skipped by a ``lax.cond``);
    default 1."""
    import jax
    from jax._src.lib import _jax
    from jaxlib import _hlo

    module = HloModuleText(compiled.as_text())
    client = jax.devices("cpu")[0].client
    analysis = compiled.cost_analysis()
    analysis = _xla_cost((analysis[0] if isinstance(analysis, (list, tuple)) else analysis) or {})
    once: dict[str, Cost | None] = {module.entry: dataclasses.replace(analysis, ops=float(module.kernels(module.entry)))}
    weighted: dict[str, Cost] = {}
    counts = {"known": 0, "unknown": 0}

    def xla(name: str) -> Cost | None:
        """XLA's cost of computation ``name`` run once (its loop bodies once); None if XLA cannot
        take it as a module of its own."""
        if name not in once:
            try:
                parsed = _hlo.hlo_module_from_text(module.module_text(name))
                cost = _xla_cost(_jax.hlo_module_cost_analysis(client, parsed))
                once[name] = dataclasses.replace(cost, ops=float(module.kernels(name)))
            except Exception:  # noqa: BLE001 — an HLO construct the text round trip does not take
                once[name] = None
        return once[name]

    def total(name: str) -> Cost:
        if name not in weighted:
            result = xla(name)
            for loop in module.loops_below(name):
                body, condition = (xla(loop.body), xla(loop.condition)) if loop.trips is not None else (None, None)
                if body is None or condition is None:  # counted once, as XLA counts it
                    counts["unknown"] += 1
                    continue
                counts["known"] += 1
                trips = loop.trips * (trip_scale(loop.where) if trip_scale else 1.0)
                result = result + total(loop.body) * trips - body + condition * loop.trips
            weighted[name] = result
        return weighted[name]

    cost = total(module.entry)
    memory = compiled.memory_analysis()
    peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
            - memory.alias_size_in_bytes) if memory is not None else 0
    return ProgramCost(cost=cost, xla=analysis, peak_bytes=int(peak),
                       loops=counts["known"], unknown_loops=counts["unknown"])


# ------------------------------------------------------------------------------------------------
# Devices and the roofline.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Device:
    """Peak rates of one device. peak_flops: FLOP/s; bandwidth: bytes/s of its main memory;
    memory: bytes; backend: the JAX backend whose layout defaults apply ("cpu", "gpu", "tpu");
    shared: several devices of this kind share one machine's rates (host devices of one CPU),
    so splitting over them adds no throughput; source: where the figures come from."""

    name: str
    description: str
    backend: str
    peak_flops: float
    bandwidth: float
    memory: float
    source: str
    shared: bool = False
    op_latency_s: float | None = None

    def op_floor_s(self, cost: Cost) -> float | None:
        """HLO ops × the measured time of one tiny op (``op_latency_s``; None when unknown): the
        time ``cost``'s kernels take one after the other when each does almost no work."""
        return None if self.op_latency_s is None else cost.ops * self.op_latency_s

    def roofline_s(self, cost: Cost) -> float:
        """max(FLOPs / peak, bytes / bandwidth): the time ``cost`` needs at the least on one device."""
        return max(cost.flops / self.peak_flops, cost.bytes / self.bandwidth)


# Datasheet figures. The models compute in float32: FP32 peaks for the GPUs (XLA may run f32
# dots on tensor cores as TF32, faster, but these small GEMMs and the elementwise work do not
# reach tensor-core peaks), and the MXU peak for the TPU (JAX's default precision multiplies
# f32 matrices in one bf16 pass there).
DEVICES: dict[str, Device] = {
    "h100": Device("h100", "NVIDIA H100 SXM5 80 GB", "gpu", 67e12, 3.35e12, 80e9,
                   "NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): FP32 67 TFLOPS, "
                   "HBM3 3.35 TB/s, 80 GB (SXM5)"),
    "a100": Device("a100", "NVIDIA A100 SXM4 80 GB", "gpu", 19.5e12, 2.039e12, 80e9,
                   "NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100): FP32 19.5 TFLOPS, "
                   "HBM2e 2,039 GB/s, 80 GB (SXM4)"),
    "v5e": Device("v5e", "Google Cloud TPU v5e (one chip)", "tpu", 197e12, 819e9, 16e9,
                  "Cloud TPU v5e documentation (cloud.google.com/tpu/docs/v5e): 197 TFLOP/s bf16, "
                  "HBM 819 GB/s, 16 GB per chip"),
}
DEVICE_NAMES = ("cpu", *DEVICES)


def measure_cpu(dot_size: int = 2048, copy_mib: int = 256, repeats: int = 3) -> Device:
    """This machine's CPU as a ``Device``: peak FLOP/s of a timed f32 ``jnp.dot`` (dot_size²,
    best of ``repeats``) and bandwidth of a timed copy of ``copy_mib`` MiB (read + write), on
    JAX's first CPU device (all cores)."""
    import os

    import jax
    import jax.numpy as jnp

    def best(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        return min(times)

    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((dot_size, dot_size), jnp.float32), cpu)
    flops = 2.0 * dot_size**3 / best(jax.jit(jnp.dot), a, a)
    x = jax.device_put(jnp.ones((copy_mib * 2**20 // 4,), jnp.float32), cpu)
    bandwidth = 2.0 * x.nbytes / best(jax.jit(lambda v: v + 1.0), x)
    # A loop of tiny dependent ops: its time per executed HLO op, counted as program_cost counts.
    small = jax.device_put(jnp.full((8, 8), 0.1, jnp.float32), cpu)
    chain = jax.jit(lambda m: jax.lax.scan(lambda c, _: (jnp.tanh(c @ m) @ m, None), m, None, length=4000)[0])
    latency = best(chain, small) / program_cost(chain.lower(small).compile()).cost.ops
    memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return Device("cpu", f"this CPU ({os.cpu_count()} cores), measured now", "cpu", flops, bandwidth, memory,
                  f"measured: {dot_size}² f32 jnp.dot, a {copy_mib} MiB copy and a loop of 8×8 ops, best of {repeats}",
                  shared=True, op_latency_s=latency)


def device_named(name: str) -> Device:
    """The ``Device`` called ``name`` (``cpu``: measured now); InputError for an unknown name."""
    from mismatch_jax.errors import InputError

    if name == "cpu":
        return measure_cpu()
    if name not in DEVICES:
        raise InputError(f"--device {name!r} is not one of {', '.join(DEVICE_NAMES)}")
    return DEVICES[name]
