"""The sweep runner: chunk-size and device-count invariance, one compiled program for every chunk of a
size, resume after a kill, clear errors."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from mismatch_jax.config_io import ConfigError, from_dict
from mismatch_jax.sweep import results
from mismatch_jax.sweep.config import SweepConfig, load
from mismatch_jax.sweep.runner import run_sweep
from jit_counts import jit_work

TINY = textwrap.dedent("""
    name = "tiny"
    env = "cartpole_balance"
    seed = 3
    [population]
    model_types = ["P", "DE"]
    replicates = 2
    [population.model]
    hidden_size = 8
    num_hidden_layers = 1
    ensemble_size = 2
    [training]
    num_epochs = 3
    eval_epochs = [1, 3]
    batch_size = 32
    learning_rate = [1e-3, 1e-2]
    [datasets]
    train = ["grid", "sampled"]
    eval = ["grid", "sampled"]
    grid_points = 3
    sampled_size = 200
    [cem]
    horizon = 4
    population_size = 12
    num_elites = 3
    num_iterations = 2
    [evaluation]
    trials = 2
    episode_length = 10
    [run]
    chunk_size = {chunk}
""")


def _config(tmp_path, chunk, name="cfg.toml"):
    text = TINY.format(chunk=chunk)
    text = text.replace('[datasets]\n', f'[datasets]\ncache_dir = "{tmp_path / "cache"}"\n')
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    table = run_sweep(load(_config(tmp, 4)), tmp / "out", progress=False, log=lambda s: None)
    return tmp, table


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chunked")
    table = run_sweep(load(_config(tmp, 2)), tmp / "out", progress=False, log=lambda s: None)
    return tmp, table


def _numbers(table):
    return table.drop(columns=["reward"]).reset_index(drop=True), np.stack(table["reward"].to_numpy())


def test_table_layout(reference):
    tmp, table = reference
    assert len(table) == 2 * 2 * 2 * 2  # types × train datasets × replicates × eval epochs
    assert {"model_id", "seed", "model_type", "train_dataset", "epoch", "ll_grid", "mse_sampled",
            "reward", "reward_mean", "reward_std", "diverged"} <= set(table.columns)
    assert all(tuple(e) == (1, 3) for e in table.groupby("model_id")["epoch"].apply(list))
    assert (table["learning_rate"].between(1e-3, 1e-2)).all()
    assert table["learning_rate"].nunique() == 8
    np.testing.assert_allclose(table["reward_mean"], [np.mean(r) for r in table["reward"]], rtol=1e-6)
    assert (tmp / "out" / "config.resolved.toml").is_file()
    assert results.read_manifest(tmp / "out")["status"] == "complete"
    assert load(tmp / "out" / "config.resolved.toml") == load(_config(tmp, 4))


# Chunk size changes the batch of every vmapped GEMM, and XLA:CPU's batched-GEMM kernels round
# differently for different batch sizes, so rows agree to this tolerance (measured: up to 1.6e-5
# relative, DE models), not bit for bit; keys, data and hyper-parameters are identical.
CHUNK_RTOL, CHUNK_ATOL = 1e-4, 1e-6


def test_chunk_size_changes_numbers_only_within_the_documented_tolerance(reference, chunked):
    _, table = reference
    _, other = chunked
    a, ra = _numbers(table)
    b, rb = _numbers(other)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=CHUNK_RTOL, atol=CHUNK_ATOL)
    np.testing.assert_allclose(ra, rb, rtol=CHUNK_RTOL, atol=CHUNK_ATOL)
    assert (a["learning_rate"].to_numpy() == b["learning_rate"].to_numpy()).all()  # same draws exactly


def test_stages_one_by_one_equal_the_fused_chunk(reference):
    """The train / LL / reward stages jitted apart (as benchmarks/bench_population.py times them)
    give the numbers of the sweep's fused chunk."""
    import jax

    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import chunk_model_arguments, make_chunk_parts, stack_study_data
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    tmp, table = reference
    config = load(_config(tmp, 4))
    env = make(config.env)
    sets, _ = build_study_datasets(StudyData.of_sweep(config), env, log=lambda s: None)
    train_data, eval_sets, env_settings = stack_study_data(config, sets)
    indices = np.arange(4, dtype=np.int32)  # the first chunk: P models
    dataset_index, setting_index = chunk_model_arguments(config, indices)
    parts = make_chunk_parts(config, env, "P")
    trained = jax.jit(parts.train)(indices, dataset_index, train_data)
    ll, _ = jax.jit(parts.likelihood)(trained.kept_params, trained.normalizers, setting_index, eval_sets,
                                      None)  # P models: no deterministic-LL variances
    rewards = jax.jit(parts.reward)(trained.kept_params, trained.normalizers, trained.epoch_keys, setting_index,
                                    env_settings)
    rows = table[table["model_id"] < 4].sort_values(["model_id", "epoch"])
    ll_columns = [f"ll_{name}" for name in config.datasets.eval]
    np.testing.assert_allclose(np.asarray(ll).reshape(-1, len(ll_columns)), rows[ll_columns].to_numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(rewards).reshape(len(rows), -1), np.stack(rows["reward"].to_numpy()),
                               rtol=1e-4, atol=1e-4)


