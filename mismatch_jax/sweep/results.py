"""Results storage of a sweep: verified per-chunk Parquet files, the merged ``results.parquet``
table and the manifest.

Layout of an output directory::

    out/
      config.resolved.toml   the validated config, all defaults filled in (its hash names the run)
      manifest.json          config hash, versions, executor, every chunk with its checksum and timing
      chunks/chunk_<first>_<last>.parquet   one file per finished chunk (atomic rename)
      .sweep.lock            held by the one driver writing the directory (removed when it ends)
      quarantine/            chunks that failed verification, kept for inspection
      results.parquet        all chunks merged, sorted by (model_id, epoch)

A chunk file exists only once its chunk is complete (written to a temporary name, then
``os.replace``d), so a kill leaves either the whole chunk or none. Each chunk carries in its Parquet
metadata the config hash, its model range and a checksum of its rows; ``verify_chunk`` checks all
three (and that every model has one row per evaluated epoch), so a truncated, random or misnamed
file, or one from another config, is found before it is used — and again by the merge, which
reads every chunk it concatenates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from mismatch_jax.files import OutputDirError, atomic_write_bytes, check_writable, write_json

__all__ = ["OutputDirError", "check_writable", "config_hash", "chunk_path", "finished_chunks",
           "verify_chunk", "quarantine", "write_chunk", "merge_chunks", "check_table_rows",
           "read_manifest", "write_manifest"]

_CHUNK_RE = re.compile(r"chunk_(\d{8})_(\d{8})\.parquet$")
_META_KEY = b"mismatch_jax"


def config_hash(resolved_text: str) -> str:
    """Short stable hash of a resolved config text."""
    return hashlib.sha256(resolved_text.encode()).hexdigest()[:16]


def chunk_path(out_dir: Path, first: int, last: int) -> Path:
    """Path of the chunk holding models first..last (inclusive)."""
    return Path(out_dir) / "chunks" / f"chunk_{first:08d}_{last:08d}.parquet"


def finished_chunks(out_dir: Path) -> list[tuple[int, int]]:
    """(first, last) model ranges of the chunk files present (not yet verified), sorted."""
    chunk_dir = Path(out_dir) / "chunks"
    if not chunk_dir.is_dir():
        return []
    ranges = []
    for entry in chunk_dir.iterdir():
        match = _CHUNK_RE.match(entry.name)
        if match:
            ranges.append((int(match.group(1)), int(match.group(2))))
    return sorted(ranges)


def _rows_checksum(frame: pd.DataFrame) -> str:
    """A checksum of a table's values (row order included; independent of the file encoding:
    list cells such as the per-trial rewards hash by their values, lists or arrays alike)."""
    import numpy as np

    canonical = frame.copy()
    for column in canonical.columns:
        if canonical[column].dtype == object:
            canonical[column] = [json.dumps(np.asarray(v).tolist()) if not isinstance(v, str) else v
                                 for v in canonical[column]]
    hashes = pd.util.hash_pandas_object(canonical, index=False)
    return hashlib.sha256(hashes.to_numpy().tobytes()).hexdigest()[:16]


def write_chunk(out_dir: Path, first: int, last: int, frame: pd.DataFrame, digest: str) -> dict:
    """Atomically writes one finished chunk's rows with its config hash, model range and rows
    checksum in the Parquet metadata; returns the manifest entry (with the file's sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"config_hash": digest, "first": first, "last": last, "rows": len(frame),
            "rows_checksum": _rows_checksum(frame)}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    path = chunk_path(out_dir, first, last)
    atomic_write_bytes(path, data)
    return {**meta, "file": path.name, "sha256": hashlib.sha256(data).hexdigest()[:16]}


