"""Every command the README shows runs to a clean exit, as a user would run it.

The commands are parsed from README.md itself (every ``mismatch-jax ...`` line of its bash blocks,
the main job included), so a command added to the README cannot go untested: each sub-command
needs an entry in ``TINY`` — the ``--set`` overrides that shrink it to seconds of work — or
``test_every_readme_command_has_a_tiny_version`` fails. The commands run in README order, in a
subprocess, in one scratch directory (``runs/...`` paths land there; ``sweeps`` links to the
repository's configs), and each must exit 0 with no traceback on stderr and leave the files
``cli.COMMANDS`` promises (the README's output table names the same files).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mismatch_jax import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_SWEEP_TINY = [
    "env=cartpole_balance", "population.replicates=1", "population.model.hidden_size=8",
    "population.model.num_hidden_layers=1", "population.model.ensemble_size=2", "training.num_epochs=2",
    "training.eval_epochs=[2]", "training.batch_size=32", "datasets.expert_episodes=1",
    "datasets.expert_min_reward=0.0", "datasets.grid_points=2", "datasets.sampled_size=64",
    "datasets.pets.num_trials=1", "datasets.pets.trial_length=30", "datasets.pets.model.angle_dims=[]",
    "datasets.pets.model.hidden_size=8", "datasets.pets.model.num_hidden_layers=1",
    "datasets.pets.model.ensemble_size=2", "datasets.pets.train.num_epochs=2",
    "datasets.pets.planner.horizon=5", "datasets.pets.planner.population_size=16",
    "datasets.pets.planner.num_elites=4", "datasets.pets.planner.num_iterations=1",
    "cem.horizon=5", "cem.population_size=16", "cem.num_elites=4", "cem.num_iterations=1",
    "evaluation.trials=1", "evaluation.episode_length=20", "run.chunk_size=3",
    "population.pets_models=true",  # the quickstart leaves PETS's own models out for time; the test covers them
]
_CEM_TINY = ["cem.horizon=5", "cem.population_size=16", "cem.num_elites=4", "cem.num_iterations=1"]

TINY: dict[str, tuple[str, list[str]]] = {
    # command: (tier, --set overrides appended to the README's own arguments)
    "sweep": ("fast", _SWEEP_TINY),
    "datasets": ("fast", _SWEEP_TINY),
    "estimate": ("slow", _SWEEP_TINY),
    "plot": ("fast", []),
    "report": ("fast", []),
    "configs": ("fast", []),
    "tabular": ("fast", ["seeds=4", "run.num_iters=5"]),
    "pets": ("slow", [
        "env=cartpole_balance", "model.angle_dims=[]", "num_trials=1", "trial_length=20", "model.hidden_size=8",
        "model.num_hidden_layers=1", "model.ensemble_size=2", "train.num_epochs=2", "planner.horizon=5",
        "planner.population_size=16", "planner.num_elites=4", "planner.num_iterations=1"]),
    "attack": ("slow", [
        "data.sampled_size=200", "training.num_epochs=2", *_CEM_TINY, "evaluation.trials=1",
        "evaluation.episode_length=10", "evaluation.final_rounds=1", "cmaes.population_size=4",
        "cmaes.generations=1"]),
    "reweight": ("slow", [
        "training.num_epochs=2", *_CEM_TINY, "evaluation.trials=1", "evaluation.episode_length=10",
        "expert.cem.population_size=16", "expert.cem.num_elites=4", "expert.cem.num_iterations=1",
        "expert.episode_length=20", "pool.size=4096", "pool.chunk_size=4096", "grid.sizes=[10, 20]",
        "grid.epsilons=[2.0, 5.5]", "grid.replicates=1"]),
    "mbpo": ("slow", [
        'agents=["mbpo"]', "mbpo.model.ensemble_size=2", "mbpo.model.hidden_size=8", "mbpo.model_training.num_epochs=1",
        "mbpo.model_train_freq=50", "mbpo.epoch_length=100", "mbpo.rollout_batch_size=8",
        "mbpo.sac.total_env_steps=200", "mbpo.sac.eval_interval=100", "mbpo.sac.learning_starts=50",
        "mbpo.sac.num_eval_episodes=1", "mbpo.sac.buffer_capacity=200", "mbpo.sac.batch_size=16",
        "mbpo.sac.updates_per_step=1", "mbpo.sac.hidden_size=16", "mbpo.sac.num_seeds=2"]),
    "vagram-fig2": ("slow", [
        "snapshot_stride=1", "sac.total_env_steps=1400", "sac.eval_interval=200",
        "sac.learning_starts=1000", "sac.num_eval_episodes=1", "sac.hidden_size=16",
        "models.num_seeds=2", "models.num_train=256", "models.num_held_out=128",
        'models.model_types=["linear"]', "models.steps_per_value_function=8",
        "models.evals_per_value_function=2", "models.batch_size=32"]),
    "mismatch-map": ("slow", [
        "sac.total_env_steps=2000", "sac.eval_interval=1000", "sac.learning_starts=1000",
        "sac.num_eval_episodes=1", "sac.hidden_size=16", "data.max_rows=400",
        "population.num_models=2", "population.hidden_sizes=[8]", "population.num_epochs=2",
        "population.keep_epochs=[1, 2]", "population.batch_size=32", "mnm.rounds=1",
        "mnm.classifier_hidden_size=8", "mnm.classifier_steps=5", "planner.horizon=5",
        "planner.population_size=16", "planner.num_elites=4", "planner.num_iterations=1",
        "evaluation.trials=1", "evaluation.episode_length=10", "evaluation.num_bootstrap=50"]),
}


SLOW_FLAGS = {"--devices", "--ray"}  # README commands with these flags run in the slow tier (extra compiles, a Ray node)


def readme_commands() -> list[list[str]]:
    """The argument lists (after ``mismatch-jax``) of every command in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            if "mismatch-jax" not in line:
                continue
            words = shlex.split(line[line.rindex("mismatch-jax"):], comments=True)
            commands.append(words[1:])
    return commands


