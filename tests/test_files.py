"""Atomic writes and strict JSON (mismatch_jax.files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mismatch_jax import files

pytestmark = pytest.mark.unit  # every test here is in the fast tier


def _strict_loads(text: str):
    def refuse(token):
        raise ValueError(f"invalid JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_is_strict_json_without_nan(tmp_path):
    obj = {"a": float("nan"), "b": [1.0, float("inf"), -float("inf")], "c": (1, 2),
           "d": np.float32(0.5), "e": np.arange(3), "f": {"g": None, "h": True}}
    path = files.write_json(tmp_path / "x.json", obj)
    data = _strict_loads(path.read_text())
    assert data == {"a": None, "b": [1.0, None, None], "c": [1, 2], "d": 0.5, "e": [0, 1, 2],
                    "f": {"g": None, "h": True}}
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_npz_round_trips_arrays_and_text(tmp_path):
    path = files.write_npz(tmp_path / "d.npz", {"x": np.arange(4.0)}, spec='{"k": 1}')
    with np.load(path) as f:
        np.testing.assert_array_equal(f["x"], np.arange(4.0))
        assert json.loads(str(f["spec"])) == {"k": 1}


def test_stale_temporaries_are_removed_and_real_files_kept(tmp_path):
    (tmp_path / "chunks").mkdir()
    stale = [tmp_path / ".manifest.json.abc.tmp", tmp_path / "chunks" / ".chunk_0.parquet.x.tmp"]
    for path in stale:
        path.write_text("partial")
    (tmp_path / "manifest.json").write_text("{}")
    assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert (tmp_path / "manifest.json").is_file() and not any(p.exists() for p in stale)


def test_unwritable_target_is_an_output_dir_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(files.OutputDirError, match="cannot"):
        files.atomic_write_text(blocker / "inner.json", "{}")
    with pytest.raises(files.OutputDirError, match="cannot create output directory"):
        files.check_writable(blocker / "out")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask, mode, tmp_path):
    import os

    previous = os.umask(umask)
    try:
        assert files.current_umask() == umask
        files.write_json(tmp_path / "r.json", {"a": 1})
        files.write_npz(tmp_path / "d.npz", {"x": np.arange(2)})
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(mode)}


def test_a_directory_lock_admits_one_holder_and_leaves_no_file(tmp_path):
    with files.directory_lock(tmp_path):
        with pytest.raises(files.OutputDirError, match=r"is in use by a sweep \(pid \d+ on .*choose another --out"):
            with files.directory_lock(tmp_path):
                pass
        assert (tmp_path / ".sweep.lock").is_file()
    assert not list(tmp_path.iterdir())
    with files.directory_lock(tmp_path):  # free again
        pass
