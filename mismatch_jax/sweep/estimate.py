"""``mismatch-jax estimate CONFIG``: what a sweep will cost, before anything trains.

Every program the sweep runs is lowered from argument *shapes* (``jax.ShapeDtypeStruct``; no
dataset is built, no PETS run happens) and compiled, and XLA's cost and memory analyses are
read (``sweep.costs.program_cost``: every loop body weighted by its trip count):

* **PETS data** — one trial of the PETS runs behind on-policy / expert data (or behind a PETS
  population), all seeds (× env settings) in one program, × ``num_trials``: the trial's model
  fit (``Pets.train_phase``) + its episode. The random first trial is not counted (one random
  episode, no planning).
* per model type, one chunk's **train**, **LL** (a deterministic type's residual variance and
  the one-step LL / MSE) and **reward** stages (``sweep.chunk.make_chunk_parts`` under
  ``laid_out``), each at one device's block of the chunk (``chunk / devices`` models), run
  chunks × devices times (``chunk_size_for``, the last chunk padded as the runner pads it).

An episode (PETS's and the reward stage's ``mpc_episode``) is lowered as its step: one planning
call for every episode the layout runs at once (``planner_lowered``) + one env step per episode
(``env_step_lowered``), × the episode length. So the env is traced and compiled once, not once
per program that steps it (a cart-pole MJX step alone takes ~13 s to compile on 2 cores); the
episode's bookkeeping (trajectory rows, warm-started plan) and its reset are left out.

Argument shapes come from the config: the dataset sizes it implies (``dataset_rows``; upper
bounds where they depend on the PETS runs: every step alive, every planned trial an expert
one), the PETS buffer's capacity (trials + 1) · trial length, and for a PETS population the
S · T prefix datasets of ``sweep.pets_population``. Loops that skip work at run time are scaled
by what the config implies: the trainer's minibatch and validation loops run over the rows a
model has, not the stacked capacity (``row_scales``); epochs skipped by early stopping are
counted (an upper bound). Dataset building from the true dynamics, the competence check and
compilation itself are not counted.

Time is a roofline, max(FLOPs / peak FLOP/s, bytes / bandwidth), on a named device of
``sweep.costs.DEVICES`` (``cpu``: measured on this machine when the command runs).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from mismatch_jax import models
from mismatch_jax.config_io import ConfigError
from mismatch_jax.data.transitions import TransitionData
from mismatch_jax.errors import InputError
from mismatch_jax.sweep.config import SweepConfig
from mismatch_jax.sweep.costs import Cost, Device, ProgramCost, StageEstimate, program_cost  # noqa: F401

TRAINER_FILE = "train/population.py"
ROW_LOOPS = {"train_core.<locals>.run_epoch": "train", "train_core.<locals>.evaluate": "eval"}
# Only the optimised HLO is read, so LLVM's code generation is skipped (level 0), and XLA:CPU's
# fusion emitters are off: 2.3x less compile CPU; FLOPs within 0.1 %, bytes within 0.4 % of the
# default pipeline's (quickstart's P train stage; RESULTS.md).
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def dataset_rows(config: SweepConfig, env) -> dict[str, int]:
    """Rows of every study dataset the config implies: on_policy = seeds × (trials + 1) × trial
    length, expert = expert_episodes (0: every planned trial) × trial length, grid =
    grid_points^(obs + action dims), sampled = sampled_size. Upper bounds where they depend on
    the PETS runs (every step alive, enough trials above the expert threshold)."""
    from mismatch_jax.sweep.study_data import _has_box

    pets = config.datasets.pets
    length, seeds, trials = pets.steps_per_trial(env), pets.num_seeds, pets.num_trials
    episodes = min(config.datasets.expert_episodes or seeds * trials, seeds * trials)
    rows = {"on_policy": seeds * (trials + 1) * length, "expert": episodes * length,
            "sampled": config.datasets.sampled_size}
    if _has_box(env):
        rows["grid"] = config.datasets.grid_points ** (env.obs_dim + env.action_dim)
    return rows


def validation_rows(rows: int, fraction: float) -> int:
    """Validation rows of a study dataset of ``rows`` (``data.split_mask``)."""
    return 0 if fraction == 0 else max(1, int(round(rows * fraction)))


def _f32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def transition_spec(num: int, capacity: int, env) -> TransitionData:
    """Shapes of a ``TransitionData`` of ``num`` datasets × ``capacity`` rows."""
    bools = jax.ShapeDtypeStruct((num, capacity), bool)
    return TransitionData(obs=_f32(num, capacity, env.obs_dim), action=_f32(num, capacity, env.action_dim),
                          next_obs=_f32(num, capacity, env.obs_dim), reward=_f32(num, capacity),
                          weight=_f32(num, capacity), train_mask=bools, val_mask=bools)


def _eval_set(groups: int, rows: int, env, weighted: bool) -> tuple:
    return (_f32(groups, rows, env.obs_dim), _f32(groups, rows, env.action_dim), _f32(groups, rows, env.obs_dim),
            _f32(groups, rows) if weighted else None)


def chunk_inputs(config: SweepConfig, env, settings):
    """(train data shapes, eval set shapes, env settings, rows(dataset index) → (train, eval)
    rows) of the chunks — what ``stack_study_data`` / ``build_pets_population`` would build."""
    vf = config.training.validation_fraction
    rows = dataset_rows(config, env)
    if config.pets_source:
        pets = config.datasets.pets
        seeds, trials, length = pets.num_seeds, pets.num_trials, pets.steps_per_trial(env)
        others = {"on_policy": (seeds - 1) * (trials + 1) * length,
                  "expert": min(config.datasets.expert_episodes or (seeds - 1) * trials, (seeds - 1) * trials) * length}
        eval_sets = tuple(_eval_set(seeds, others[n], env, n == "expert") if n in others else
                          _eval_set(1, validation_rows(rows[n], vf), env, False) for n in config.datasets.eval)

        def data_rows(index: int) -> tuple[float, float]:
            n = (index % trials + 1) * length  # the seed's data before planned trial k
            return n * (1 - vf), n * vf
        return transition_spec(seeds * trials, (trials + 1) * length, env), eval_sets, None, data_rows
    names = config.datasets.train
    count = 1 if settings is None else settings.size
    capacity = max(rows[n] for n in names)
    eval_sets = tuple(_eval_set(count, validation_rows(rows[n], vf), env, False) for n in config.datasets.eval)

    def data_rows(index: int) -> tuple[float, float]:
        n = rows[names[index % len(names)]]
        return n - validation_rows(n, vf), validation_rows(n, vf)
    env_settings = None if settings is None else settings.params
    return transition_spec(count * len(names), capacity, env), eval_sets, env_settings, data_rows


def row_scales(train_config, capacity: int, groups: list[list[tuple[float, float]]]) -> dict[str, float]:
    """The fraction of the trainer's minibatch ("train") and validation ("eval") loop trips that
    do work, averaged over ``groups``: each a list of (training rows, validation rows) of models
    whose population-level skips are decided together (a vmap block, a map group). A slot runs
    when any model of its group has a row there; without validation rows the trainer scores the
    training rows."""
    batch = train_config.batch_size
    eval_batch = min(train_config.eval_batch_size or batch, capacity)
    steps, eval_steps = math.ceil(capacity / batch), math.ceil(capacity / eval_batch)
    train = [math.ceil(max(t for t, _ in g) / batch) / steps for g in groups]
    evals = [math.ceil(max(v if v > 0 else t for t, v in g) / eval_batch) / eval_steps for g in groups]
    return {"train": sum(train) / len(train), "eval": sum(evals) / len(evals)}


def trainer_trip_scale(scales: dict[str, float]):
    """``program_cost``'s trip_scale for programs that contain the population trainer."""
    def scale(where: tuple[str, str]) -> float:
        file, function = where
        if file.endswith(TRAINER_FILE):
            for suffix, name in ROW_LOOPS.items():
                if function.endswith(suffix):
                    return scales[name]
        return 1.0
    return scale


