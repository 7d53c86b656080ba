"""The ``mismatch-jax`` command line.

Every experiment command has one shape::

    mismatch-jax COMMAND [CONFIG] [--out DIR] [--set KEY=VALUE ...]

CONFIG is a TOML file or the name of a config shipped with the package (``sweeps/``, e.g.
``attack_quick``; each command also accepts its names without the command prefix, e.g.
``mismatch-jax tabular fig2a``); without it the command's CPU-sized default runs. ``--set``
overrides any key of the config by its dotted path (Hydra-style), validated by the same schema as
the file: a mistyped key or a wrong type fails naming the key. ``COMMANDS`` is the one table of
these commands: their schema, runner, default config and the files each promises in OUT.

Exit codes (the contract every runner keeps by returning nothing and raising on failure):
0 success; 2 bad input (config, override, path, output directory), reported as one line on
stderr without a traceback; 1 an internal error (a bug: the traceback is printed).
Each sub-command imports its room lazily so that ``mismatch-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import traceback
from pathlib import Path
from typing import Optional

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

EPILOG = """exit codes: 0 success; 2 bad input (config key or value, --set override, path, output
directory): one line on stderr naming the field, no traceback; 1 internal error (a bug; the
traceback is printed)."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One experiment command.

    schema: "module:Class" of the frozen config dataclass CONFIG is validated against.
    run: "module:function" called as ``run(config, out_dir: str)`` (plus ``options=`` the parsed
        arguments when ``takes_options``); it writes its outputs into out_dir, and raises on
        failure. Its return value is not read: success is exit code 0.
    default: the packaged config used when CONFIG is omitted.
    outputs: files the command promises in OUT (the README lists them; a test checks them).
    check: "module:function" called as ``check(options)`` with the parsed arguments once the
        config is valid and before anything runs (a bad flag or environment fails first).
    """

    summary: str
    schema: str
    run: str
    default: str
    outputs: tuple[str, ...]
    takes_options: bool = False
    check: Optional[str] = None


COMMANDS: dict[str, Command] = {
    "sweep": Command(
        "train a model population, score one-step LL and CEM reward, write results.parquet + scatter",
        "mismatch_jax.sweep.config:SweepConfig", "mismatch_jax.experiments.sweep_command:run_sweep_command", "quickstart",
        ("results.parquet", "manifest.json", "ll_reward_scatter.png", "ll_reward_correlations.json",
         "fig3_ll_reward.png", "fig3_correlations.json", "report.html"),
        takes_options=True, check="mismatch_jax.experiments.sweep_command:check_sweep_options"),
    "datasets": Command(
        "build (or find in the cache) every dataset a sweep config needs; --out sets the cache",
        "mismatch_jax.sweep.config:SweepConfig", "mismatch_jax.experiments.sweep_command:build_datasets", "quickstart",
        (), takes_options=True),
    "estimate": Command(
        "a sweep's FLOPs, bytes, peak memory and roofline time per stage, from XLA's cost analysis "
        "of its compiled programs, before anything trains",
        "mismatch_jax.sweep.config:SweepConfig", "mismatch_jax.sweep.estimate:run_estimate", "quickstart",
        (), takes_options=True),
    "pets": Command(
        "PETS (CEM-MPC on a learned ensemble): per-trial rewards",
        "mismatch_jax.agents.config:PetsConfig", "mismatch_jax.experiments.pets_command:run_pets_command",
        "pets_cartpole_cpu", ("pets_rewards.json", "pets_rewards.png")),
    "attack": Command(
        "adversarial CMA-ES attack on a trained model's last layer (paper 000, Fig. 6-7)",
        "mismatch_jax.experiments.attack:AttackConfig", "mismatch_jax.experiments.attack:run_attack",
        "attack_quick", ("attack.json", "attack_convergence.png")),
    "reweight": Command(
        "distance re-weighting study (paper 000, Fig. 8)",
        "mismatch_jax.experiments.reweight:ReweightConfig", "mismatch_jax.experiments.reweight:run_reweight",
        "reweight_quick", ("reweight.json", "reweight_heatmap.png")),
    "tabular": Command(
        "tabular MnM / VMBPO / Q-learning figures (paper 001, Fig. 2-3); CONFIG: fig2a, fig2b, "
        "fig3a, fig3b or a TOML",
        "mismatch_jax.experiments.tabular_figures:TabularConfig",
        "mismatch_jax.experiments.tabular_figures:run_experiment", "tabular_fig2a",
        ("{experiment}.json", "{experiment}.png")),
    "mbpo": Command(
        "MBPO-family agents (MLE, VaGraM, IterVAML, value-weighted, MnM) x seeds in one program",
        "mismatch_jax.experiments.mbpo_compare:CompareConfig",
        "mismatch_jax.experiments.mbpo_compare:run_compare", "mbpo_pendulum_quick",
        ("mbpo_compare.json", "mbpo_compare.png"), takes_options=True,
        check="mismatch_jax.experiments.sweep_command:check_ray_options"),
    "vagram-fig2": Command(
        "VaGraM Fig. 2: VAML error and MSE of MSE, VAML and VaGraM models over value updates",
        "mismatch_jax.experiments.vagram_fig2_config:Fig2Config", "mismatch_jax.experiments.vagram_fig2:run_fig2",
        "vagram_fig2_quick", ("fig2.json", "fig2.png")),
    "mismatch-map": Command(
        "each model loss's own objective vs reward, next to LL vs reward",
        "mismatch_jax.experiments.mismatch_map_config:MismatchMapConfig",
        "mismatch_jax.experiments.mismatch_map:run_mismatch_map", "mismatch_map_quick",
        ("mismatch_map.json", "mismatch_map.png", "mismatch_map.parquet")),
}


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``mismatch_jax/configs`` (= ``sweeps/``), without .toml."""
    import importlib.resources

    root = importlib.resources.files("mismatch_jax").joinpath("configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def config_source(command: str, config: Optional[str]):
    """The TOML file CONFIG names: a path, else a packaged config ``CONFIG`` or
    ``<command>_CONFIG`` (``.toml`` optional); None → the command's default."""
    import importlib.resources

    from mismatch_jax.config_io import ConfigError

    root = importlib.resources.files("mismatch_jax").joinpath("configs")
    if config is None:
        return root.joinpath(COMMANDS[command].default + ".toml")
    if Path(config).is_file():
        return Path(config)
    stem = config[:-5] if config.endswith(".toml") else config
    prefix = command.replace("-", "_") + "_"
    for name in (stem, prefix + stem):
        if "/" not in name and root.joinpath(name + ".toml").is_file():
            return root.joinpath(name + ".toml")
    presets = [n[len(prefix):] for n in packaged_configs() if n.startswith(prefix)]
    hint = f"; {command} presets: {', '.join(presets)}" if presets else ""
    raise ConfigError(f"config {config!r} is neither a file nor a packaged config "
                      f"(mismatch-jax configs lists them){hint}")


def load_command_config(command: str, config: Optional[str], overrides=()):
    """The validated config of ``command`` from CONFIG (path or packaged name) and ``--set``
    overrides; raises ``ConfigError`` naming the key."""
    import tomllib

    from mismatch_jax.config_io import ConfigError, apply_overrides, from_dict

    source = config_source(command, config)
    try:
        data = tomllib.loads(source.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return from_dict(_resolve(COMMANDS[command].schema), apply_overrides(data, overrides))


def promised_outputs(command: str, config) -> list[str]:
    """The file names ``command`` promises in OUT for ``config``."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return [name.format(**fields) for name in COMMANDS[command].outputs]


# ------------------------------------------------------------------------------------------------
# Runners of the commands that live in this module.
# ------------------------------------------------------------------------------------------------


def _cmd_plot(args: argparse.Namespace) -> None:
    from mismatch_jax.experiments.plot_command import run_plot_command

    run_plot_command(args.results, args.out, args.epoch, args.bootstrap, args.rescore_on)


def _cmd_report(args: argparse.Namespace) -> None:
    from mismatch_jax.errors import InputError
    from mismatch_jax.experiments.report_command import write_run_report

    if args.bootstrap < 1:
        raise InputError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    outputs = {name: command.outputs for name, command in COMMANDS.items() if name != "sweep"}
    print(f"wrote {write_run_report(args.run_dir, outputs, args.out, args.bootstrap)}")


def _cmd_configs(args: argparse.Namespace) -> None:
    for name in packaged_configs():
        print(name)


# ------------------------------------------------------------------------------------------------
# Parsing and dispatch.
# ------------------------------------------------------------------------------------------------


DEVICE_COMMANDS = ("sweep", "mbpo", "attack", "reweight", "pets")  # commands that split their work over local devices


def _force_host_devices(count: int) -> None:
    """Splits the CPU into ``count`` XLA host devices; must run before jax initialises."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command (also used to render --help)."""
    parser = argparse.ArgumentParser(
        prog="mismatch-jax", epilog=EPILOG,
        description=("JAX experiment engine for objective mismatch in model-based RL. Experiment "
                     "commands take: COMMAND [CONFIG] [--out DIR] [--set KEY=VALUE ...]."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.summary, epilog=EPILOG,
                           description=f"{command.summary}. Writes into OUT: "
                                       f"{', '.join(command.outputs) or 'the dataset cache'}.")
        p.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                       help=f"TOML file or packaged config name (default: {command.default})")
        p.add_argument("--out", default=None,
                       help="output directory (default: the config's out_dir, else runs/COMMAND)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key by its dotted path, e.g. --set training.num_epochs=5 "
                            "(repeatable; the value is TOML, bare words are strings)")
        p.add_argument("--layout", default=None, metavar="vmap|map[:G]|auto",
                       help="how populations of models / seeds are laid out: one vmap, lax.map over "
                            "groups of G, or the backend's default (auto); every 'auto' layout of the "
                            "run resolves to this (README, mismatch_jax/population.py)")
        if name in DEVICE_COMMANDS:
            p.add_argument("--devices", type=int, default=0,
                           help="CPU only: split the host into this many XLA devices (shards the "
                                "population / the seeds / an expectation CEM call's candidates over them)")
        if name in ("sweep", "mbpo"):
            from mismatch_jax.experiments.sweep_command import add_ray_flags, add_sweep_flags

            add_sweep_flags(p) if name == "sweep" else add_ray_flags(p, "seed block")
        if name == "estimate":
            p.add_argument("--device", default="cpu", metavar="NAME",
                           help="the device the roofline time is for: cpu (measured now), h100, a100, v5e")
            p.add_argument("--devices", type=int, default=1, metavar="N",
                           help="devices the sweep's chunks are divided over (default: 1)")
            p.add_argument("--json", default=None, metavar="FILE", help="also write the estimate as JSON")

    plot = sub.add_parser("plot", help="re-create the scatter/curve figures from a results table",
                          epilog=EPILOG,
                          description="Draw the LL-vs-reward scatter (and per-epoch curves) from results.parquet alone.")
    plot.add_argument("results", help="results.parquet or the sweep's output directory")
    plot.add_argument("--out", default=None, help="where to write figures (default: beside the table)")
    plot.add_argument("--epoch", default="last", help="epoch to correlate: 'last' (default) or a number")
    plot.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    plot.add_argument("--rescore-on", default=None, metavar="RESULTS",
                      help="results of the same sweep re-run with --set evaluation.episode_salt=1: score the "
                           "reward-best and NLL-best epochs picked on RESULTS there (fig4_rescored.json)")
    report = sub.add_parser(
        "report", help="one self-contained HTML page of a run (interactive Fig. 3: hover / click a model)",
        epilog=EPILOG, description="Write one HTML file (scripts and data inlined, opens offline) for a run "
        "directory: a sweep's Fig. 3 panels as interactive scatters, its correlation tables, competence check, "
        "divergence counts and figures; another command's run: its figures and JSON summaries.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run's output directory (e.g. runs/quickstart)")
    report.add_argument("--out", default=None, metavar="FILE", help="the HTML file (default: RUN_DIR/report.html)")
    report.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for correlations computed here (when the run has no "
                             "fig3_correlations.json / ll_reward_correlations.json)")
    sub.add_parser("configs", help="list the packaged configs (usable by name as CONFIG)", epilog=EPILOG)
    return parser


def output_dir(args: argparse.Namespace, config) -> str:
    """Where an experiment command writes: --out, else the config's out_dir, else runs/COMMAND."""
    return args.out or getattr(config, "out_dir", None) or f"runs/{args.command}"


def _host_split_hint(args: argparse.Namespace) -> str | None:
    """A one-line hint when a population command runs on one CPU device of a multi-core host
    (``--devices`` not given): splitting the host is not the default but is what keeps every
    core busy with small GEMMs (RESULTS.md, session 9)."""
    import os

    if args.command not in DEVICE_COMMANDS or getattr(args, "devices", 0) or getattr(args, "ray", None) is not None:
        return None  # (with --ray the chunks run on the cluster's devices, not this host's)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    import jax

    if cores < 2 or jax.default_backend() != "cpu" or len(jax.local_devices()) > 1:
        return None
    what = "each planning call's candidates" if args.command == "pets" else "the population"
    gain = "2x" if args.command == "pets" else "1.5-2x"
    return (f"note: {cores} CPU cores, one XLA device; `--devices {cores}` runs {what} as one "
            f"program per core ({gain} faster on 2 cores, benchmarks/RESULTS.md)")


def check_numeric_flags(args: argparse.Namespace) -> None:
    """Refuses a numeric flag that is not finite or out of its range, naming the flag."""
    from mismatch_jax.errors import InputError

    if getattr(args, "devices", 0) < 0:
        raise InputError(f"--devices must be >= 0 (0 = as many as the backend has), got {args.devices}")
    if getattr(args, "bootstrap", 1) < 1:
        raise InputError(f"--bootstrap must be >= 1 resample, got {args.bootstrap}")


def _run_command(args: argparse.Namespace) -> None:
    command = COMMANDS[args.command]
    if args.layout is not None:
        from mismatch_jax.population import parse_layout, use_layout

        use_layout(parse_layout(args.layout))
    config = load_command_config(args.command, args.config, args.overrides)
    out = output_dir(args, config)
    if command.check:
        _resolve(command.check)(args)
    hint = _host_split_hint(args)  # after the config is checked: bad input fails before jax starts
    if hint:
        print(hint, file=sys.stderr)
    run = _resolve(command.run)
    if command.takes_options:
        run(config, out, options=args)
    else:
        run(config, out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DEVICE_COMMANDS and "--devices" in argv:
        # XLA reads the device count when jax initialises: set it before anything imports jax.
        index = argv.index("--devices") + 1
        if index < len(argv) and argv[index].isdigit() and int(argv[index]) > 0:
            _force_host_devices(int(argv[index]))
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 (argparse), --help exits 0
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from mismatch_jax.errors import InputError

    try:
        check_numeric_flags(args)
        if args.command == "plot":
            _cmd_plot(args)
        elif args.command == "report":
            _cmd_report(args)
        elif args.command == "configs":
            _cmd_configs(args)
        else:
            _run_command(args)
    except (InputError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        message = str(exc) if isinstance(exc, InputError) else f"{exc.strerror}: {exc.filename}"
        print(f"mismatch-jax {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mismatch-jax {args.command}: interrupted; files already written are kept",
              file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 — everything else is a bug: show it, exit 1
        traceback.print_exc()
        print(f"mismatch-jax {args.command}: internal error (exit 1); please report the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
