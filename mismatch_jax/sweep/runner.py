"""The sweep runner: population training → one-step LL/MSE on every dataset → CEM reward in the
true env, chunked, sharded over devices, written atomically, resumable.

Model ``i`` (global index, see ``SweepConfig.model_spec``) gets key ``fold_in(model_root, i)``;
everything it does — init, minibatch order, hyper-parameter draw, CEM trials — derives from that
key, so its row is identical whatever the chunk size, the device count or a resume.
Each chunk holds models of one type (one compiled function per type) and is split over the
devices of the process that runs it (``NamedSharding``). The driver (this module) owns the output
directory (one process at a time, ``files.directory_lock``), builds the datasets once, plans the
chunks and hands them to an executor — this process's devices (``sweep.chunk_task``), or a Ray
cluster, one task per chunk (``sweep.ray_runner``); both run the same ``ChunkRunner`` — then
writes every returned chunk with its integrity metadata and merges the re-verified chunks.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import jax
import pandas as pd

from mismatch_jax.compilation import BackgroundCompiler, enable_compilation_cache  # noqa: F401 (re-exported)
from mismatch_jax.envs import make
from mismatch_jax.files import atomic_write_text, directory_lock, remove_stale_temporaries
from mismatch_jax.sweep import results
from mismatch_jax.config_io import to_toml
from mismatch_jax.sweep.chunk import chunk_size_for, estimate_bytes_per_model, stack_study_data
from mismatch_jax.sweep.chunk_task import ChunkResult, ChunkRunner, ChunkTask, SweepInputs
from mismatch_jax.sweep.env_params import expand
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.competence import sweep_competence
from mismatch_jax.sweep.pets_population import build_pets_population
from mismatch_jax.sweep.study_data import StudyData, build_study_datasets, pets_runs

if TYPE_CHECKING:
    from mismatch_jax.sweep.ray_runner import RayOptions


MAX_CHUNKS = 100_000
"""More chunks than this is refused (a typo in ``replicates``, not a study); above
``WARN_MODELS`` models the sweep starts with a warning."""
WARN_MODELS = 100_000
MAX_PARAMS_PER_MODEL = 200_000_000


def check_scale(config: SweepConfig, env, train_rows: int, num_devices: int, log=print) -> None:
    """Refuses, before any dataset or compile, a sweep that cannot fit: one model's parameters or
    peak memory beyond ``run.memory_gb``, a ``run.chunk_size`` whose chunk exceeds it, or more
    than ``MAX_CHUNKS`` chunks; the error names the key and the number. Warns above
    ``WARN_MODELS`` models."""
    from mismatch_jax.errors import InputError

    budget = config.run.memory_gb * 2**30
    for kind in config.kinds:
        mcfg = config.model_config_of(kind, env)
        params = mcfg.ensemble_size * sum(a * b + b for a, b in zip(mcfg.layer_sizes[:-1], mcfg.layer_sizes[1:]))
        if params > MAX_PARAMS_PER_MODEL:
            raise InputError(f"population.model.hidden_size = {mcfg.hidden_size} gives {params:.3g} parameters "
                             f"per {kind} model (limit {MAX_PARAMS_PER_MODEL:.0e}); lower it")
        per_model = estimate_bytes_per_model(config, env, kind, train_rows)
        if per_model > budget:
            raise InputError(f"one {kind} model needs ~{per_model / 2**30:.1f} GB (population.model.hidden_size = "
                             f"{mcfg.hidden_size}, cem.population_size = {config.cem.population_size}), more than "
                             f"run.memory_gb = {config.run.memory_gb:g}; lower them or raise run.memory_gb")
        if config.run.chunk_size and config.run.chunk_size * per_model > budget:
            raise InputError(f"run.chunk_size = {config.run.chunk_size} needs ~{config.run.chunk_size * per_model / 2**30:.1f} "
                             f"GB of {kind} models, more than run.memory_gb = {config.run.memory_gb:g}; "
                             "lower run.chunk_size (0 = derive it from memory_gb)")
    chunks = sum(-(-config.count_of(kind) // chunk_size_for(config, env, kind, train_rows, num_devices))
                 for kind in config.kinds)
    if chunks > MAX_CHUNKS:
        raise InputError(f"population.replicates = {config.population.replicates} gives {config.num_models} models in "
                         f"{chunks} chunks (limit {MAX_CHUNKS}); lower population.replicates or raise run.chunk_size")
    if config.num_models > WARN_MODELS:
        log(f"warning: {config.num_models} models ({chunks} chunks) — a cluster-size sweep; run it with "
            "--ray on a cluster (README) or lower population.replicates")


def _previous_config(out_dir: Path) -> tuple[str | None, str, str | None]:
    """The config hash an output directory was written with, where it was found (the manifest,
    else config.resolved.toml, else any chunk's metadata, so deleting the manifest cannot mix two
    configs in one table) and the resolved config text when config.resolved.toml has that hash."""
    resolved = Path(out_dir) / "config.resolved.toml"
    text = resolved.read_text() if resolved.is_file() else None
    manifest = results.read_manifest(out_dir)
    if manifest and manifest.get("config_hash"):
        previous, source = manifest["config_hash"], "manifest.json"
    elif text is not None:
        previous, source = results.config_hash(text), "config.resolved.toml"
    else:
        previous, source = None, ""
        for first, last in results.finished_chunks(out_dir):
            try:
                import pyarrow.parquet as pq

                meta = json.loads(pq.read_schema(results.chunk_path(out_dir, first, last)).metadata[b"mismatch_jax"])
                previous, source = meta["config_hash"], f"chunk {first}..{last}"
                break
            except Exception:  # an unreadable chunk says nothing; verification quarantines it later
                continue
    if text is not None and results.config_hash(text) != previous:
        text = None
    return previous, source, text


def config_differences(before: str, after: str, limit: int = 6) -> str:
    """The dotted keys whose values differ between two resolved config texts, as
    ``key: old → new`` joined by ``; `` (at most ``limit``, then a count)."""
    import tomllib

    def flat(data, prefix=""):
        out = {}
        for key, value in data.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    old, new = flat(tomllib.loads(before)), flat(tomllib.loads(after))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "(unset)") != new.get(k, "(unset)"))
    shown = [f"{k}: {old.get(k, '(unset)')!r} → {new.get(k, '(unset)')!r}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def check_out_config(out_dir: Path, resolved: str, resume: bool) -> str:
    """Refuses an output directory that holds results unless resuming, and one written by
    another config (naming the keys that differ, or both hashes when the directory's resolved
    config is gone); returns the config hash. Call it holding the directory's lock."""
    digest = results.config_hash(resolved)
    previous, source, text = _previous_config(out_dir)
    if (previous or results.finished_chunks(out_dir)) and not resume:
        raise results.OutputDirError(
            f"{out_dir} already holds sweep results; pass --resume to continue it or choose another --out")
    if previous is not None and previous != digest:
        what = (f"it differs in {config_differences(text, resolved)}" if text is not None else
                f"hash {previous} in {source} vs {digest} now; its config.resolved.toml is missing or does not "
                "match, so the keys cannot be named")
        raise results.OutputDirError(f"{out_dir} was written by a different config ({what}); resume with the same "
                                     "config or choose another --out")
    return digest