def skip_groups(config: SweepConfig, first: int, count: int, chunk: int, devices: int, layout, rows_of) -> list:
    """Every skip group of a model type's chunks (see ``row_scales``), padded chunks included."""
    block = chunk // devices
    group = block if layout.strategy == "vmap" else max(1, layout.group_size)
    out = []
    for start in range(first, first + count, chunk):
        indices = [min(i, first + count - 1) for i in range(start, start + chunk)]
        for b in range(0, chunk, block):
            for g in range(b, b + block, group):
                out.append([rows_of(config.model_dataset_index(i)) for i in indices[g:min(g + group, b + block)]])
    return out


def _compiled_cost(lowered, trip_scale) -> ProgramCost:
    return program_cost(lowered.compile(compiler_options=COMPILE_OPTIONS), trip_scale)


def combine(parts: list[tuple[ProgramCost, float, float]]) -> ProgramCost:
    """A stage made of programs, each counted ``count`` times for its work and ``calls`` times
    for its HLO ops (a program lowered for one episode and stepped for E episodes at once does E
    times the work in one call's kernels): costs add, peak memory is the largest."""
    cost = Cost()
    for program, count, calls in parts:
        cost = cost + dataclasses.replace(program.cost * count, ops=program.cost.ops * calls)
    return ProgramCost(cost=cost, xla=sum((p.xla * c for p, c, _ in parts), Cost()),
                       peak_bytes=max(p.peak_bytes for p, _, _ in parts), loops=sum(p.loops for p, _, _ in parts),
                       unknown_loops=sum(p.unknown_loops for p, _, _ in parts))