def _tier(argv: list[str]) -> str:
    tier = TINY.get(argv[0] if argv else "", ("", []))[0]
    return "slow" if SLOW_FLAGS & set(argv) else tier


def _tier_commands(tier: str) -> list[list[str]]:
    return [argv for argv in readme_commands() if _tier(argv) == tier]


def test_every_readme_command_has_a_tiny_version():
    commands = readme_commands()
    assert commands, "README.md shows no mismatch-jax command"
    names = {argv[0] if argv else "" for argv in commands}
    missing = sorted(names - set(TINY))
    assert not missing, f"README commands without a tiny test version (add them to TINY): {missing}"
    assert ["sweep"] in commands  # the main job of the set-up contract
    # Every experiment command is shown, and the README names every file it promises.
    text = README.read_text()
    assert set(cli.COMMANDS) <= names
    for name, command in cli.COMMANDS.items():
        for output in command.outputs:
            shown = output.format(experiment="fig2a")
            assert shown in text, f"README does not mention {shown}, which `{name}` writes"


def _run(argv: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
    command = argv[0]
    tiny = TINY[command][1]
    full = list(argv)
    if tiny and command not in ("plot", "configs"):
        full += [item for override in tiny for item in ("--set", override)]
    if command == "sweep":
        full.append("--no-progress")
    result = subprocess.run([sys.executable, "-m", "mismatch_jax.cli", *full], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    shown = f"mismatch-jax {shlex.join(argv)}"
    assert result.returncode == 0, f"{shown} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{shown} printed a traceback:\n{result.stderr[-4000:]}"
    return result, full


def _check_outputs(argv: list[str], full: list[str], cwd: Path, stdout: str) -> None:
    command = argv[0]
    if command == "configs":
        assert "quickstart" in stdout.split()
        return
    if command == "report":
        args = cli.build_parser().parse_args(full)
        page = cwd / (args.out or f"{args.run_dir}/report.html")
        text = page.read_text()
        assert 'id="report-data"' in text and "<script src" not in text, f"{page} is not a self-contained report"
        return
    if command == "plot":
        table_dir = cwd / argv[1]
        for name in ("ll_reward_scatter.png", "ll_reward_correlations.json"):
            assert (table_dir / name).stat().st_size > 0, name
        return
    args = cli.build_parser().parse_args(full)
    config = cli.load_command_config(command, args.config, args.overrides)
    if command == "datasets":
        cache = cwd / (args.out or config.datasets.cache_dir)
        assert list(cache.glob("*.npz")), f"no cached dataset in {cache}"
        return
    out = cwd / cli.output_dir(args, config)
    for name in cli.promised_outputs(command, config):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{command}: {out / name} missing"
    if command == "sweep" and config.pets_source:  # the main job: a PETS population (Fig. 3's design)
        import pandas as pd

        table = pd.read_parquet(out / "results.parquet")
        assert sorted(table["model_id"]) == list(range(config.num_models))
        for row in table.itertuples():  # every model's (seed, trial, copy) provenance
            assert (row.pets_seed, row.pets_trial, row.copy) == config.pets_provenance(row.model_id)
            assert (row.model_type, row.train_dataset) == config.model_spec(row.model_id)[:2]
        assert set(table["model_type"]) == set(config.kinds)


def _run_tier(tier: str, tmp_path: Path) -> None:
    commands = _tier_commands(tier)
    assert commands, f"no README command in tier {tier}"
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",  # (the XLA cache: the test run's, tests/conftest.py)
           "PYTHONPATH": str(ROOT)}
    with contextlib.ExitStack() as stack:
        if any("--ray" in argv for argv in commands):
            # The README's --ray commands (--ray, --ray auto) find their cluster through RAY_ADDRESS:
            # here one node on loopback with one CPU, stopped whatever happens.
            from ray_cluster import LOOPBACK_ENV, LocalRayCluster

            cluster = stack.enter_context(LocalRayCluster(env)).start_head()
            env.update(LOOPBACK_ENV, RAY_ADDRESS=cluster.address)
        for argv in commands:
            result, full = _run(argv, tmp_path, env)
            _check_outputs(argv, full, tmp_path, result.stdout)


def test_fast_readme_commands_run_cleanly(tmp_path):
    _run_tier("fast", tmp_path)


@pytest.mark.slow
def test_slow_readme_commands_run_cleanly(tmp_path):
    _run_tier("slow", tmp_path)
