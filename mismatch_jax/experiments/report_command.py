"""The ``report`` command behind the CLI: finds what kind of run a directory holds and writes its
self-contained HTML page (``analysis.report``). A sweep's table is ``results.parquet``, or — for a
run that has not merged yet — its finished ``chunks/*.parquet``, reported as partial."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mismatch_jax.errors import InputError

SWEEP_MARKERS = ("results.parquet", "manifest.json", "config.resolved.toml", "chunks")


def run_kind(run_dir: Path, outputs: dict[str, tuple[str, ...]]) -> str:
    """"sweep" for a sweep's directory, else the first command of ``outputs`` (command → the
    files it promises, ``cli.COMMANDS``) one of whose files is there; raises ``InputError``
    when the directory is no run."""
    if any((run_dir / name).exists() for name in SWEEP_MARKERS):
        return "sweep"
    for templated in (False, True):  # a named file first: "{experiment}.json" matches any JSON
        for command, names in outputs.items():
            patterns = [n.replace("{experiment}", "*") for n in names if ("{" in n) == templated]
            if any(any(run_dir.glob(pattern)) for pattern in patterns):
                return command
    known = sorted({n for names in outputs.values() for n in names if "{" not in n})
    raise InputError(f"{run_dir} is not a run directory: it holds no results.parquet (a sweep) nor any file "
                     f"another command writes ({', '.join(known[:6])}, ...); pass a run's --out directory")


def read_results(path: Path) -> pd.DataFrame:
    """A results table from Parquet, checked (columns, one row per (model, epoch))."""
    from mismatch_jax.analysis.plots import check_table
    from mismatch_jax.sweep.results import check_table_rows

    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        raise InputError(f"{path} is not a readable Parquet table ({type(exc).__name__}); "
                         "re-create it with `mismatch-jax sweep --resume`") from None
    check_table(table)
    check_table_rows(table)
    return table


def sweep_table(run_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """(table, None) from ``results.parquet``; else (the finished chunks' rows, what is missing)
    for a sweep that has not merged; raises ``InputError`` when not even one chunk is there."""
    from mismatch_jax.sweep.results import chunk_path, finished_chunks, read_manifest

    if (run_dir / "results.parquet").is_file():
        return read_results(run_dir / "results.parquet"), None
    ranges = finished_chunks(run_dir)
    if not ranges:
        raise InputError(f"{run_dir} is a sweep without results.parquet and without finished chunks "
                         "(chunks/*.parquet): nothing to report yet; finish it with `mismatch-jax sweep CONFIG "
                         f"--out {run_dir} --resume`")
    frames, unreadable = [], 0
    for first, last in ranges:
        try:
            frames.append(pd.read_parquet(chunk_path(run_dir, first, last)))
        except Exception:  # a damaged chunk: report the others, count it
            unreadable += 1
    if not frames:
        raise InputError(f"{run_dir}: no results.parquet and none of its {len(ranges)} chunk file(s) is readable; "
                         "re-run the sweep with --resume")
    table = pd.concat(frames, ignore_index=True).sort_values(["model_id", "epoch"], kind="stable")
    table = table.drop_duplicates(["model_id", "epoch"]).reset_index(drop=True)
    from mismatch_jax.analysis.plots import check_table

    check_table(table)
    total = (read_manifest(run_dir) or {}).get("num_models", "?")
    partial = (f"results.parquet is missing; {table['model_id'].nunique()} of {total} models from "
               f"{len(frames)} finished chunk file(s) in chunks/")
    if unreadable:
        partial += f" ({unreadable} unreadable chunk file(s) left out)"
    return table, partial


def write_run_report(run_dir: str | Path, outputs: dict[str, tuple[str, ...]], out: str | None = None,
                     num_bootstrap: int = 1000) -> Path:
    """Writes ``run_dir``'s HTML report (``out``, default ``RUN_DIR/report.html``); returns its
    path. ``outputs``: command → promised files, to tell the kind of run."""
    from mismatch_jax.analysis.report import run_page, sweep_report

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist or is not a directory; pass a run's --out "
                         "directory, e.g. runs/quickstart")
    if out is not None and Path(out).is_dir():
        raise InputError(f"--out {out} is a directory; give the HTML file's path, e.g. {Path(out) / 'report.html'}")
    kind = run_kind(run_dir, outputs)
    if kind != "sweep":
        return run_page(run_dir, kind, out)
    table, partial = sweep_table(run_dir)
    return sweep_report(run_dir, table, out, partial=partial, num_bootstrap=num_bootstrap)