def _model_specs(mcfg, num: int):
    one = lambda k: (models.init(k, mcfg), models.identity_normalizer(mcfg))
    return jax.eval_shape(jax.vmap(one), jax.ShapeDtypeStruct((num,), jax.random.key(0).dtype))


def planner_lowered(planner, mcfg, env, episodes: int):
    """One planning call of ``episodes`` episodes at once (``mpc_episode``'s step, vmapped)."""
    keys = jax.ShapeDtypeStruct((episodes,), jax.random.key(0).dtype)
    params, normalizer = _model_specs(mcfg, episodes)
    plan = jax.ShapeDtypeStruct((episodes,) + tuple(planner.initial_plan.shape), jnp.float32)
    return jax.jit(jax.vmap(planner)).lower(keys, params, normalizer, _f32(episodes, env.obs_dim), plan)


def env_step_lowered(env, env_params):
    """One true-dynamics step of one episode (``env_params``: one setting's constants or None)."""
    state = jax.eval_shape(lambda k: env.reset(k, env_params), jax.random.key(0))
    return jax.jit(lambda st, a: env.step(st, a, env_params)).lower(state, _f32(env.action_dim))


def _pets_train_lowered(config: SweepConfig, env, settings):
    """(PETS, lowered model fit of one trial of the sweep's PETS runs — those of
    ``study_data.pets_runs``, all seeds (× env settings) in one program — and its trip_scale)."""
    from mismatch_jax.agents.pets import PetsState, make_pets, seed_keys

    pets_config = dataclasses.replace(config.datasets.pets, env=config.env, seed=config.seed)
    pets = make_pets(pets_config, env)
    count = 1 if settings is None else settings.size
    keys = jax.eval_shape(lambda: jnp.concatenate([seed_keys(pets_config)] * count))
    env_params = None if settings is None else jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((a.shape[0] * pets_config.num_seeds,) + a.shape[1:], a.dtype), settings.params)
    length, trials = pets.trial_length, pets_config.num_trials
    mcfg = pets_config.model_config(env)
    params, normalizer = _model_specs(mcfg, keys.shape[0])
    state = PetsState(key=keys, trial=jax.ShapeDtypeStruct((), jnp.int32),
                      buffer=transition_spec(keys.shape[0], (trials + 1) * length, env),
                      params=params, normalizer=normalizer, env_params=env_params)
    vf = pets_config.train.validation_fraction
    train_config = pets_config.train.train_config(mcfg)
    # Trial t fits on the t + 1 trials collected so far: each a group of its own in the sum.
    groups = [[((t + 1) * length * (1 - vf), (t + 1) * length * vf)] for t in range(trials)]
    scale = trainer_trip_scale(row_scales(train_config, (trials + 1) * length, groups))
    return pets, jax.jit(pets.train_phase).lower(state), scale


def needs_pets(config: SweepConfig, env) -> bool:
    """Whether the sweep runs PETS for its data (on-policy / expert data, visited states, a PETS
    population)."""
    from mismatch_jax.sweep.study_data import StudyData, _has_box

    names = StudyData.of_sweep(config).names
    return config.pets_source or "on_policy" in names or "expert" in names or not _has_box(env)