def verify_chunk(path: Path, first: int, last: int, digest: str, rows_per_model: int) -> Optional[str]:
    """None if the chunk at ``path`` is whole and belongs here, else the reason: unreadable, no
    metadata, another config, another model range (a misnamed file), rows that do not match their
    checksum, or models without exactly ``rows_per_model`` rows."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[_META_KEY])
        frame = table.to_pandas()
    except KeyError:
        return "no mismatch_jax metadata (not written by this sweep)"
    except Exception as exc:  # pyarrow raises several types for a damaged file
        return f"unreadable ({type(exc).__name__})"
    if meta.get("config_hash") != digest:
        return f"written by another config (hash {meta.get('config_hash')} vs {digest})"
    if (meta.get("first"), meta.get("last")) != (first, last):
        return f"holds models {meta.get('first')}..{meta.get('last')}, not {first}..{last} (misnamed)"
    if meta.get("rows_checksum") != _rows_checksum(frame):
        return "rows do not match their checksum"
    counts = frame["model_id"].value_counts()
    if sorted(counts.index) != list(range(first, last + 1)) or (counts != rows_per_model).any():
        return f"model rows do not cover {first}..{last} with {rows_per_model} row(s) each"
    return None


def quarantine(out_dir: Path, path: Path) -> Path:
    """Moves a rejected file into ``out/quarantine/`` (kept for inspection); returns its new path."""
    target_dir = Path(out_dir) / "quarantine"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{path.name}.{int(time.time() * 1000)}"
    os.replace(path, target)
    return target


def check_table_rows(table: pd.DataFrame, num_models: Optional[int] = None,
                     rows_per_model: Optional[int] = None) -> None:
    """Raises ``OutputDirError`` unless the table has exactly one row per (model_id, epoch) and,
    when given, models 0..num_models-1 with ``rows_per_model`` rows each."""
    duplicated = table.duplicated(["model_id", "epoch"])
    if duplicated.any():
        ids = sorted(set(table.loc[duplicated, "model_id"].astype(int)))[:5]
        raise OutputDirError(f"results hold {int(duplicated.sum())} duplicate (model, epoch) rows "
                             f"(models {ids}); re-run the sweep with --resume to rebuild them")
    if num_models is not None:
        counts = table["model_id"].value_counts()
        missing = sorted(set(range(num_models)) - set(counts.index.astype(int)))
        if missing or (rows_per_model is not None and (counts != rows_per_model).any()):
            raise OutputDirError(f"results miss models {missing[:5]} (or some of their rows); "
                                 "re-run the sweep with --resume")


def merge_chunks(out_dir: Path, ranges: list[tuple[int, int]], num_models: int,
                 rows_per_model: int, digest: str) -> pd.DataFrame:
    """Concatenates the chunks ``ranges`` into ``results.parquet`` (atomic) after verifying each
    again as it is read (``verify_chunk`` against the config hash ``digest``) and checking one row
    per (model, epoch) for every model; returns the table."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if not ranges:
        raise OutputDirError(f"{out_dir} holds no finished chunks to merge")
    frames = []
    for first, last in ranges:
        path = chunk_path(out_dir, first, last)
        problem = (verify_chunk(path, first, last, digest, rows_per_model) if path.is_file()
                   else "missing")
        if problem is not None:
            raise OutputDirError(f"chunk {first}..{last} changed after it was checked ({problem}); re-run the "
                                 "sweep with --resume to recompute it")
        frames.append(pq.read_table(path).to_pandas())
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
    check_table_rows(table, num_models, rows_per_model)
    atomic_write_bytes(out_dir / "results.parquet", table.to_parquet(index=False))
    return table


def read_manifest(out_dir: Path, name: str = "manifest.json") -> dict | None:
    """A manifest of ``out_dir`` (the merged view by default) or None; an unreadable one is
    treated as missing (it is rewritten from the verified chunks)."""
    path = Path(out_dir) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_manifest(out_dir: Path, manifest: dict, name: str = "manifest.json") -> None:
    """Atomically (re)writes a manifest."""
    write_json(Path(out_dir) / name, manifest, sort_keys=True)