def plan_chunks(config: SweepConfig, env, train_rows: int, num_devices: int) -> list[ChunkTask]:
    """The sweep's chunks, type by type in model order, each a multiple of ``num_devices``."""
    plan = []
    for kind, start, count in config.type_ranges():
        size = chunk_size_for(config, env, kind, train_rows, num_devices)
        for first in range(start, start + count, size):
            plan.append(ChunkTask(kind, first, min(first + size, start + count) - 1, size))
    return plan


def local_chunks(inputs: SweepInputs, tasks: list[ChunkTask],
                 status: Callable[[str], None]) -> Iterator[ChunkResult]:
    """Runs ``tasks`` on this process's devices, in order: one program per model type, all
    lowered up front and compiled in threads (compiling is single-threaded in XLA and dominates
    a small sweep); chunks run as their program is ready."""
    runner = ChunkRunner(inputs)
    firsts: dict[str, ChunkTask] = {}
    for task in tasks:
        firsts.setdefault(task.kind, task)
    with BackgroundCompiler(max(1, min(len(firsts), os.cpu_count() or 1))) as compiler:
        for task in firsts.values():
            status(f"compiling ({task.kind})")
            runner.prepare(task, compiler)
        for task in tasks:
            status(f"chunk {task.first}..{task.last} ({task.kind})")
            yield runner.run(task)


def run_sweep(config: SweepConfig, out_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None,
              ray: "RayOptions | None" = None) -> pd.DataFrame:
    """Runs (or resumes) a sweep into ``out_dir`` — on this process's devices, or with ``ray``
    (``sweep.ray_runner.RayOptions``) one Ray task per chunk — and returns the merged results
    table. See the module docstring."""
    from rich.console import Console

    console = Console()
    log = log or console.print
    out_dir = Path(out_dir or config.out_dir)
    results.check_writable(out_dir)
    with directory_lock(out_dir):
        cluster = None
        if ray is not None:
            from mismatch_jax.sweep import ray_runner

            cluster = ray_runner.connect(ray, log)  # a bad address fails here, before any dataset
        try:
            return _run_locked(config, out_dir, resume, progress, log, console, cluster)
        finally:
            if cluster is not None:
                cluster.close()