def estimate(config: SweepConfig, device: Device, devices: int = 1, log=lambda s: None) -> list[StageEstimate]:
    """Every stage of the sweep ``config`` on ``devices`` devices of kind ``device`` (see the
    module docstring), in the order the sweep runs them."""
    from mismatch_jax.envs import make
    from mismatch_jax.planning.mpc import make_planner
    from mismatch_jax.sweep.chunk import chunk_size_for, laid_out, make_chunk_parts
    from mismatch_jax.sweep.env_params import expand
    from mismatch_jax.sweep.runner import check_scale
    from mismatch_jax.sweep.study_data import StudyData, _has_box

    env = make(config.env)
    if "grid" in StudyData.of_sweep(config).names and not _has_box(env):  # as build_study_datasets refuses it
        raise ConfigError(f"datasets.train / datasets.eval: {env.name} has no state-action box for grid data; "
                         "use 'sampled' (states from the PETS runs, uniform actions)")
    settings = expand(config.dynamics, env, config.seed)
    train_data, eval_sets, env_settings, rows_of = chunk_inputs(config, env, settings)
    capacity = train_data.obs.shape[1]
    check_scale(config, env, 0, devices, log)  # as the sweep checks it, before any dataset
    # Each program is compiled and analysed in a thread as soon as it is lowered (XLA releases
    # the GIL), while the next one is traced. An episode (PETS's and the reward stage's) is
    # lowered as its two steps — one planning call for every episode in flight, one env step —
    # × its length: the env is traced and compiled once, not once per program that steps it.
    one_setting = None if env_settings is None else jax.tree.map(lambda a: a[0], env_settings)
    stages: dict[str, list] = {}
    meta = {}
    length = config.evaluation.length(env)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        def submit(name, lowered, count=1.0, trip_scale=None, future=None, calls=None):
            future = future or pool.submit(_compiled_cost, lowered, trip_scale)
            stages.setdefault(name, []).append((future, count, count if calls is None else calls))
            return future

        log("lowering the env step")
        env_step = pool.submit(_compiled_cost, env_step_lowered(env, one_setting), None)
        if needs_pets(config, env):
            log("lowering the PETS trial: its model fit and planning call")
            pets, fit, scale = _pets_train_lowered(config, env, settings)
            seeds = config.datasets.pets.num_seeds * (1 if settings is None else settings.size)
            submit("PETS data", fit, 1.0, scale)
            submit("PETS data", planner_lowered(pets.planner, pets.config.model_config(env), env, seeds), pets.trial_length)
            submit("PETS data", None, pets.trial_length * seeds, future=env_step, calls=pets.trial_length)
            meta["PETS data"] = (config.datasets.pets.num_trials, 1)
        for kind, first, count in config.type_ranges():
            mcfg = config.model_config_of(kind, env)
            layout = config.run.layout.resolve(backend=device.backend, width=mcfg.hidden_size)
            parts = laid_out(make_chunk_parts(config, env, kind), layout, mcfg.hidden_size)
            chunk = chunk_size_for(config, env, kind, capacity, devices)
            runs, block = -(-count // chunk) * devices, chunk // devices
            indices = _i32(block)
            data, scale = train_data, None
            if kind == "PETS":
                data = _model_specs(mcfg, train_data.obs.shape[0])
            else:
                groups = skip_groups(config, first, count, chunk, devices, layout, rows_of)
                train_config = config.training.train_config(mcfg, keep_epochs=tuple(config.training.eval_epochs))
                scale = trainer_trip_scale(row_scales(train_config, capacity, groups))
            log(f"lowering the {kind} stages ({block} models per device, {runs} blocks)")
            traced = jax.jit(parts.train).trace(indices, indices, data)
            trained = traced.out_info
            submit(f"train ({kind})", traced.lower(), 1.0, scale)
            variance = jax.jit(parts.variance).trace(trained.kept_params, trained.normalizers, indices, data)
            if variance.out_info is not None:
                submit(f"LL ({kind})", variance.lower())
            submit(f"LL ({kind})", jax.jit(parts.likelihood).lower(
                trained.kept_params, trained.normalizers, indices, eval_sets, variance.out_info))
            # Episodes in flight: every (model, kept epoch, trial) of the models the layout runs at once.
            per_model = trained.epoch_keys.shape[1] * config.evaluation.trials
            live = block if layout.strategy == "vmap" else min(block, max(1, layout.group_size))
            planner = make_planner(config.cem.for_env(env), mcfg, env.reward_fn, env.termination_fn)
            submit(f"reward ({kind})", planner_lowered(planner, mcfg, env, live * per_model),
                   length * -(-block // live))
            submit(f"reward ({kind})", None, length * block * per_model, future=env_step,
                   calls=length * -(-block // live))
            for stage in (f"train ({kind})", f"LL ({kind})", f"reward ({kind})"):
                meta[stage] = (runs, devices)
        log(f"compiling and analysing {len(stages)} stages")
        return [StageEstimate(name, combine([(f.result(), c, n) for f, c, n in parts_]), *meta[name])
                for name, parts_ in stages.items()]


def run_estimate(config: SweepConfig, out: str, options) -> dict:
    """The ``estimate`` command: prints the estimate of sweep ``config`` on ``--devices`` ×
    ``--device`` (and writes it to ``--json`` when given); returns its dict."""
    from pathlib import Path

    from mismatch_jax.files import check_writable, write_json
    from mismatch_jax.sweep.costs import device_named

    devices = getattr(options, "devices", 1)
    if devices is None or devices < 1:
        raise InputError(f"--devices must be >= 1, got {devices}")
    if getattr(options, "json", None):
        check_writable(Path(options.json).parent)  # before minutes of compiling
    device = device_named(getattr(options, "device", "cpu") or "cpu")
    t = time.perf_counter()
    from mismatch_jax.sweep.estimate_report import print_report, report

    stages = estimate(config, device, devices, log=print)
    content = report(config, stages, device, devices)
    content["estimate_s"] = time.perf_counter() - t
    print_report(content)
    if getattr(options, "json", None):
        write_json(options.json, content, indent=1)
    return content
