"""The ``sweep`` and ``datasets`` commands behind the CLI's table: the sweep's flags (resume, Ray),
the run, its figures and the summary table printed at the end (also by ``plot``)."""

from __future__ import annotations

import argparse
import dataclasses

# Launchers that start N copies of a command, by the variable that says how many.
COPIES_VARIABLES = (("SLURM_STEP_NUM_TASKS", "srun"), ("OMPI_COMM_WORLD_SIZE", "mpirun"),
                    ("PMI_SIZE", "an MPI launcher"), ("WORLD_SIZE", "torchrun"))


def add_ray_flags(parser: argparse.ArgumentParser, unit: str = "chunk") -> None:
    """``--ray [ADDRESS]`` and its resource flags, for a command that runs one Ray task per
    ``unit`` (a sweep's chunk, an MBPO seed block)."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help=f"run one Ray task per {unit}: no ADDRESS = $RAY_ADDRESS, else a Ray instance "
                             "started on this machine; 'auto' = the cluster this node joined; HOST:PORT = "
                             "the head node's `ray start --head --port` (README)")
    parser.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                        help=f"GPUs per {unit} task (default: 1 on a cluster with GPUs, else 0)")
    parser.add_argument("--ray-cpus", type=float, default=1.0, metavar="N",
                        help=f"CPUs per {unit} task (default: %(default)s)")
    parser.add_argument("--ray-retries", type=int, default=3, metavar="N",
                        help=f"times Ray re-runs a {unit} task whose worker or node died (default: %(default)s)")


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` command's own flags."""
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep in OUT (finished chunks are verified and kept)")
    add_ray_flags(parser, "chunk")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="do not write report.html at the end")


def ray_options(options: argparse.Namespace):
    """The ``RayOptions`` of ``--ray …`` (None without ``--ray``); refuses ``--ray-*`` flags
    without ``--ray``."""
    from mismatch_jax.errors import InputError

    if options.ray is None:
        given = [f for f, v, d in (("--ray-gpus", options.ray_gpus, None), ("--ray-cpus", options.ray_cpus, 1.0),
                                   ("--ray-retries", options.ray_retries, 3)) if v != d]
        if given:
            raise InputError(f"{', '.join(given)} need --ray")
        return None
    from mismatch_jax.sweep.ray_runner import RayOptions

    ray = RayOptions(address=options.ray or None, num_gpus=options.ray_gpus, num_cpus=options.ray_cpus,
                     max_retries=options.ray_retries, devices=options.devices)
    ray.check()
    return ray


def check_single_copy(environ=None) -> None:
    """Refuses to run as one of several copies a launcher started (``srun -n N``, ``mpirun``,
    ``torchrun``): each copy would run the whole sweep. The error names the variable."""
    import os

    from mismatch_jax.errors import InputError

    environ = os.environ if environ is None else environ
    for variable, launcher in COPIES_VARIABLES:
        value = environ.get(variable, "").strip()
        if not value:
            continue
        if not value.isdigit():
            raise InputError(f"{variable}={value!r} (set by {launcher}) is not a process count; unset it")
        if int(value) > 1:
            raise InputError(f"{variable}={value}: {launcher} started {value} copies of this command, and each would "
                             "run all of it; start one driver and pass --ray to spread its chunks over the "
                             "nodes (README: Ray on SLURM)")


def check_ray_options(options: argparse.Namespace) -> None:
    """The ``--ray*`` flags and launcher variables of a command without other flags of its own
    (``mbpo``), checked before anything runs."""
    ray_options(options)
    check_single_copy()


def check_sweep_options(options: argparse.Namespace) -> None:
    """The sweep's flags and launcher variables, checked before anything runs."""
    ray_options(options)
    check_single_copy()


def run_sweep_command(config, out: str, options: argparse.Namespace) -> None:
    """Runs a sweep into ``out`` (on Ray with ``--ray``) and draws its scatter / per-epoch figures."""
    from mismatch_jax.analysis.epochs import fig4_best_epochs, fig5_dataset_nll
    from mismatch_jax.analysis.fig3 import fig3_panels, is_pets_population
    from mismatch_jax.analysis.plots import ll_reward_scatter, per_epoch_curves
    from mismatch_jax.sweep.runner import enable_compilation_cache, run_sweep

    ray = ray_options(options)
    enable_compilation_cache()
    table = run_sweep(config, out, resume=options.resume, progress=not options.no_progress, ray=ray)
    content = ll_reward_scatter(table, out)
    from mismatch_jax.sweep.results import read_manifest

    fig3 = fig3_panels(table, out, dataset_notes=(read_manifest(out) or {}).get("dataset_notes"))
    if not is_pets_population(table):  # per-epoch figures: one population per dataset only
        if table["epoch"].nunique() > 1:
            per_epoch_curves(table, out)
        fig4_best_epochs(table, out)
        fig5_dataset_nll(table, out)
    print_summary(out, table, content, fig3)
    print_env_params_summary(out, table)
    if not getattr(options, "no_report", False):  # after every figure: the page inlines them
        from mismatch_jax.analysis.report import sweep_report

        print(f"wrote {sweep_report(out, table)}")


