"""Writing result files so that a crash never leaves half a file, and JSON that is valid JSON.

Every file the package writes (datasets, chunks, manifests, models, reports) goes through
``atomic_write_bytes``: the bytes are written to a temporary file in the target's directory,
flushed to disk, then ``os.replace``d over the target, so a reader (or a resumed run) sees either
the old file or the whole new one. Temporary names are ``.<name>.<random>.tmp``;
``remove_stale_temporaries`` clears the ones a killed writer left behind. A written file gets the
mode any other tool's would (0666 less the umask: 0644 under umask 022), not ``mkstemp``'s 0600,
so results on a shared filesystem are readable by the user's group.

``directory_lock`` makes one process the owner of an output directory for as long as it runs (an
advisory ``flock``, released by the kernel when the process dies, so a kill leaves no stale lock).

``write_json`` writes strict JSON: NaN and ±inf (which ``json.dumps`` would emit as the invalid
tokens ``NaN`` / ``Infinity``) become ``null``, tuples become lists and NumPy scalars / arrays
become numbers / lists.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mismatch_jax.errors import InputError

TEMP_SUFFIX = ".tmp"


class OutputDirError(InputError, RuntimeError):
    """The output directory cannot be written (read-only, full, or holds another config)."""


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, since setting and restoring it to
    read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the whole new one; the
    file's mode is 0666 less the umask."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to {path.parent}: {exc.strerror}; choose a writable directory with --out"
        ) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OutputDirError(
            f"writing {path} failed: {exc.strerror}; results written before this point are kept"
            " — free space or choose another --out, then re-run with --resume"
        ) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of ``atomic_write_bytes`` (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN or inf),
    tuples as lists and NumPy scalars / arrays as Python numbers / lists."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy / JAX scalars and arrays
        return json_safe(obj.tolist())
    return obj


def dumps_json(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of ``obj`` (see ``json_safe``); raises on anything else not serialisable."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Atomically writes ``obj`` as strict JSON to ``path``; returns the path."""
    atomic_write_text(path, dumps_json(obj, indent, sort_keys))
    return Path(path)


def write_npz(path: str | os.PathLike, arrays: dict, **text: str) -> Path:
    """Atomically writes NumPy ``arrays`` (name → array) plus ``text`` entries (e.g. a JSON
    header or spec, stored as 0-d string arrays) as one ``.npz`` file; returns the path."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **text, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def check_writable(out_dir: str | os.PathLike) -> None:
    """Fails early, before any compile, when ``out_dir`` cannot take files."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    # Per process and not a temporary's name: another process may be checking, or clearing its
    # stale temporaries in, the same directory.
    probe = out_dir / f".write_test.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputDirError(f"cannot write to {out_dir}: {exc.strerror}; choose a writable directory "
                             "with --out") from None
    probe.unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Deletes the ``.*.tmp`` files an interrupted ``atomic_write_bytes`` left in ``directory``
    and its subdirectories (only those not modified for ``older_than_s`` seconds, so a live
    writer's file survives); returns them."""
    import time

    now = time.time()
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.rglob(f".*{TEMP_SUFFIX}"):
        if path.is_file() and now - path.stat().st_mtime >= older_than_s:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


class directory_lock:
    """Context manager: holds ``directory/name`` locked (``flock``, exclusive) while the block
    runs, or raises ``OutputDirError`` at once when another live process holds it (naming that
    process); removes the lock file when the block ends. A killed holder's lock is released by the
    kernel, so the next run takes it over; the file's inode is checked after locking so that a
    file removed by a finishing holder is never locked by two processes."""

    def __init__(self, directory: str | os.PathLike, name: str = ".sweep.lock", purpose: str = "a sweep"):
        self.path, self.purpose, self._fd = Path(directory) / name, purpose, None

    def __enter__(self) -> "directory_lock":
        import fcntl
        import socket

        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                raise OutputDirError(f"{self.path.parent} is in use by {self.purpose} ({holder}); wait for it to "
                                     "finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
                self._fd = fd
                return self
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        raise OutputDirError(f"cannot lock {self.path}; choose another --out")

    def __exit__(self, *exc_info) -> None:
        try:
            self.path.unlink(missing_ok=True)  # still held: no other process can lock this inode meanwhile
        finally:
            os.close(self._fd)
            self._fd = None
