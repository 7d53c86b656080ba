"""The ``plot`` command behind the CLI: re-draws a sweep's figures (``analysis/``) from its
results table alone, optionally re-scoring the picked epochs on a second run's table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mismatch_jax.analysis.epochs import fig4_best_epochs, fig4_rescored, fig5_dataset_nll
from mismatch_jax.analysis.fig3 import fig3_panels, is_pets_population
from mismatch_jax.analysis.plots import ll_reward_scatter, per_epoch_curves
from mismatch_jax.errors import InputError
from mismatch_jax.experiments.report_command import read_results
from mismatch_jax.experiments.sweep_command import print_env_params_summary, print_summary
from mismatch_jax.sweep.results import read_manifest


def _read(results: str) -> tuple[Path, pd.DataFrame]:
    path = Path(results)
    if path.is_dir():
        path = path / "results.parquet"
    if not path.is_file():
        raise InputError(f"results table {path} does not exist; run `mismatch-jax sweep` first")
    return path, read_results(path)  # columns and one row per (model, epoch): a damaged merge is refused


def run_plot_command(results: str, out: str | None = None, epoch: str = "last", bootstrap: int = 1000,
                     rescore_on: str | None = None) -> None:
    """Draws the LL-vs-reward scatter, the Fig. 3 panels and (several epochs) the per-epoch
    curves and Figs. 4-5 of the table ``results`` (a results.parquet or its directory) into
    ``out`` (default: beside the table); ``rescore_on``: a re-run's table to score the picked
    epochs on (``fig4_rescored``). ``epoch``: "last" or an epoch number."""
    if epoch != "last" and not epoch.isdigit():
        raise InputError(f"--epoch must be 'last' or an epoch number, got {epoch!r}")
    path, table = _read(results)
    score = _read(rescore_on)[1] if rescore_on else None  # refused before any drawing
    if score is not None and table["epoch"].nunique() < 2:
        raise InputError("--rescore-on needs a table with several evaluated epochs per model")
    out = out or str(path.parent)
    epoch = epoch if epoch == "last" else int(epoch)
    content = ll_reward_scatter(table, out, epoch=epoch, num_bootstrap=bootstrap)
    notes = (read_manifest(path.parent) or {}).get("dataset_notes")
    fig3 = fig3_panels(table, out, epoch=epoch, num_bootstrap=bootstrap, dataset_notes=notes)
    if table["epoch"].nunique() > 1 and not is_pets_population(table):
        per_epoch_curves(table, out)
        fig4_best_epochs(table, out)
        fig5_dataset_nll(table, out)
    if score is not None:
        rescored = fig4_rescored(table, score, out)
        for s in rescored["summary"]:
            print(f"fig4 re-scored, {s['model_type']} on {s['train_dataset']} (n={s['n']}): reward lost by NLL "
                  f"stopping {s['reward_lost_on_picking_episodes']:.1f} on the picking episodes, "
                  f"{s['reward_lost_on_fresh_episodes']:.1f} [{s['fresh_ci'][0]:.1f}, {s['fresh_ci'][1]:.1f}] "
                  "on fresh ones")
    print_summary(out, table, content, fig3)
    print_env_params_summary(out, table, epoch=epoch, num_bootstrap=bootstrap)
