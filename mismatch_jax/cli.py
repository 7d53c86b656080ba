"""The ``mismatch-jax`` command line. Each sub-command imports its room lazily so that
``mismatch-jax --help`` is instant."""

from __future__ import annotations

import argparse
import sys


def _cmd_pets(args: argparse.Namespace) -> int:
    from mismatch_jax.agents.pets import run_pets_cli

    run_pets_cli(args.config, args.out, args.seed)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mismatch_jax.analysis.plots import ll_reward_scatter, per_epoch_curves
    from mismatch_jax.sweep.config import load, load_packaged
    from mismatch_jax.sweep.runner import enable_compilation_cache, run_sweep

    if args.distributed:
        import jax

        jax.distributed.initialize()
    config = load(args.config) if args.config else load_packaged("quickstart.toml")
    out = args.out or config.out_dir
    enable_compilation_cache()
    table = run_sweep(config, out, resume=args.resume, progress=not args.no_progress)
    if len(table):
        content = ll_reward_scatter(table, out)
        if table["epoch"].nunique() > 1:
            per_epoch_curves(table, out)
        _print_summary(out, table, content)
    return 0


def _force_host_devices(count: int) -> None:
    import os

    """Splits the CPU into ``count`` XLA host devices; must run before jax initialises."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _print_summary(out: str, table, content: dict) -> None:
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
    console.print(f"{table['model_id'].nunique()} models, {len(table)} rows, "
                  f"{content['n_diverged_excluded']} diverged excluded; wrote {out}/results.parquet, "
                  f"{out}/ll_reward_scatter.png, {out}/ll_reward_correlations.json")


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from mismatch_jax.analysis.plots import ll_reward_scatter, per_epoch_curves

    path = Path(args.results)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise SystemExit(f"error: results table {path} does not exist; run `mismatch-jax sweep` first")
    table = pd.read_parquet(path)
    out = args.out or str(path.parent)
    epoch = args.epoch if args.epoch == "last" else int(args.epoch)
    content = ll_reward_scatter(table, out, epoch=epoch, num_bootstrap=args.bootstrap)
    if table["epoch"].nunique() > 1:
        per_epoch_curves(table, out)
    _print_summary(out, table, content)
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from mismatch_jax.envs import make
    from mismatch_jax.sweep.config import load
    from mismatch_jax.sweep.study_data import build_study_datasets

    config = load(args.config)
    build_study_datasets(config, make(config.env))
    return 0


# Sub-commands that own their argument parsing: name → (module, entry function, one-line help).
PASSTHROUGH = {
    "attack": ("mismatch_jax.analysis.attack", "main_attack",
               "adversarial CMA-ES attack on a trained model (paper 000, Fig. 6-7)"),
    "reweight": ("mismatch_jax.analysis.reweight", "main_reweight",
                 "distance re-weighting study (paper 000, Fig. 8)"),
    "tabular": ("mismatch_jax.experiments.tabular_figures", "main_tabular",
                "tabular MnM / VMBPO / Q-learning experiments (paper 001, Fig. 2-3)"),
    "mbpo": ("mismatch_jax.experiments.mbpo_compare", "main_mbpo",
             "MBPO-family agents (MLE, VaGraM, IterVAML, value-weighted, MnM) × seeds in one program"),
    "vagram-fig2": ("mismatch_jax.experiments.vagram_fig2", "main_vagram_fig2",
                    "VaGraM Fig. 2: VAML error / MSE of MSE, VAML and VaGraM models over value updates"),
    "mismatch-map": ("mismatch_jax.experiments.mismatch_map", "main_mismatch_map",
                     "each model loss's own objective vs reward, next to LL vs reward"),
}


def _run_passthrough(name: str, rest: list[str]) -> int:
    import importlib

    module, function, _ = PASSTHROUGH[name]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="mismatch-jax",
        description=(
            "JAX experiment engine for objective mismatch in model-based RL. "
            "Run a sub-command with --help for its options."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    pets = sub.add_parser(
        "pets",
        help="run PETS (CEM-MPC on a learned ensemble) and print per-trial rewards",
        description="Run PETS. Without --config, the embedded CPU-sized cartpole swing-up config is used.",
    )
    pets.add_argument("--config", default=None, help="PETS TOML config (default: embedded CPU config)")
    pets.add_argument("--out", default="runs/pets", help="output directory for rewards JSON (default: %(default)s)")
    pets.add_argument("--seed", type=int, default=0, help="root random seed (default: %(default)s)")

    sweep = sub.add_parser(
        "sweep",
        help="train a model population, score LL and CEM reward, write results.parquet + scatter",
        description=(
            "Run an LL-vs-reward population sweep from a TOML config (see sweeps/quickstart.toml). "
            "Writes OUT/results.parquet (one row per model × evaluated epoch), OUT/manifest.json, "
            "OUT/ll_reward_scatter.png and OUT/ll_reward_correlations.json."
        ),
    )
    sweep.add_argument("config", nargs="?", default=None,
                       help="sweep TOML file (default: the packaged quickstart, = sweeps/quickstart.toml)")
    sweep.add_argument("--out", default=None, help="output directory (default: the config's out_dir)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue an interrupted sweep in OUT (finished chunks are kept, not recomputed)")
    sweep.add_argument("--devices", type=int, default=0,
                       help="CPU only: split the host into this many XLA devices (shards the population)")
    sweep.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize() (env-configured) first")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")

    plot = sub.add_parser("plot", help="re-create the scatter/curve figures from a results table",
                          description="Draw the LL-vs-reward scatter (and per-epoch curves) from results.parquet alone.")
    plot.add_argument("results", help="results.parquet or the sweep's output directory")
    plot.add_argument("--out", default=None, help="where to write figures (default: beside the table)")
    plot.add_argument("--epoch", default="last", help="epoch to correlate: 'last' (default) or a number")
    plot.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")

    ds = sub.add_parser("datasets", help="dataset tools")
    ds_sub = ds.add_subparsers(dest="datasets_command", metavar="ACTION")
    build = ds_sub.add_parser("build", help="build and cache the datasets a sweep config needs",
                              description="Build (or find in cache) every dataset named by a sweep config.")
    build.add_argument("config", help="sweep TOML file")

    for name, (_, _, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=f"{help_text} (see `mismatch-jax {name} --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _run_passthrough(argv[0], argv[1:])
    if argv and argv[0] == "sweep" and "--devices" in argv:
        # XLA reads the device count when jax initialises: set it before anything imports jax.
        _force_host_devices(int(argv[argv.index("--devices") + 1]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from mismatch_jax.config_io import ConfigError
    from mismatch_jax.sweep.results import OutputDirError

    handlers = {"pets": _cmd_pets, "sweep": _cmd_sweep, "plot": _cmd_plot, "datasets": _cmd_datasets}
    if args.command == "datasets" and args.datasets_command is None:
        parser.parse_args(["datasets", "--help"])
    try:
        return handlers[args.command](args)
    except (ConfigError, OutputDirError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
