"""The report of ``sweep.estimate``: roofline seconds per stage, the JSON-able dict and the
printed table."""

from __future__ import annotations

import dataclasses
import sys

from mismatch_jax.sweep.costs import Device, StageEstimate


def stage_seconds(stage: StageEstimate, device: Device) -> float:
    """Roofline time of all runs of ``stage``: runs one after the other, ``parallel`` at a time
    on devices of their own (host devices of one CPU share its rates: no speed-up)."""
    at_once = 1 if device.shared else stage.parallel
    return -(-stage.runs // at_once) * device.roofline_s(stage.program.cost)


def op_floor_seconds(stage: StageEstimate, device: Device) -> float | None:
    """All runs' HLO ops one after the other at the device's measured time per tiny op (None
    when it has none), ``parallel`` streams at a time (each host device runs its own)."""
    floor = device.op_floor_s(stage.program.cost)
    return None if floor is None else -(-stage.runs // stage.parallel) * floor


def report(config: SweepConfig, stages: list[StageEstimate], device: Device, devices: int) -> dict:
    """The estimate as a JSON-able dict: per stage and in total FLOPs, bytes, executed HLO ops,
    peak memory per device and roofline seconds, with XLA's loop-bodies-once figures beside."""
    rows = []
    for s in stages:
        rows.append({"stage": s.name, "runs": s.runs, "parallel": s.parallel,
                     "flops": s.total.flops, "bytes": s.total.bytes, "transcendentals": s.total.transcendentals,
                     "ops": s.total.ops, "peak_bytes_per_device": s.program.peak_bytes,
                     "seconds": stage_seconds(s, device), "op_floor_seconds": op_floor_seconds(s, device),
                     "per_run": dataclasses.asdict(s.program.cost),
                     "per_run_xla_loop_bodies_once": dataclasses.asdict(s.program.xla),
                     "loops": s.program.loops, "loops_without_trip_count": s.program.unknown_loops})
    total = {key: sum(r[key] for r in rows) for key in ("flops", "bytes", "transcendentals", "ops", "seconds")}
    total["op_floor_seconds"] = None if device.op_latency_s is None else sum(r["op_floor_seconds"] for r in rows)
    total["peak_bytes_per_device"] = max((r["peak_bytes_per_device"] for r in rows), default=0)
    return {"config": config.name, "env": config.env, "num_models": config.num_models,
            "device": dataclasses.asdict(device), "devices": devices, "stages": rows, "total": total}


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" + (f" ({seconds / 86400:.1f} days)" if hours >= 48 else "")


def print_report(content: dict, console=None) -> None:
    """Prints ``report``'s dict as a table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 132)
    device = content["device"]
    table = Table(title=f"estimate: {content['config']} ({content['num_models']} models) on "
                        f"{content['devices']} × {device['name']}")
    floors = content["total"]["op_floor_seconds"] is not None
    columns = ("stage", "programs run", "FLOPs", "bytes moved", "HLO ops", "peak memory / device", "roofline time")
    for column in columns + (("op floor",) if floors else ()):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in content["stages"] + [{"stage": "total", "runs": "", **content["total"]}]:
        cells = [r["stage"], str(r["runs"]), _si(r["flops"], "FLOP"), _si(r["bytes"], "B"), _si(r["ops"], ""),
                 _si(r["peak_bytes_per_device"], "B"), _duration(r["seconds"])]
        table.add_row(*cells, *((_duration(r["op_floor_seconds"]),) if floors else ()))
    console.print(table)
    latency = "" if device["op_latency_s"] is None else f", {device['op_latency_s'] * 1e6:.2g} µs per tiny op"
    console.print(f"{device['description']}: {_si(device['peak_flops'], 'FLOP/s')}, {_si(device['bandwidth'], 'B/s')}, "
                  f"{_si(device['memory'], 'B')}{latency} ({device['source']})")
    if content["total"]["peak_bytes_per_device"] > device["memory"]:
        console.print(f"warning: a chunk needs {_si(content['total']['peak_bytes_per_device'], 'B')} per device, "
                      f"more than the {_si(device['memory'], 'B')} of a {device['name']}; lower run.chunk_size")
    unknown = sum(r["loops_without_trip_count"] for r in content["stages"])
    console.print("roofline = max(FLOPs / peak, bytes / bandwidth) per program, a lower bound; loop bodies weighted by "
                  "their trip counts" + (f" ({unknown} loops without a known trip count counted once)" if unknown else "")
                  + (" ; op floor = HLO ops x the measured time of a tiny op" if floors else "")
                  + "; not counted: compilation, dataset building from the true dynamics, the competence check")
