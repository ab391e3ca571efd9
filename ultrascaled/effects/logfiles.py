"""Instance log files: rename-and-reopen rotation, tail, and offset polling.

gunicorn writes its own and the app's output to the file named by ``--error-logfile`` (with
``--capture-output`` the workers' stdout and stderr go there too) and reopens that name on
SIGUSR1, master and workers alike. Rotation is therefore: rename the live file to ``path.1``
(older backups shift up), then SIGUSR1. Lines written between the two land in ``path.1``, the
rest in the new file: no line is lost, no byte is copied. :func:`shift` does the renames; the
reconciler sends the signal.

``read_from`` is the polling step of ``logs -f``; these are plain blocking file operations.
"""
from __future__ import annotations

import os

_CHUNK = 1 << 20


def backup_path(path: str | os.PathLike, n: int) -> str:
    return f"{os.fspath(path)}.{n}"


def shift(path: str | os.PathLike, backups: int) -> None:
    """Move ``path`` to ``path.1``, ``path.1`` to ``path.2`` ... dropping ``path.<backups>``;
    ``backups=0`` removes ``path`` (its writer goes on into the unlinked file until it reopens).
    Only renames in one folder: no copy, so it is quick and a full disk cannot fail it."""
    path = os.fspath(path)
    if backups <= 0:
        _missing_ok(os.unlink, path)
        return
    _missing_ok(os.unlink, backup_path(path, backups))
    for n in range(backups - 1, 0, -1):
        _missing_ok(os.replace, backup_path(path, n), backup_path(path, n + 1))
    _missing_ok(os.replace, path, backup_path(path, 1))


def _missing_ok(fn, *args) -> None:
    try:
        fn(*args)
    except FileNotFoundError:
        pass


def tail(path: str | os.PathLike, lines: int) -> str:
    """The last ``lines`` lines of ``path`` ("" if it is missing); reads from the end, so a
    large file costs no more than the lines asked for."""
    if lines <= 0:
        return ""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return ""
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        # A trailing newline ends the last line; it does not start an empty one.
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    body = data[:-1] if data.endswith(b"\n") else data
    parts = body.split(b"\n")
    if pos > 0:
        parts = parts[1:]  # the first piece may be the middle of a line
    out = b"\n".join(parts[-lines:])
    if data.endswith(b"\n") and out:
        out += b"\n"
    return out.decode("utf-8", errors="replace")


def since(path: str | os.PathLike, offset: int, limit: int = 256 * 1024) -> str:
    """What was written to ``path`` after ``offset`` (its size when a master started), at most
    its last ``limit`` bytes, from a line's start; "" if it is missing. A file shorter than
    ``offset`` was rotated since: all of it is new."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return ""
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset > size or offset < 0:
            offset = 0
        start = max(offset, size - limit)
        f.seek(start)
        data = f.read(size - start)
    if start > offset:
        data = data.partition(b"\n")[2]   # the first piece may be the middle of a line
    return data.decode("utf-8", errors="replace")


def read_from(path: str | os.PathLike, offset: int, limit: int = _CHUNK) -> tuple[bytes, int]:
    """Bytes after ``offset`` (at most ``limit``) and the offset to ask for next: the polling
    step of ``logs -f``. If the file is now shorter than ``offset`` it is a new file after a
    rotation, and reading starts again at 0. A missing file gives ``(b"", 0)``.

    A file that was rotated and then grew past ``offset`` between two polls cannot be told
    apart from one that only grew; poll more often than the file fills ``max_bytes``."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return b"", 0
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset > size or offset < 0:
            offset = 0
        f.seek(offset)
        data = f.read(min(limit, size - offset))
    return data, offset + len(data)
