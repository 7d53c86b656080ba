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
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mismatch_jax import models
from mismatch_jax.compilation import BackgroundCompiler
from mismatch_jax.envs import make
from mismatch_jax.planning.mpc import make_planner, mpc_episode
from mismatch_jax.population import PopulationLayout, over_population
from mismatch_jax.files import atomic_write_text, remove_stale_temporaries
from mismatch_jax.sweep import results
from mismatch_jax.config_io import to_toml
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.study_data import StudyData, build_study_datasets
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.train import TrainHParams, make_train_fn

MODEL_SALT = 0x0DE1  # fold_in salt of the model keys (datasets use another)


def estimate_bytes_per_model(config: SweepConfig, env, kind: str, train_rows: int) -> int:
    """Rough peak memory of one model in a chunk (bytes): its CEM evaluation dominates —
    trials × eval epochs episodes in flight, each with population × particles rollouts whose
    activations are E × hidden wide — plus parameters, optimiser state and its dataset slice."""
    mcfg = config.population.model_of(kind, env)
    cem = config.cem.for_env(env)
    episodes = config.evaluation.trials * len(config.training.eval_epochs)
    rollouts = cem.population_size * cem.particles
    activations = episodes * rollouts * mcfg.ensemble_size * mcfg.hidden_size * 4 * 6
    num_params = sum(a * b + b for a, b in zip(mcfg.layer_sizes[:-1], mcfg.layer_sizes[1:])) * mcfg.ensemble_size
    params = num_params * 4 * (4 + len(config.training.eval_epochs))
    batch = config.training.batch_size * mcfg.ensemble_size * mcfg.hidden_size * 4 * 4 * mcfg.num_hidden_layers
    return int(activations + params + batch + train_rows * 4)


def chunk_size_for(config: SweepConfig, env, kind: str, train_rows: int, num_devices: int) -> int:
    """Models per compiled call: the user's chunk_size, or what memory_gb allows; always a
    multiple of the device count."""
    if config.run.chunk_size:
        size = config.run.chunk_size
    else:
        size = int(config.run.memory_gb * 2**30 // estimate_bytes_per_model(config, env, kind, train_rows))
        size = max(1, min(size, 1024))
    return max(num_devices, (size // num_devices) * num_devices)


def _sample_hparam(key, value):
    if isinstance(value, tuple):
        low, high = math.log(value[0]), math.log(value[1])
        return jnp.exp(jax.random.uniform(key, (), minval=low, maxval=high))
    return jnp.asarray(value, jnp.float32)


class ChunkParts(NamedTuple):
    """The three stages of a chunk, pure and unjitted (``make_chunk_parts``); the sweep fuses them
    into one jitted call, ``benchmarks/bench_population.py`` times each on its own.

    train(indices [N], dataset_index [N], train_data) -> TrainedChunk
    likelihood(kept_params [N, K], normalizers [N, K], eval_sets) -> (ll [N, K, D], mse [N, K, D])
    reward(kept_params [N, K], normalizers [N, K], epoch_keys [N, K]) -> rewards [N, K, trials]
    (K = eval epochs, D = evaluation datasets)."""

    train: Callable
    likelihood: Callable
    reward: Callable


class TrainedChunk(NamedTuple):
    """What training hands to the evaluation stages: parameters kept at every eval epoch
    (leaves [N, K, ...]), each model's normaliser broadcast to [N, K, ...], the per-(model, epoch)
    evaluation keys [N, K], and per-model bookkeeping [N]."""

    kept_params: models.ModelParams
    normalizers: models.Normalizer
    epoch_keys: jax.Array
    learning_rate: jax.Array
    weight_decay: jax.Array
    diverged: jax.Array
    epochs_trained: jax.Array
    val_mse_ratio: jax.Array


def make_chunk_parts(config: SweepConfig, env, kind: str) -> ChunkParts:
    """The train / LL / reward stages of a chunk of model type ``kind`` (see ``ChunkParts``)."""
    mcfg = config.population.model_of(kind, env)
    tr = config.training
    train = make_train_fn(tr.train_config(mcfg, keep_epochs=tuple(tr.eval_epochs)))
    planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
    model_root = jax.random.fold_in(jax.random.key(config.seed), MODEL_SALT)
    trials, length = config.evaluation.trials, config.evaluation.length(env)
    per_model_and_epoch = lambda f, in_axes: jax.vmap(jax.vmap(f, in_axes=in_axes), in_axes=in_axes)

    def train_stage(indices, dataset_index, train_data) -> TrainedChunk:
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(model_root, indices)
        split = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
        train_keys, lr_keys, wd_keys, eval_keys = (split[:, i] for i in range(4))
        hparams = TrainHParams(
            learning_rate=jax.vmap(lambda k: _sample_hparam(k, tr.learning_rate))(lr_keys),
            weight_decay=jax.vmap(lambda k: _sample_hparam(k, tr.weight_decay))(wd_keys),
            nll_weight=jnp.ones(indices.shape), mse_weight=jnp.zeros(indices.shape))
        result = train(train_keys, None, train_data, hparams, dataset_index)
        epoch_keys = jax.vmap(lambda k: jax.vmap(lambda e: jax.random.fold_in(k, e))(
            jnp.asarray(tr.eval_epochs)))(eval_keys)  # [N, K]
        norms = jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], len(tr.eval_epochs)) + a.shape[1:]),
                             result.normalizer)
        return TrainedChunk(kept_params=result.kept_params, normalizers=norms, epoch_keys=epoch_keys,
                            learning_rate=hparams.learning_rate, weight_decay=hparams.weight_decay,
                            diverged=result.diverged, epochs_trained=result.epochs_trained,
                            val_mse_ratio=result.metrics.val_mse.max(axis=1)
                            / jnp.maximum(result.initial_val_mse, 1e-12))

    def likelihood_one(params, norm, eval_sets):
        lls = jnp.stack([models.one_step_log_likelihood(mcfg, params, norm, *arrays) for arrays in eval_sets])
        mses = jnp.stack([models.one_step_mse(mcfg, params, norm, *arrays) for arrays in eval_sets])
        return lls, mses

    def reward_stage(kept_params, normalizers, epoch_keys):
        # Every (model, epoch, trial) episode under ONE vmap: nested vmaps over the MJX physics
        # cost ~2x the tracing and ~1.5x the compile time of a single flat one.
        num_models, num_epochs = epoch_keys.shape
        episodes = num_models * num_epochs * trials
        trial_keys = jax.vmap(jax.vmap(lambda k: jax.random.split(k, trials)))(epoch_keys)
        per_trial = lambda a: jnp.broadcast_to(a[:, :, None], (num_models, num_epochs, trials) + a.shape[2:])
        flat = lambda a: a.reshape((episodes,) + a.shape[3:])
        params, norms = jax.tree.map(lambda a: flat(per_trial(a)), (kept_params, normalizers))
        rewards = jax.vmap(lambda k, p, n: mpc_episode(k, env, planner, p, n, length)[1])(
            flat(trial_keys), params, norms)
        return rewards.reshape(num_models, num_epochs, trials)

    return ChunkParts(train=train_stage,
                      likelihood=per_model_and_epoch(likelihood_one, (0, 0, None)),
                      reward=reward_stage)


