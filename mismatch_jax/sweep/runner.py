"""The sweep runner: population training → one-step LL/MSE on every dataset → CEM reward in the
true env, chunked, sharded over devices, written atomically, resumable.

Model ``i`` (global index, see ``SweepConfig.model_spec``) gets key ``fold_in(model_root, i)``;
everything it does — init, minibatch order, hyper-parameter draw, CEM trials — derives from that
key, so its row is identical whatever the chunk size, the device count or a resume.
Each chunk holds models of one type (one compiled function per type) and is split over all local
devices along the population axis (``NamedSharding``). Several processes — on one host or on many
hosts sharing the output directory — run the same command with ``--distributed``: they claim chunks
through atomic claim files (no JAX distributed runtime is needed, since every chunk runs on one
host's devices, and so no process can hang in its shutdown barrier when another dies); a dead
process's claims expire and are taken over, and whichever process finds every chunk done merges.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mismatch_jax.compilation import BackgroundCompiler
from mismatch_jax.envs import make
from mismatch_jax.files import atomic_write_text, remove_stale_temporaries
from mismatch_jax.sweep import results
from mismatch_jax.config_io import to_toml
from mismatch_jax.sweep.chunk import (chunk_model_arguments, chunk_rows, chunk_size_for, estimate_bytes_per_model,
                                      make_chunk_fn, stack_study_data)
from mismatch_jax.sweep.env_params import expand
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.competence import sweep_competence
from mismatch_jax.sweep.pets_population import build_pets_population
from mismatch_jax.sweep.study_data import StudyData, build_study_datasets, pets_runs

def enable_compilation_cache(path: str | Path | None = None) -> None:
    """Persists compiled programs on disk (default ~/.cache/mismatch_jax/xla, or
    $MISMATCH_JAX_CACHE), so a resumed or repeated sweep does not compile again."""
    import os

    path = Path(path or os.environ.get("MISMATCH_JAX_CACHE") or Path.home() / ".cache" / "mismatch_jax" / "xla")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a cache is an optimisation only
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
            "--distributed on several hosts (README) or lower population.replicates")


def _previous_hash(out_dir: Path) -> tuple[str | None, str]:
    """The config hash an output directory was written with, and where it was found: the
    manifest, else config.resolved.toml, else any chunk's metadata (so deleting the manifest
    cannot mix two configs in one table)."""
    manifest = results.read_manifest(out_dir)
    if manifest and manifest.get("config_hash"):
        return manifest["config_hash"], "manifest.json"
    resolved = Path(out_dir) / "config.resolved.toml"
    if resolved.is_file():
        return results.config_hash(resolved.read_text()), "config.resolved.toml"
    for first, last in results.finished_chunks(out_dir):
        try:
            import pyarrow.parquet as pq

            meta = json.loads(pq.read_schema(results.chunk_path(out_dir, first, last)).metadata[b"mismatch_jax"])
            return meta["config_hash"], f"chunk {first}..{last}"
        except Exception:  # an unreadable chunk says nothing; verification quarantines it later
            continue
    return None, ""


class _Heartbeat:
    """Renews the claims this process holds every ``interval`` seconds, from a thread, so a
    long chunk is not taken over while its process is alive (a dead process stops renewing)."""

    def __init__(self, out_dir: Path, interval: float):
        import threading

        self.out_dir, self.interval, self.held = out_dir, interval, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            for first, last in list(self.held):
                results.renew_claim(self.out_dir, first, last)

    def stop(self):
        self._stop.set()


def run_sweep(config: SweepConfig, out_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None, distributed: bool = False,
              process_id: str | None = None, claim_lease_s: float = 120.0,
              poll_s: float = 2.0, num_processes: int | None = None,
              coordinator: str | None = None) -> pd.DataFrame:
    """Runs (or resumes) a sweep; returns the merged results table (empty when this process is
    not the one that completed it). See the module docstring.

    distributed: several processes (on one or many hosts sharing the output directory) run the
    same command; each claims chunks atomically (``claims/``), renews its claims every
    ``claim_lease_s / 4`` seconds, takes over claims not renewed for ``claim_lease_s`` (a dead
    process's), and the process that finds every chunk done merges ``results.parquet``. With
    ``num_processes`` and an integer ``process_id`` (rank), rank r starts at the r-th of
    ``num_processes`` equal slices of the chunk list, so processes begin on different chunks; it
    needs no coordinator (``coordinator`` is only recorded in the manifest)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = Console()
    log = log or console.print
    out_dir = Path(out_dir or config.out_dir)
    process_id = str(process_id or results.default_process_id())
    if not all(c.isalnum() or c in "-_." for c in process_id):
        raise results.OutputDirError(f"--process-id {process_id!r}: use letters, digits, '-', '_' or '.' "
                                     "(it names manifest.<process-id>.json)")
    results.check_writable(out_dir)
    # Temporary files of writers killed mid-write; in a distributed run only old ones (a live
    # writer's are seconds old).
    removed = remove_stale_temporaries(out_dir, older_than_s=claim_lease_s if distributed else 0.0)
    if removed:
        log(f"removed {len(removed)} stale temporary file(s) of an interrupted run")
    resolved = to_toml(config)
    digest = results.config_hash(resolved)
    previous, source = _previous_hash(out_dir)
    present = results.finished_chunks(out_dir)
    if (previous or present) and not (resume or distributed):
        raise results.OutputDirError(
            f"{out_dir} already holds sweep results; pass --resume to continue it or choose another --out")
    if previous is not None and previous != digest:
        raise results.OutputDirError(
            f"{out_dir} was written by a different config (hash {previous} in {source} vs {digest} now); "
            "resume with the same config or choose another --out")
    atomic_write_text(out_dir / "config.resolved.toml", resolved)
    if not distributed and (out_dir / "claims").is_dir():
        for stale in (out_dir / "claims").iterdir():  # one process owns the directory
            stale.unlink(missing_ok=True)
    started = time.time()
    manifest_name = f"manifest.{process_id}.json" if distributed else "manifest.json"
    manifest = {
        "name": config.name, "config_hash": digest, "status": "running", "started": started,
        "process": process_id, "num_processes": num_processes, "coordinator": coordinator,
        "jax": jax.__version__, "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
        "num_models": config.num_models, "chunks": [],
        "layout": vars(config.run.layout.resolve(width=config.population.model.hidden_size)),
    }
    results.write_manifest(out_dir, manifest, manifest_name)

    env = make(config.env)
    devices = jax.local_devices()
    check_scale(config, env, 0, len(devices), log)
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
    eval_names = list(config.datasets.eval)
    pets = None
    if config.pets_source:
        runs = pets_runs(StudyData.of_sweep(config), env, Path(config.datasets.cache_dir), log)
        pets = build_pets_population(config, env, sets, runs, log)
        train_data, eval_sets, env_settings = pets.train_data, pets.eval_sets, None
        manifest["dataset_notes"].update(pets.notes)
    else:
        train_data, eval_sets, env_settings = stack_study_data(config, sets, settings)

    mesh = Mesh(np.asarray(devices), ("pop",))
    plan = []  # (kind, first, last, size)
    for kind, start, count in config.type_ranges():
        size = chunk_size_for(config, env, kind, int(train_data.capacity), len(devices))
        for first in range(start, start + count, size):
            plan.append((kind, first, min(first + size, start + count) - 1, size))
    rows_per_model = len(config.training.eval_epochs)  # 1 in a PETS population (its check)
    verified: set[tuple[int, int]] = set()

    def is_done(first: int, last: int) -> bool:
        """Whether the chunk's file is present and verified (a bad one is quarantined)."""
        if (first, last) in verified:
            return True
        path = results.chunk_path(out_dir, first, last)
        if not path.is_file():
            return False
        problem = results.verify_chunk(path, first, last, digest, rows_per_model)
        if problem is None:
            verified.add((first, last))
            return True
        moved = results.quarantine(out_dir, path)
        log(f"chunk {first}..{last}: {problem}; moved to {moved.relative_to(out_dir)}, recomputing it")
        return False

    planned = {(c[1], c[2]) for c in plan}
    for first, last in present:  # files of no planned chunk (another chunk size, a stray copy)
        if (first, last) not in planned:
            moved = results.quarantine(out_dir, results.chunk_path(out_dir, first, last))
            log(f"chunk file {first}..{last} is not a chunk of this plan; moved to {moved.relative_to(out_dir)}")
    todo = [c for c in plan if not is_done(c[1], c[2])]
    log(f"sweep {config.name}: {config.num_models} models in {len(plan)} chunks on {len(devices)} "
        f"device(s); {len(plan) - len(todo)} chunk(s) already done")
    sharded = NamedSharding(mesh, PartitionSpec("pop"))
    replicated = NamedSharding(mesh, PartitionSpec())
    shared = jax.device_put((train_data, eval_sets, env_settings), replicated)
    # PETS's own models take the trained types' place of the training data (ChunkParts.train).
    pets_shared = None if pets is None else jax.device_put((pets.pets_models, eval_sets, env_settings), replicated)
    shared_of = lambda kind: pets_shared if kind == "PETS" else shared

    def chunk_arguments(first, last, size):
        indices = np.arange(first, last + 1)
        padded = np.concatenate([indices, np.full(size - indices.size, indices[-1])]).astype(np.int32)
        return indices, jax.device_put((padded, *chunk_model_arguments(config, padded)), sharded)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("models"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    # One program per model type, all lowered up front and compiled in threads (compiling is
    # single-threaded in XLA and dominates a small sweep); chunks run as their program is ready.
    kinds = list(dict.fromkeys(c[0] for c in todo))
    workers = max(1, min(len(kinds), os.cpu_count() or 1))
    heartbeat = _Heartbeat(out_dir, claim_lease_s / 4) if distributed else None
    try:
        with Progress(*columns, console=console, disable=not progress) as bar, \
                BackgroundCompiler(workers) as compiler:
            task = bar.add_task("sweep", total=config.num_models)
            bar.update(task, completed=sum(c[2] - c[1] + 1 for c in plan if c not in todo))
            programs = {}
            for kind in kinds:
                bar.update(task, description=f"compiling ({kind})")
                _, first, last, size = next(c for c in todo if c[0] == kind)
                lowered = make_chunk_fn(config, env, kind, mesh).lower(*chunk_arguments(first, last, size)[1],
                                                                       *shared_of(kind))
                programs[kind] = compiler.submit(lowered)

            def compute(kind, first, last, size):
                indices, per_model = chunk_arguments(first, last, size)
                t = time.perf_counter()
                program = programs[kind].result()
                compile_wait = time.perf_counter() - t
                t = time.perf_counter()
                out = jax.device_get(program(*per_model, *shared_of(kind)))
                elapsed = time.perf_counter() - t
                out = {k: np.asarray(v)[: indices.size] for k, v in out.items()}
                entry = results.write_chunk(out_dir, first, last, chunk_rows(config, indices, out, eval_names, settings, pets), digest)
                verified.add((first, last))
                manifest["chunks"].append({**entry, "kind": kind, "seconds": elapsed, "compile_wait_s": compile_wait})
                results.write_manifest(out_dir, manifest, manifest_name)
                bar.update(task, advance=indices.size)

            pending = list(todo)
            if distributed and num_processes and str(process_id).isdigit():
                start = int(process_id) * len(pending) // num_processes
                pending = pending[start:] + pending[:start]
            while pending:
                waiting = []
                for kind, first, last, size in pending:
                    if is_done(first, last):
                        bar.update(task, advance=last - first + 1)
                        continue
                    if distributed and not results.claim_chunk(out_dir, first, last, process_id, claim_lease_s):
                        waiting.append((kind, first, last, size))
                        continue
                    if heartbeat:
                        heartbeat.held.add((first, last))
                    bar.update(task, description=f"chunk {first}..{last} ({kind})")
                    try:
                        compute(kind, first, last, size)
                    finally:
                        if heartbeat:
                            heartbeat.held.discard((first, last))
                            results.release_claim(out_dir, first, last)
                if waiting:  # other processes hold these: wait for their files or dead claims
                    bar.update(task, description=f"waiting for {len(waiting)} chunk(s) of other processes")
                    time.sleep(poll_s)
                pending = waiting
    finally:
        if heartbeat:
            heartbeat.stop()
    manifest["status"] = "done"
    results.write_manifest(out_dir, manifest, manifest_name)
    if not all(is_done(c[1], c[2]) for c in plan):
        return pd.DataFrame()
    table = results.merge_chunks(out_dir, sorted(verified), config.num_models, rows_per_model)
    merged = {**manifest, "status": "complete", "finished": time.time(), "wall_s": time.time() - started,
              "num_rows": len(table), "num_diverged": int(table.groupby("model_id")["diverged"].any().sum()),
              "chunks": _chunk_entries(out_dir, sorted(verified)), "merged_by": process_id}
    merged.pop("process", None)
    results.write_manifest(out_dir, merged)
    return table


def _chunk_entries(out_dir: Path, ranges: list[tuple[int, int]]) -> list[dict]:
    """Each chunk's manifest entry from its file: model range, rows, checksums, size."""
    import hashlib

    import pyarrow.parquet as pq

    entries = []
    for first, last in ranges:
        path = results.chunk_path(out_dir, first, last)
        meta = json.loads(pq.read_schema(path).metadata[b"mismatch_jax"])
        entries.append({**meta, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]})
    return entries
