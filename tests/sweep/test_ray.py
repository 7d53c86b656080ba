"""Sweeps on a real Ray cluster: two nodes on loopback (``ray start --head`` and ``ray start
--address``, one CPU each, their own temp dirs), a tiny sweep through it equal (pandas ``equals``)
to the single-process table at the same chunk size; the same with the second node's raylet
SIGKILLed mid-sweep; the driver SIGKILLed and resumed. And, in the default tier, a bad address is
refused within seconds in one line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mismatch_jax.sweep import results
from mismatch_jax.sweep.config import load
from mismatch_jax.sweep.runner import run_sweep
from ray_cluster import LOOPBACK_ENV, LocalRayCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 2  # 8 models in 4 chunks

TINY = """
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
cache_dir = "{cache}"
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
"""


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mismatch_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **LOOPBACK_ENV, "PYTHONPATH": str(ROOT)}, **kw)


# ---------------------------------------------------------------------------------------------
# Default tier: a wrong address fails fast, naming it.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, environ, fragment", [
    (["--ray", "127.0.0.1:{port}"], {}, "--ray 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
    (["--ray"], {"RAY_ADDRESS": "127.0.0.1:{port}"}, "RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers"),
    (["--ray", "head-node"], {}, "--ray head-node: expected HOST:PORT"),
    (["--ray", "127.0.0.1:{port}", "--ray-cpus", "nan"], {}, "--ray-cpus must be a finite number"),
    (["--ray", "127.0.0.1:{port}", "--ray-gpus", "inf"], {}, "--ray-gpus must be a finite number"),
    (["--ray", "127.0.0.1:{port}", "--ray-retries", "-1"], {}, "--ray-retries must be in [0, 1000]"),
    (["--ray-gpus", "1"], {}, "--ray-gpus need --ray"),
    (["--devices", "-1"], {}, "--devices must be >= 0"),
    ([], {"SLURM_STEP_NUM_TASKS": "4"}, "SLURM_STEP_NUM_TASKS=4: srun started 4 copies"),
])
def test_a_bad_ray_address_or_flag_fails_within_seconds_in_one_line(flags, environ, fragment, tmp_path,
                                                                     monkeypatch, capsys):
    from mismatch_jax import cli

    port = free_port()  # nothing listens there
    for name, value in environ.items():
        monkeypatch.setenv(name, value.format(port=port))
    config = tmp_path / "cfg.toml"
    config.write_text(TINY.format(cache=tmp_path / "cache", chunk=CHUNK))
    started = time.time()
    code = cli.main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress",
                     *(f.format(port=port) for f in flags)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and fragment.format(port=port) in err and "Traceback" not in err, err
    assert time.time() - started < 15
    assert not (tmp_path / "out" / "chunks").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--ray", "127.0.0.1:{port}"], "--ray 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port}"),
    (["--ray-cpus", "2"], "--ray-cpus need --ray"),
])
def test_mbpo_refuses_a_bad_ray_address_or_flag_in_one_line_before_writing(flags, fragment, tmp_path, capsys):
    from mismatch_jax import cli

    port = free_port()
    started = time.time()
    code = cli.main(["mbpo", "mbpo_pendulum_quick", "--out", str(tmp_path / "out"), *(f.format(port=port) for f in flags)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and fragment.format(port=port) in err and "Traceback" not in err, err
    assert time.time() - started < 15
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_only_a_launcher_starting_several_copies_is_refused():
    from mismatch_jax.errors import InputError
    from mismatch_jax.experiments.sweep_command import check_single_copy

    check_single_copy({"SLURM_NTASKS": "16", "SLURM_PROCID": "0"})  # a batch script: one copy of 16 tasks' job
    check_single_copy({"SLURM_STEP_NUM_TASKS": "1", "WORLD_SIZE": "1"})
    with pytest.raises(InputError, match=r"^WORLD_SIZE=2: torchrun started 2 copies"):
        check_single_copy({"WORLD_SIZE": "2"})
    with pytest.raises(InputError, match=r"^OMPI_COMM_WORLD_SIZE='two' \(set by mpirun\) is not a process count"):
        check_single_copy({"OMPI_COMM_WORLD_SIZE": "two"})


# ---------------------------------------------------------------------------------------------
# Slow tier: a real two-node cluster.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process table at the same chunk size, and the config file."""
    tmp = tmp_path_factory.mktemp("ray_ref")
    # The Ray workers load the programs compiled here from the test run's cache (tests/conftest.py).
    config = tmp / "cfg.toml"
    config.write_text(TINY.format(cache=tmp / "cache", chunk=CHUNK))
    run_sweep(load(config), tmp / "out", progress=False, log=lambda s: None)
    return config, pd.read_parquet(tmp / "out" / "results.parquet")