def build_datasets(config, out: str, options: argparse.Namespace) -> None:
    """Builds a sweep's datasets into its cache (``--out`` replaces ``datasets.cache_dir``)."""
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.study_data import StudyData, build_study_datasets

    if options.out:
        config = dataclasses.replace(config, datasets=dataclasses.replace(config.datasets, cache_dir=out))
    from mismatch_jax.sweep.env_params import expand

    env = make(config.env)
    build_study_datasets(StudyData.of_sweep(config), env, settings=expand(config.dynamics, env, config.seed))


def print_summary(out: str, table, content: dict, fig3: dict | None = None) -> None:
    """Prints the correlation table of a sweep (``content``: the scatter's correlations JSON) and,
    with ``fig3`` (``analysis.fig3.fig3_panels``' JSON), the reward distribution per model type
    and training dataset."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"LL vs reward ({out})")
    for column in ("train", "eval", "n", "Pearson ρ [95% CI]", "Spearman ρ [95% CI]"):
        summary.add_column(column)
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"
    for rec in content["correlations"]:
        summary.add_row(rec["train_dataset"], rec["eval_dataset"], str(rec["n"]),
                        f"{fmt(rec['pearson'])} [{fmt(rec['pearson_ci'][0])}, {fmt(rec['pearson_ci'][1])}]",
                        f"{fmt(rec['spearman'])} [{fmt(rec['spearman_ci'][0])}, {fmt(rec['spearman_ci'][1])}]")
    console.print(summary)
    if fig3 is not None and fig3["reward_distribution"]:
        rewards = Table(title="mean episode reward per model (models < 50 / >= 150)")
        for column in ("type", "trained on", "n", "min", "q25", "median", "q75", "max", "< 50", ">= 150"):
            rewards.add_column(column)
        for rec in fig3["reward_distribution"]:
            rewards.add_row(rec["model_type"], rec["train_dataset"], str(rec["n"]),
                            *(f"{rec[k]:.1f}" for k in ("min", "q25", "median", "q75", "max")),
                            f"{rec['below_50']:.0%}", f"{rec['at_least_150']:.0%}")
        console.print(rewards)
    console.print(f"{table['model_id'].nunique()} models, {len(table)} rows, "
                  f"{content['n_diverged_excluded']} diverged excluded; wrote {out}/results.parquet, "
                  f"{out}/ll_reward_scatter.png, {out}/ll_reward_correlations.json"
                  + (f", {out}/fig3_ll_reward.png, {out}/fig3_correlations.json" if fig3 is not None else ""))


def print_env_params_summary(out: str, table, epoch="last", num_bootstrap: int = 1000) -> None:
    """With ``[env_params]`` settings in ``table``: draws ``env_params.png`` / writes
    ``env_params_correlations.json`` (``analysis.env_params``) and prints Spearman ρ(LL, reward)
    and the median reward per setting. Does nothing for a sweep without settings."""
    from rich.console import Console
    from rich.table import Table

    from mismatch_jax.analysis.env_params import env_params_figure, swept_axes

    if "env_setting" not in table.columns or not swept_axes(table):
        return
    content = env_params_figure(table, out, epoch=epoch, num_bootstrap=num_bootstrap)
    records = content["settings"]
    env_columns = [c for c in records[0] if c.startswith("env_") and c != "env_setting"]
    evals = list(records[0]["correlations"])
    summary = Table(title="per true-dynamics setting and model type: Spearman ρ(LL, reward) [95% CI]")
    for column in ["setting", *(c[4:] for c in env_columns), "median reward", "type", "n", *evals]:
        summary.add_column(column)
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"
    for rec in records:
        for kind, stats in rec["correlations_by_type"].items():
            cells = [str(rec["env_setting"]), *(str(rec[c]) for c in env_columns),
                     "n/a" if rec["reward_median"] is None else f"{rec['reward_median']:.1f}", kind,
                     str(next(iter(stats.values()))["n"])]
            cells += [f"{fmt(stats[ev]['spearman'])} [{fmt(stats[ev]['spearman_ci'][0])}, "
                      f"{fmt(stats[ev]['spearman_ci'][1])}]" for ev in evals]
            summary.add_row(*cells)
    Console().print(summary)
    Console().print(f"wrote {out}/env_params.png, {out}/env_params_correlations.json")
