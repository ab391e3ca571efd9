"""Files the daemon writes: atomically (temp file in the same folder, fsync, keep the mode,
rename, fsync the folder) and only when the bytes change. nginx's files and state.json alike."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class WriteOutcome:
    path: str
    changed: bool
    previous: bytes | None  # bytes before the write; None when the file did not exist


def write_atomic(path: str, data: bytes, default_mode: int = 0o644) -> WriteOutcome:
    """Write ``data`` to ``path`` atomically, only if different.

    Same bytes -> nothing is written (``changed=False``).  Otherwise a temp file is created in the
    same folder, written, fsynced, given the previous file's mode (``default_mode`` for a new
    file) and renamed over ``path``; the folder is fsynced too.  Raises OSError on I/O failure
    (the temp file is removed).
    """
    try:
        with open(path, "rb") as f:
            previous: bytes | None = f.read()
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        previous, mode = None, default_mode
    if previous == data:
        return WriteOutcome(path, False, previous)
    _replace(path, data, mode)
    return WriteOutcome(path, True, previous)


def restore_file(path: str, previous: bytes | None) -> None:
    """Undo a :func:`write_atomic`: put ``previous`` back the same atomic way (remove the file
    if it did not exist before)."""
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    write_atomic(path, previous)


def _replace(path: str, data: bytes, mode: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