@pytest.fixture(scope="module")
def cluster(reference):
    env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "MISMATCH_JAX_CACHE": os.environ["MISMATCH_JAX_CACHE"]}
    with LocalRayCluster(env) as two_nodes:
        two_nodes.start_head().add_node()
        assert two_nodes.node_addresses() == ["127.0.0.1", "127.0.0.1"]  # loopback only
        yield two_nodes


def _sweep(config, out, cluster, *extra):
    return _cli(["sweep", str(config), "--out", str(out), "--no-progress", "--ray", cluster.address, *extra])


def _finished(proc, timeout=600):
    log = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0 and "Traceback" not in log, log
    return log


def _check_complete(out, table):
    """The run's table equals the single-process one and nothing is lost or left over."""
    ran = pd.read_parquet(out / "results.parquet")
    assert ran.equals(table), (ran.compare(table) if ran.shape == table.shape else ran.shape)
    manifest = results.read_manifest(out)
    assert manifest["status"] == "complete" and len(manifest["chunks"]) == 4
    assert manifest["executor"].startswith("Ray (127.0.0.1:")
    assert not (out / "quarantine").exists() and not list(out.rglob("*.tmp")) and not (out / ".sweep.lock").exists()


@pytest.mark.slow
def test_a_sweep_on_two_ray_nodes_equals_the_single_process_table(reference, cluster, tmp_path):
    config, table = reference
    log = _finished(_sweep(config, tmp_path / "out", cluster))
    assert "2 node(s), 2 CPU" in log, log
    _check_complete(tmp_path / "out", table)


@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_chunks_it_wrote(reference, cluster, tmp_path):
    config, table = reference
    out = tmp_path / "out"
    driver = _sweep(config, out, cluster)
    deadline = time.time() + 300
    while time.time() < deadline and not results.finished_chunks(out) and driver.poll() is None:
        time.sleep(0.1)
    assert driver.poll() is None, driver.stdout.read()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    kept = {c: results.chunk_path(out, *c).stat().st_mtime_ns for c in results.finished_chunks(out)}
    assert 1 <= len(kept) < 4 and not (out / "results.parquet").exists()
    log = _finished(_sweep(config, out, cluster, "--resume"))
    assert f"{len(kept)} chunk(s) already done" in log, log
    assert all(results.chunk_path(out, *c).stat().st_mtime_ns == t for c, t in kept.items())  # not recomputed
    _check_complete(out, table)


@pytest.mark.slow
def test_a_pets_population_on_ray_equals_the_single_process_table(reference, cluster, tmp_path):
    """The PETS-population design (PETS's own models take other shared arguments) through Ray."""
    from mismatch_jax.config_io import load_toml, to_toml
    from mismatch_jax.sweep.config import SweepConfig
    from test_pets_population import tiny_paper_overrides

    config = load_toml(SweepConfig, ROOT / "sweeps" / "quickstart.toml", tiny_paper_overrides(tmp_path / "cache"))
    assert config.pets_source and "PETS" in config.kinds
    path = tmp_path / "pets.toml"
    path.write_text(to_toml(config))
    local = run_sweep(load(path), tmp_path / "local", progress=False, log=lambda s: None)
    _finished(_sweep(path, tmp_path / "out", cluster))
    ran = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert ran.equals(pd.read_parquet(tmp_path / "local" / "results.parquet")) and len(ran) == len(local)
    assert set(ran["model_type"]) == {"P", "D", "PETS"}


@pytest.mark.slow  # last: the second node stays dead
def test_a_node_killed_mid_sweep_loses_nothing(reference, cluster, tmp_path):
    config, table = reference
    out = tmp_path / "out"
    driver = _sweep(config, out, cluster)
    deadline = time.time() + 300
    while time.time() < deadline and not cluster.busy_workers(1) and driver.poll() is None:
        time.sleep(0.05)
    assert cluster.busy_workers(1), "no chunk task ran on the second node"
    cluster.kill_raylet(1)  # SIGKILL, with its chunk in flight
    _finished(driver)
    _check_complete(out, table)
