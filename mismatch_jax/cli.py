"""The ``mismatch-jax`` command line. Each sub-command imports its room lazily so that
``mismatch-jax --help`` is instant."""

from __future__ import annotations

import argparse
import sys


def _cmd_pets(args: argparse.Namespace) -> int:
    from mismatch_jax.agents.pets import run_pets_cli

    run_pets_cli(args.config, args.out, args.seed)
    return 0


def _cmd_tabular(args: argparse.Namespace, rest: list[str]) -> int:
    from mismatch_jax.experiments.tabular_figures import main_tabular

    return int(main_tabular(rest) or 0)


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

    sub.add_parser(
        "tabular",
        help="tabular MnM / VMBPO / Q-learning experiments (paper 001, Fig. 2-3)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tabular":
        return _cmd_tabular(argparse.Namespace(), argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "pets":
        return _cmd_pets(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