def test_chunk_program_does_not_retrace_for_the_next_chunk(chunked):
    """Two chunks of one size (other model indices, other train dataset) run one compiled program:
    the second call traces, lowers and compiles nothing, and gives the sweep's rows of its models."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from mismatch_jax.envs import make
    from mismatch_jax.sweep.chunk import chunk_model_arguments, make_chunk_fn, stack_study_data
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    tmp, table = chunked
    config = load(_config(tmp, 2))
    env = make(config.env)
    sets, _ = build_study_datasets(StudyData.of_sweep(config), env, log=lambda s: None)  # from the fixture's cache
    mesh = Mesh(np.asarray(jax.local_devices()), ("pop",))
    # Placed as run_sweep places them (so the fixture's sweep left this program in the XLA cache).
    shared = jax.device_put(stack_study_data(config, sets), NamedSharding(mesh, PartitionSpec()))
    chunk = make_chunk_fn(config, env, "P", mesh)

    def arguments(first):
        indices = np.arange(first, first + 2, dtype=np.int32)
        return jax.device_put((indices, *chunk_model_arguments(config, indices)),
                              NamedSharding(mesh, PartitionSpec("pop")))

    first_args, next_args = arguments(0), arguments(2)
    next_indices = next_args[0]
    assert not np.array_equal(first_args[1], next_args[1])  # P models on "grid", then on "sampled"
    with jit_work() as first:
        jax.block_until_ready(chunk(*first_args, *shared))
    with jit_work() as second:
        out = jax.block_until_ready(chunk(*next_args, *shared))
    assert first["trace"] >= 1 and first["lower"] >= 1  # the counter sees this program
    assert sum(second.values()) == 0, dict(second)
    rows = table[table["model_id"].isin(np.asarray(next_indices))].sort_values(["model_id", "epoch"])
    ll_columns = [f"ll_{name}" for name in config.datasets.eval]
    np.testing.assert_allclose(np.asarray(out["ll"]).reshape(len(rows), -1), rows[ll_columns].to_numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["reward"]).reshape(len(rows), -1), np.stack(rows["reward"].to_numpy()),
                               rtol=1e-5, atol=1e-5)


def test_resume_recomputes_nothing_finished(reference, chunked, tmp_path):
    import shutil

    _, table = reference
    cfg = load(_config(chunked[0], 2))
    out = tmp_path / "out"
    shutil.copytree(chunked[0] / "out", out)
    chunks = results.finished_chunks(out)
    assert len(chunks) == 4
    kept = results.chunk_path(out, *chunks[0])
    stamp = kept.stat().st_mtime_ns
    results.chunk_path(out, *chunks[-1]).unlink()
    (out / "results.parquet").unlink()
    with pytest.raises(results.OutputDirError, match="--resume"):
        run_sweep(cfg, out, progress=False, log=lambda s: None)
    resumed = run_sweep(cfg, out, resume=True, progress=False, log=lambda s: None)
    assert kept.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(_numbers(resumed)[0], _numbers(table)[0], check_exact=False, rtol=CHUNK_RTOL,
                                  atol=CHUNK_ATOL)


def test_resume_with_other_config_is_refused(reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0] / "out", out)
    with pytest.raises(results.OutputDirError, match=r"different config \(it differs in datasets.cache_dir: .*; "
                                                     r"run.chunk_size: 4 → 2\)"):
        run_sweep(load(_config(tmp_path, 2)), out, resume=True, progress=False, log=lambda s: None)


def _cli(args, env=None, umask=None, **kw):
    previous = None if umask is None else os.umask(umask)  # the child inherits it (no preexec_fn: JAX warns on fork)
    try:
        return _popen(args, env, **kw)
    finally:
        if previous is not None:
            os.umask(previous)


def _popen(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "mismatch_jax.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


# Slow (60 s): the default tier keeps test_resume_recomputes_nothing_finished; the slow Ray tests kill a
# driver and a node mid-sweep and resume to an equal table.
@pytest.mark.slow
def test_sigkill_then_resume_and_two_devices_mapped_match(reference, tmp_path):
    _, table = reference
    cfg = _config(tmp_path, 2)
    out = tmp_path / "out"
    # Two devices with the models mapped one at a time inside each device's block: sharding and
    # the map layout compose, and the resume (default layout, one device) gives the same numbers.
    # Under umask 022 (files honour it: 0644, not mkstemp's 0600).
    proc = _cli(["sweep", str(cfg), "--out", str(out), "--no-progress", "--devices", "2", "--layout", "map:1"],
                umask=0o022)
    deadline = time.time() + 240
    while time.time() < deadline and len(results.finished_chunks(out)) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = results.finished_chunks(out)
    assert 2 <= len(finished) < 4 and not (out / "results.parquet").exists()
    done = _cli(["sweep", str(cfg), "--out", str(out), "--resume", "--no-progress"], umask=0o022)
    log = done.communicate(timeout=300)[0]
    assert done.returncode == 0, log
    resumed = pd.read_parquet(out / "results.parquet")
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
    assert not [p for p in written if p.name.startswith(".")]  # no lock, probe or temporary left
    a, ra = _numbers(table)
    b, rb = _numbers(resumed)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_exact=False, rtol=CHUNK_RTOL, atol=CHUNK_ATOL)
    np.testing.assert_allclose(ra, rb, rtol=CHUNK_RTOL, atol=CHUNK_ATOL)
    assert not list(out.rglob("*.tmp"))  # the kill's half-written files are gone after the resume
    assert (out / "ll_reward_scatter.png").is_file()


@pytest.mark.unit
def test_bad_configs_rejected_before_compile(tmp_path):
    base = {"env": "cartpole_balance"}
    with pytest.raises(ConfigError, match="population.replicatse"):
        from_dict(SweepConfig, {**base, "population": {"replicatse": 3}})
    with pytest.raises(ConfigError, match="training.num_epochs: expected an integer"):
        from_dict(SweepConfig, {**base, "training": {"num_epochs": "ten"}})
    with pytest.raises(ConfigError, match="replicates must be >= 1"):
        from_dict(SweepConfig, {**base, "population": {"replicates": -2}})
    with pytest.raises(ConfigError, match="unknown environment 'cartpol'"):
        from_dict(SweepConfig, {"env": "cartpol"})
    with pytest.raises(ConfigError, match="eval_epochs must lie in"):
        from_dict(SweepConfig, {**base, "training": {"num_epochs": 5, "eval_epochs": [9]}})


@pytest.mark.unit
def test_a_chunk_that_cannot_be_written_is_a_clear_error_and_keeps_the_rest(tmp_path):
    # Runs as root too (root ignores directory permissions): a file where chunks/ must go.
    out = tmp_path / "out"
    out.mkdir()
    results.write_manifest(out, {"status": "running"})
    (out / "chunks").write_text("in the way")
    frame = pd.DataFrame({"model_id": [0], "epoch": [1]})
    with pytest.raises(results.OutputDirError, match="cannot write to .*chunks.*--out"):
        results.write_chunk(out, 0, 0, frame, "0" * 16)
    assert results.read_manifest(out) == {"status": "running"}
    assert not list(out.glob(".*.tmp"))


@pytest.mark.unit
def test_unwritable_out_dir_is_clear(tmp_path, capsys):
    from mismatch_jax import cli

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli.main(["sweep", str(_config(tmp_path, 4)), "--out", str(blocker / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot create output directory" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# Integrity on resume, one config per output directory, divergence per model, absurd configs.
# ---------------------------------------------------------------------------------------------


def test_damaged_and_misnamed_chunks_are_quarantined_and_recomputed(chunked, tmp_path):
    import shutil

    source, table = chunked
    out = tmp_path / "out"
    shutil.copytree(source / "out", out)
    (out / "results.parquet").unlink()
    chunks = results.finished_chunks(out)
    truncated, scrambled, copied, renamed = (results.chunk_path(out, *c) for c in chunks)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    scrambled.write_bytes(np.random.default_rng(0).bytes(scrambled.stat().st_size))
    shutil.copyfile(copied, renamed)  # a valid chunk under another chunk's name
    (out / "chunks" / ".chunk_00000000_00000001.parquet.x.tmp").write_text("left by a kill")
    lines = []  # (in this process: the chunk programs come from the run's XLA cache either way)
    run_sweep(load(_config(source, 2)), out, resume=True, progress=False, log=lines.append)
    log = "\n".join(lines)
    assert log.count("quarantine") >= 3, log
    assert len(list((out / "quarantine").iterdir())) == 3
    assert not list(out.rglob("*.tmp"))
    resumed = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(_numbers(resumed)[0], _numbers(table)[0], check_dtype=False)  # same chunk size
    manifest = results.read_manifest(out)
    assert manifest["status"] == "complete" and len(manifest["chunks"]) == 4
    assert all(len(entry["sha256"]) == 16 and entry["config_hash"] == manifest["config_hash"]
               for entry in manifest["chunks"])


def test_a_deleted_manifest_cannot_mix_two_configs(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0] / "out", out)
    (out / "manifest.json").unlink()
    other = _config(tmp_path, 2)
    from mismatch_jax import cli

    assert cli.main(["sweep", str(other), "--out", str(out), "--resume", "--no-progress"]) == 2
    log = capsys.readouterr().err
    assert "Traceback" not in log, log
    assert "different config (it differs in datasets.cache_dir: " in log and "; run.chunk_size: 4 → 2)" in log, log
    ours = results.config_hash((out / "config.resolved.toml").read_text())
    (out / "config.resolved.toml").unlink()  # and without the resolved config, the chunks tell
    with pytest.raises(results.OutputDirError, match=rf"hash {ours} in chunk"):
        run_sweep(load(other), out, resume=True, progress=False, log=lambda s: None)


def test_runaway_models_are_flagged_on_all_their_rows_and_left_out(reference, tmp_path):
    # The reference's datasets serve this run too. The rate range is a constant of the chunk
    # program, so this population compiles its own: one model type (one program) is enough.
    from mismatch_jax.analysis.plots import ll_reward_scatter

    text = _config(reference[0], 4).read_text().replace("learning_rate = [1e-3, 1e-2]", "learning_rate = [1e-3, 100.0]")
    text = text.replace('model_types = ["P", "DE"]', 'model_types = ["DE"]')
    path = tmp_path / "runaway.toml"
    path.write_text(text)
    table = run_sweep(load(path), tmp_path / "out", progress=False, log=lambda s: None)
    per_model = table.groupby("model_id")
    assert (per_model["diverged"].nunique() == 1).all()  # one flag per model, on every row
    diverged = per_model["diverged"].first()
    assert diverged.any() and not diverged.all()
    mse = table[[c for c in table.columns if c.startswith("mse_")]]
    runaway = (~np.isfinite(mse)).any(axis=1) | (mse > 1e3).any(axis=1)
    assert diverged[table.loc[runaway, "model_id"].unique()].all()  # every runaway model is flagged
    content = ll_reward_scatter(table, tmp_path / "figures", num_bootstrap=20)
    assert content["n_diverged_excluded"] == int(diverged.sum())


@pytest.mark.slow  # ~15 s; a diverged model is flagged and isolated in tests/train/test_population.py (default tier)
def test_neighbours_of_a_diverging_model_are_bit_identical():
    """A model blowing up (learning rate 100) does not touch the others of its population."""
    from mismatch_jax.data import TransitionData
    from mismatch_jax.models.core import ModelConfig
    from mismatch_jax.train import TrainConfig, TrainHParams, make_train, model_keys

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    action = rng.uniform(-1, 1, size=(200, 1)).astype(np.float32)
    data = TransitionData.from_arrays(jax.random.key(0), obs, action, obs + 0.1 * action, validation_fraction=0.2)
    train = make_train(TrainConfig(model=ModelConfig(kind="DE", obs_dim=3, action_dim=1, hidden_size=16,
                                                     num_hidden_layers=2, ensemble_size=2),
                                   num_epochs=4, batch_size=32))
    keys = model_keys(jax.random.key(1), 0, 3)
    wild = train(keys, None, data, TrainHParams.population(3, learning_rate=jnp.array([1e-3, 1e4, 3e-3])))
    tame = train(keys, None, data, TrainHParams.population(3, learning_rate=jnp.array([1e-3, 1e-3, 3e-3])))
    assert bool(wild.diverged[1]) or float(wild.metrics.val_mse[1].max()) > 1e3 * float(wild.initial_val_mse[1])
    for n in (0, 2):
        for a, b in zip(jax.tree.leaves((wild.params, wild.metrics)), jax.tree.leaves((tame.params, tame.metrics))):
            np.testing.assert_array_equal(np.asarray(a)[n], np.asarray(b)[n])


@pytest.mark.unit
@pytest.mark.parametrize("overrides, fragment", [
    (["population.model.hidden_size=100000", "population.model.num_hidden_layers=2"],
     "population.model.hidden_size = 100000"),
    (["population.replicates=1000000", "run.chunk_size=1"], "population.replicates = 1000000"),
    (["training.learning_rate=nan"], "learning_rate must be a finite number"),
    (["training.weight_decay=inf"], "weight_decay must be a finite number"),
    (["datasets.expert_min_reward=nan"], "expert_min_reward must be a finite number"),
    (["evaluation.trials=0"], "trials must be >= 1"),
    (["evaluation.episode_length=0"], "episode_length must be >= 1"),
    (["training.num_epochs=0"], "num_epochs must be >= 1"),
    (["run.memory_gb=0.0001", "run.chunk_size=8"], "run.chunk_size = 8"),  # ~16-31 kB per model, 105 kB
])
def test_absurd_configs_are_refused_within_seconds_naming_the_key(overrides, fragment, tmp_path, capsys):
    from mismatch_jax import cli

    args = ["sweep", str(_config(tmp_path, 4)), "--out", str(tmp_path / "out"), "--no-progress"]
    started = time.time()
    assert cli.main(args + [item for o in overrides for item in ("--set", o)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err
    assert time.time() - started < 30
    assert not list((tmp_path / "out").glob("chunks/*.parquet"))


def test_a_sweep_on_an_out_another_sweep_holds_is_refused_at_once(tmp_path):
    from mismatch_jax.files import directory_lock

    out = tmp_path / "out"
    out.mkdir()
    with directory_lock(out):  # as a running sweep holds it
        proc = _cli(["sweep", str(_config(tmp_path, 4)), "--out", str(out), "--no-progress"])
        log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "Traceback" not in log, log
    assert f"{out} is in use by a sweep (pid {os.getpid()} on " in log, log
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, the lock gone with its holder


@pytest.mark.slow  # ~35 s: a whole sweep in a subprocess; the refusal itself is checked above in seconds
def test_two_configs_started_at_once_on_one_out_one_is_refused(reference, tmp_path):
    """Two sweeps of different configs on one OUT at the same moment: one is refused at once, the
    other's table is its config's table alone; its files honour the umask and none is left over."""
    source, _ = reference
    out = tmp_path / "out"
    # Another name: another config hash, the same numbers (so either may win).
    other = tmp_path / "other.toml"
    other.write_text(_config(source, 4).read_text().replace('name = "tiny"', 'name = "tiny-b"'))
    procs = [_cli(["sweep", str(cfg), "--out", str(out), "--no-progress"], umask=0o022)
             for cfg in (_config(source, 4), other)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], logs
    refused = logs[[p.returncode for p in procs].index(2)]
    errors = [line for line in refused.splitlines() if "error" in line]
    # (or, had it started only after the other finished, refused for the results it found there)
    assert len(errors) == 1 and "Traceback" not in refused, refused
    assert "is in use by a sweep (pid" in errors[0] or "already holds sweep results" in errors[0], refused
    winner = load(out / "config.resolved.toml").name
    assert results.read_manifest(out)["name"] == winner
    assert pd.read_parquet(out / "results.parquet").equals(pd.read_parquet(source / "out" / "results.parquet"))
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in written if p.stat().st_mode & 0o777 != 0o644], [(p, oct(p.stat().st_mode)) for p in written]
    leftovers = [p.name for p in written if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers and not (out / "claims").exists(), leftovers


@pytest.mark.unit
def test_the_merge_verifies_every_chunk_again(tmp_path):
    frame = lambda first: pd.DataFrame({"model_id": [first, first + 1], "epoch": [1, 1], "x": [0.5, 1.5]})
    results.write_chunk(tmp_path, 0, 1, frame(0), "a" * 16)
    results.write_chunk(tmp_path, 2, 3, frame(2), "a" * 16)
    assert len(results.merge_chunks(tmp_path, [(0, 1), (2, 3)], 4, 1, "a" * 16)) == 4
    results.write_chunk(tmp_path, 2, 3, frame(2), "b" * 16)  # replaced after it was checked
    with pytest.raises(results.OutputDirError, match=r"chunk 2..3 changed after it was checked \(written by another"):
        results.merge_chunks(tmp_path, [(0, 1), (2, 3)], 4, 1, "a" * 16)