def _run_locked(config, out_dir, resume, progress, log, console, cluster) -> pd.DataFrame:
    """``run_sweep`` once it owns ``out_dir``."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    removed = remove_stale_temporaries(out_dir)  # left by writers killed mid-write
    if removed:
        log(f"removed {len(removed)} stale temporary file(s) of an interrupted run")
    resolved = to_toml(config)
    digest = check_out_config(out_dir, resolved, resume)
    atomic_write_text(out_dir / "config.resolved.toml", resolved)
    started = time.time()
    num_devices = cluster.devices_per_task if cluster else len(jax.local_devices())
    manifest = {
        "name": config.name, "config_hash": digest, "status": "running", "started": started,
        "jax": jax.__version__, "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
        "executor": cluster.describe() if cluster else "local",
        "driver": f"{socket.gethostname()} pid {os.getpid()}",
        "num_models": config.num_models, "chunks": [],
        "layout": vars(config.run.layout.resolve(width=config.population.model.hidden_size)),
    }
    results.write_manifest(out_dir, manifest)

    env = make(config.env)
    check_scale(config, env, 0, num_devices, log)
    t0 = time.perf_counter()
    settings = expand(config.dynamics, env, config.seed)
    if settings is not None:
        manifest["env_settings"] = {name: values.tolist() for name, values in settings.values.items()}
        log(f"env_params: {settings.size} true-dynamics setting(s) of {', '.join(settings.values)}")
    sets, notes = build_study_datasets(StudyData.of_sweep(config), env, log=log, settings=settings)
    sizes = ({name: ds.size for name, ds in sets.items()} if settings is None else
             {f"{name}@{p}": ds.size for p, per in enumerate(sets) for name, ds in per.items()})
    manifest.update(datasets=sizes, dataset_notes=notes, dataset_s=time.perf_counter() - t0)
    competence = sweep_competence(config, env, out_dir, log)
    if competence is not None:
        manifest["competence"] = {k: competence[k] for k in ("passed", "expert", "untrained")}
    if config.pets_source:
        runs = pets_runs(StudyData.of_sweep(config), env, Path(config.datasets.cache_dir), log)
        pets = build_pets_population(config, env, sets, runs, log)
        manifest["dataset_notes"].update(pets.notes)
        inputs = SweepInputs.on_host(config, pets.train_data, pets.eval_sets, None, pets=pets)
    else:
        inputs = SweepInputs.on_host(config, *stack_study_data(config, sets, settings), settings=settings)

    plan = plan_chunks(config, env, int(inputs.train_data.capacity), num_devices)
    rows_per_model = len(config.training.eval_epochs)  # 1 in a PETS population (its check)
    planned = {(c.first, c.last) for c in plan}
    for first, last in results.finished_chunks(out_dir):  # files of no planned chunk (another chunk size, a stray copy)
        if (first, last) not in planned:
            moved = results.quarantine(out_dir, results.chunk_path(out_dir, first, last))
            log(f"chunk file {first}..{last} is not a chunk of this plan; moved to {moved.relative_to(out_dir)}")

    def is_done(first: int, last: int) -> bool:
        """Whether the chunk's file is present and verified (a bad one is quarantined)."""
        path = results.chunk_path(out_dir, first, last)
        if not path.is_file():
            return False
        problem = results.verify_chunk(path, first, last, digest, rows_per_model)
        if problem is None:
            return True
        moved = results.quarantine(out_dir, path)
        log(f"chunk {first}..{last}: {problem}; moved to {moved.relative_to(out_dir)}, recomputing it")
        return False

    todo = [c for c in plan if not is_done(c.first, c.last)]
    where = cluster.describe() if cluster else f"{num_devices} device(s)"
    log(f"sweep {config.name}: {config.num_models} models in {len(plan)} chunks on {where}; "
        f"{len(plan) - len(todo)} chunk(s) already done")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("models"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("sweep", total=config.num_models)
        bar.update(task, completed=sum(c.last - c.first + 1 for c in plan if c not in todo))
        status = lambda text: bar.update(task, description=text)
        executed = cluster.run(inputs, todo, digest, status) if cluster else local_chunks(inputs, todo, status)
        for done in executed:
            first, last = done.task.first, done.task.last
            entry = results.write_chunk(out_dir, first, last, done.frame, digest)
            manifest["chunks"].append({**entry, "kind": done.task.kind, "seconds": done.seconds,
                                       "compile_wait_s": done.compile_wait_s, "host": done.host,
                                       "devices": done.devices})
            results.write_manifest(out_dir, manifest)
            bar.update(task, advance=last - first + 1)
    ranges = [(c.first, c.last) for c in plan]
    table = results.merge_chunks(out_dir, ranges, config.num_models, rows_per_model, digest)
    merged = {**manifest, "status": "complete", "finished": time.time(), "wall_s": time.time() - started,
              "num_rows": len(table), "num_diverged": int(table.groupby("model_id")["diverged"].any().sum()),
              "chunks": _chunk_entries(out_dir, ranges, manifest["chunks"])}
    results.write_manifest(out_dir, merged)
    return table


def _chunk_entries(out_dir: Path, ranges: list[tuple[int, int]], ran: list[dict]) -> list[dict]:
    """Each chunk's manifest entry from its file (model range, rows, checksums, size), with where
    and how long it ran when this run computed it (``ran``: this run's entries)."""
    import hashlib

    import pyarrow.parquet as pq

    timing = {(entry["first"], entry["last"]): entry for entry in ran}
    entries = []
    for first, last in ranges:
        path = results.chunk_path(out_dir, first, last)
        meta = json.loads(pq.read_schema(path).metadata[b"mismatch_jax"])
        entries.append({**timing.get((first, last), {}), **meta, "file": path.name,
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]})
    return entries
