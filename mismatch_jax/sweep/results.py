"""Results storage of a sweep: atomic per-chunk Parquet files, resume bookkeeping, the merged
``results.parquet`` table and the manifest.

Layout of an output directory::

    out/
      config.resolved.toml   the validated config, all defaults filled in
      manifest.json          config hash, versions, devices, chunk list, timings
      chunks/chunk_<first>_<last>.parquet   one file per finished chunk (atomic rename)
      results.parquet        all chunks merged, sorted by (model_id, epoch)

A chunk file exists only once its chunk is complete (written to a temporary name in the same
directory, then ``os.replace``d), so a kill at any moment leaves either the whole chunk or none.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd

from mismatch_jax.files import OutputDirError, atomic_write_bytes, check_writable, write_json

__all__ = ["OutputDirError", "check_writable", "config_hash", "chunk_path", "finished_chunks",
           "finished_models", "write_chunk", "merge_chunks", "read_manifest", "write_manifest"]

_CHUNK_RE = re.compile(r"chunk_(\d{8})_(\d{8})\.parquet$")


def config_hash(resolved_text: str) -> str:
    """Short stable hash of a resolved config text."""
    return hashlib.sha256(resolved_text.encode()).hexdigest()[:16]


def chunk_path(out_dir: Path, first: int, last: int) -> Path:
    """Path of the chunk holding models first..last (inclusive)."""
    return Path(out_dir) / "chunks" / f"chunk_{first:08d}_{last:08d}.parquet"


def finished_chunks(out_dir: Path) -> list[tuple[int, int]]:
    """(first, last) model ranges of the chunks already written, sorted."""
    chunk_dir = Path(out_dir) / "chunks"
    if not chunk_dir.is_dir():
        return []
    ranges = []
    for entry in chunk_dir.iterdir():
        match = _CHUNK_RE.match(entry.name)
        if match:
            ranges.append((int(match.group(1)), int(match.group(2))))
    return sorted(ranges)


def finished_models(out_dir: Path) -> set[int]:
    """Global model indices already covered by finished chunks."""
    done: set[int] = set()
    for first, last in finished_chunks(out_dir):
        done.update(range(first, last + 1))
    return done


def write_chunk(out_dir: Path, first: int, last: int, frame: pd.DataFrame) -> Path:
    """Atomically writes one finished chunk's rows."""
    path = chunk_path(out_dir, first, last)
    atomic_write_bytes(path, frame.to_parquet(index=False))
    return path


def merge_chunks(out_dir: Path) -> pd.DataFrame:
    """Concatenates every finished chunk into ``results.parquet`` (atomic) and returns it."""
    out_dir = Path(out_dir)
    frames = [pd.read_parquet(chunk_path(out_dir, a, b)) for a, b in finished_chunks(out_dir)]
    if not frames:
        raise OutputDirError(f"{out_dir} holds no finished chunks to merge")
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["model_id", "epoch"], kind="stable").reset_index(drop=True)
    atomic_write_bytes(out_dir / "results.parquet", table.to_parquet(index=False))
    return table


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of ``out_dir`` or None."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_manifest(out_dir: Path, manifest: dict) -> None:
    """Atomically (re)writes manifest.json."""
    write_json(Path(out_dir) / "manifest.json", manifest, sort_keys=True)
