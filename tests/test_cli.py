"""Tests of the mismatch-jax command line: every command is listed and resolves to its schema and
runner, CONFIG and --set are validated by the schema, and bad input exits 2 with one line naming
the field (no traceback), while an internal error exits 1."""

from __future__ import annotations

import dataclasses

import pytest

from mismatch_jax import cli
from mismatch_jax.config_io import ConfigError, apply_overrides, from_dict, parse_override_value

pytestmark = pytest.mark.unit  # every test here is in the fast tier


def test_help_lists_every_command_and_the_exit_codes(capsys):
    assert cli.main([]) == 2
    text = capsys.readouterr().out
    for name in ("plot", "configs", *cli.COMMANDS):
        assert name in text
    for code in ("0 success", "2 bad input", "1 internal error"):
        assert code in " ".join(text.split())


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_resolves_and_loads_its_default_config(name, capsys):
    command = cli.COMMANDS[name]
    assert callable(cli._resolve(command.run))
    config = cli.load_command_config(name, None)
    assert dataclasses.is_dataclass(config) and isinstance(config, cli._resolve(command.schema))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "--set" in capsys.readouterr().out


def test_every_packaged_config_loads_under_a_command_schema():
    from mismatch_jax.agents.sac_config import SACConfig

    schemas = {cli._resolve(c.schema) for c in cli.COMMANDS.values()} | {SACConfig}
    for name in cli.packaged_configs():
        source = cli.config_source("sweep", name)
        accepted = []
        for schema in schemas:
            try:
                from mismatch_jax.config_io import load_toml

                load_toml(schema, source)
                accepted.append(schema.__name__)
            except ConfigError:
                pass
        assert accepted, f"packaged config {name} loads under no command's schema"


def test_config_names_resolve_to_packaged_files_with_or_without_the_command_prefix():
    assert cli.config_source("tabular", "fig3a").name == "tabular_fig3a.toml"
    assert cli.config_source("tabular", "tabular_fig3a.toml").name == "tabular_fig3a.toml"
    assert cli.config_source("attack", None).name == "attack_quick.toml"
    with pytest.raises(ConfigError, match="tabular presets: fig2a, fig2b, fig3a, fig3b"):
        cli.config_source("tabular", "fig9")


def test_overrides_set_nested_keys_with_toml_values():
    data = apply_overrides({"training": {"num_epochs": 5}},
                           ["training.num_epochs=7", "training.learning_rate=[1e-4, 1e-3]",
                            "env=pendulum", "datasets.pets.num_trials=2", 'name="a b"'])
    assert data == {"training": {"num_epochs": 7, "learning_rate": [1e-4, 1e-3]}, "env": "pendulum",
                    "datasets": {"pets": {"num_trials": 2}}, "name": "a b"}
    assert parse_override_value("true") is True and parse_override_value("3") == 3
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["training.num_epochs"])
    with pytest.raises(ConfigError, match="env is a value, not a table"):
        apply_overrides({"env": "x"}, ["env.size=3"])


def test_a_mistyped_override_fails_naming_the_key():
    from mismatch_jax.sweep.config import SweepConfig

    with pytest.raises(ConfigError, match="population.replicatse"):
        cli.load_command_config("sweep", None, ["population.replicatse=3"])
    with pytest.raises(ConfigError, match="training.num_epochs: expected an integer"):
        cli.load_command_config("sweep", None, ["training.num_epochs=many"])
    config = cli.load_command_config("sweep", "quickstart", ["population.replicates=2"])
    assert config == from_dict(SweepConfig, {**cli_default_dict("sweep"), "population": {
        **cli_default_dict("sweep")["population"], "replicates": 2}})


def cli_default_dict(name: str) -> dict:
    import tomllib

    return tomllib.loads(cli.config_source(name, None).read_text())


@pytest.mark.parametrize("argv, fragment", [
    (["sweep", "--set", "population.replicatse=3"], "population.replicatse"),
    (["attack", "--set", "cmaes.generations=0"], "generations"),
    (["tabular", "fig9"], "fig9"),
    (["mbpo", "no_such_config.toml"], "no_such_config"),
    (["pets", "--set", "planner.horizon"], "KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_line_and_no_traceback(argv, fragment, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_misspelled_key_in_a_file_is_rejected_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('name = "x"\nenv = "cartpole_swingup"\n[population]\nreplicatse = 3\n')
    assert cli.main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "replicatse" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plot_of_a_missing_or_damaged_table_says_what_to_do(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path / "nothing")]) == 2
    assert "mismatch-jax sweep" in capsys.readouterr().err
    (tmp_path / "results.parquet").write_bytes(b"not parquet at all")
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a readable Parquet table" in err and "Traceback" not in err


def test_an_internal_error_exits_1_with_its_traceback(monkeypatch, tmp_path, capsys):
    def broken(config, out):
        raise RuntimeError("a bug")

    original = cli._resolve
    monkeypatch.setattr(cli, "_resolve", lambda target: broken if target.endswith(":run_experiment")
                        else original(target))
    assert cli.main(["tabular", "fig3a", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error" in err



def test_a_population_command_on_one_cpu_device_of_a_multicore_host_hints_at_devices(monkeypatch):
    import argparse
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    hint = cli._host_split_hint(argparse.Namespace(command="sweep", devices=0))
    assert hint is not None and "--devices 3" in hint  # the test process runs on one CPU device
    assert cli._host_split_hint(argparse.Namespace(command="sweep", devices=3)) is None  # already split
    assert "--devices 3" in cli._host_split_hint(argparse.Namespace(command="pets", devices=0))  # candidates
    assert cli._host_split_hint(argparse.Namespace(command="tabular")) is None  # nothing to split
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert cli._host_split_hint(argparse.Namespace(command="mbpo", devices=0)) is None  # one core