def laid_out(parts: ChunkParts, layout: PopulationLayout, num_shards: int = 1, width: int | None = None) -> ChunkParts:
    """The chunk's stages under a population layout (``mismatch_jax.population``): each stage
    runs its models all at once (vmap) or in groups (lax.map), inside each device's block of a
    population axis sharded over ``num_shards`` devices."""
    lay = lambda fn, shared: over_population(fn, layout, shared, num_shards, width)
    return ChunkParts(train=lay(parts.train, (2,)), likelihood=lay(parts.likelihood, (2,)),
                      reward=lay(parts.reward, ()))


def make_chunk_fn(config: SweepConfig, env, kind: str, mesh: Mesh):
    """jit-compiled ``chunk(indices [N], dataset_index [N], train_data, eval_sets) -> dict of
    arrays`` for model type ``kind``; N must be a multiple of the mesh size (the population axis
    is sharded, the data replicated). Data are arguments, not closure constants, so they are not
    baked into the compiled program and the persistent compilation cache can reuse it."""
    parts = laid_out(make_chunk_parts(config, env, kind), config.run.layout, mesh.devices.size,
                     config.population.model_of(kind, env).hidden_size)

    def chunk(indices, dataset_index, train_data, eval_sets):
        trained = parts.train(indices, dataset_index, train_data)
        lls, mses = parts.likelihood(trained.kept_params, trained.normalizers, eval_sets)
        rewards = parts.reward(trained.kept_params, trained.normalizers, trained.epoch_keys)
        return {"ll": lls, "mse": mses, "reward": rewards, "diverged": trained.diverged,
                "learning_rate": trained.learning_rate, "weight_decay": trained.weight_decay,
                "epochs_trained": trained.epochs_trained, "val_mse_ratio": trained.val_mse_ratio}

    sharded = NamedSharding(mesh, PartitionSpec("pop"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(chunk, in_shardings=(sharded, sharded, replicated, replicated))


def model_diverged(config: SweepConfig, out: dict, n: int) -> bool:
    """Whether model ``n`` of a chunk's outputs diverged — one flag for all its rows: its training
    hit a non-finite loss or update, any evaluated metric (LL, MSE, reward at any eval epoch) is
    not finite, or its validation MSE on its own dataset rose above
    ``training.divergence_factor`` times the untrained model's (runaway training)."""
    finite = all(np.isfinite(out[name][n]).all() for name in ("ll", "mse", "reward"))
    runaway = not out["val_mse_ratio"][n] <= config.training.divergence_factor  # NaN counts too
    return bool(out["diverged"][n]) or not finite or runaway


def _rows(config: SweepConfig, indices: np.ndarray, out: dict, eval_names: list[str]) -> pd.DataFrame:
    """One row per model × eval epoch."""
    rows = []
    for n, index in enumerate(indices):
        kind, train_name, replicate = config.model_spec(int(index))
        diverged = model_diverged(config, out, n)
        for k, epoch in enumerate(config.training.eval_epochs):
            rewards = out["reward"][n, k].astype(np.float64)
            lls, mses = out["ll"][n, k], out["mse"][n, k]
            row = {"model_id": int(index), "seed": config.seed, "replicate": replicate,
                   "model_type": kind, "train_dataset": train_name, "epoch": int(epoch),
                   "learning_rate": float(out["learning_rate"][n]),
                   "weight_decay": float(out["weight_decay"][n])}
            for j, name in enumerate(eval_names):
                row[f"ll_{name}"] = float(lls[j])
                row[f"mse_{name}"] = float(mses[j])
            row.update({"reward": rewards.tolist(), "reward_mean": float(rewards.mean()),
                        "reward_std": float(rewards.std()), "diverged": diverged})
            rows.append(row)
    return pd.DataFrame(rows)


def stack_study_data(config: SweepConfig, sets: dict) -> tuple[TransitionData, tuple]:
    """The arguments a chunk takes from the study datasets ``sets`` ({name: Transitions}):
    train_data (TransitionData, one dataset [M = len(train), capacity] per train dataset, in
    config order) and eval_sets (one (obs, action, next_obs) validation triple per eval dataset)."""
    train_data = TransitionData.stack([TransitionData.from_dataset(sets[n]) for n in config.datasets.train])
    eval_sets = []
    for name in config.datasets.eval:
        val = sets[name].validation()
        eval_sets.append((val.obs, val.action, val.next_obs))
    return jax.tree.map(jnp.asarray, train_data), tuple(eval_sets)


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
    for kind in config.population.model_types:
        mcfg = config.population.model_of(kind, env)
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
    per_type = len(config.datasets.train) * config.population.replicates
    chunks = sum(-(-per_type // chunk_size_for(config, env, kind, train_rows, num_devices))
                 for kind in config.population.model_types)
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
        "layout": vars(config.run.layout.resolve(width=config.population.model.hidden_size,
                                                 num_shards=len(jax.local_devices()))),
    }
    results.write_manifest(out_dir, manifest, manifest_name)

    env = make(config.env)
    devices = jax.local_devices()
    check_scale(config, env, 0, len(devices), log)
    t0 = time.perf_counter()
    sets, notes = build_study_datasets(StudyData.of_sweep(config), env, log=log)
    manifest.update(datasets={name: ds.size for name, ds in sets.items()}, dataset_notes=notes,
                    dataset_s=time.perf_counter() - t0)
    train_names, eval_names = list(config.datasets.train), list(config.datasets.eval)
    train_data, eval_sets = stack_study_data(config, sets)

    mesh = Mesh(np.asarray(devices), ("pop",))
    plan = []  # (kind, first, last, size)
    per_type = len(train_names) * config.population.replicates
    for t, kind in enumerate(config.population.model_types):
        size = chunk_size_for(config, env, kind, int(train_data.capacity), len(devices))
        for first in range(t * per_type, (t + 1) * per_type, size):
            plan.append((kind, first, min(first + size, (t + 1) * per_type) - 1, size))
    rows_per_model = len(config.training.eval_epochs)
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
    train_data, eval_sets = jax.device_put((train_data, eval_sets), NamedSharding(mesh, PartitionSpec()))

    def chunk_arguments(first, last, size):
        indices = np.arange(first, last + 1)
        padded = np.concatenate([indices, np.full(size - indices.size, indices[-1])]).astype(np.int32)
        dataset_index = np.asarray([train_names.index(config.model_spec(int(i))[1]) for i in padded], np.int32)
        return indices, jax.device_put((padded, dataset_index), sharded)

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
                lowered = make_chunk_fn(config, env, kind, mesh).lower(
                    *chunk_arguments(first, last, size)[1], train_data, eval_sets)
                programs[kind] = compiler.submit(lowered)

            def compute(kind, first, last, size):
                indices, (padded, dataset_index) = chunk_arguments(first, last, size)
                t = time.perf_counter()
                program = programs[kind].result()
                compile_wait = time.perf_counter() - t
                t = time.perf_counter()
                out = jax.device_get(program(padded, dataset_index, train_data, eval_sets))
                elapsed = time.perf_counter() - t
                out = {k: np.asarray(v)[: indices.size] for k, v in out.items()}
                entry = results.write_chunk(out_dir, first, last, _rows(config, indices, out, eval_names), digest)
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
