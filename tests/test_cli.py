"""Tests of the mismatch-jax command line: every sub-command is listed and resolves to its entry
point, and bad input fails with a clear message and exit code 2 rather than a traceback."""

from __future__ import annotations

import importlib

import pytest

from mismatch_jax import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main([]) == 2
    text = capsys.readouterr().out
    for name in ("sweep", "plot", "datasets", "pets", *cli.PASSTHROUGH):
        assert name in text


@pytest.mark.parametrize("name", sorted(cli.PASSTHROUGH))
def test_passthrough_entry_points_exist_and_print_help(name, capsys):
    module, function, _ = cli.PASSTHROUGH[name]
    assert callable(getattr(importlib.import_module(module), function))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_misspelled_sweep_key_is_rejected_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('name = "x"\nenv = "cartpole_swingup"\n[population]\nreplicatse = 3\n')
    assert cli.main(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "replicatse" in err
    assert not (tmp_path / "out").exists()


def test_plot_of_a_missing_table_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plot", str(tmp_path / "nothing")])
    assert "mismatch-jax sweep" in str(exit_info.value.code)
