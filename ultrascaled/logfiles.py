"""Instance log files: size-based copy-then-truncate rotation, tail, and offset polling.

gunicorn writes its output to a file the daemon opened with ``O_APPEND`` before spawning it;
the instance keeps that fd for its whole life. Renaming the file would leave gunicorn writing
into the renamed one, so rotation copies the live file to ``path.1`` and truncates the live file
in place: the writer keeps its fd and, because of ``O_APPEND``, its next write lands at the new
end of file (offset 0) -- no hole, no NUL bytes.

The price of copy-then-truncate is a small window: bytes written after the copy read the end
of the file and before the truncate are lost. :func:`rotate_if_needed` keeps that window short by
copying again whatever arrived during the copy before it truncates.

These are plain blocking file operations; from the event loop call them through
``asyncio.to_thread`` (copying a 50 MiB file takes some tens of milliseconds).
"""
from __future__ import annotations

import os

_CHUNK = 1 << 20


def backup_path(path: str | os.PathLike, n: int) -> str:
    return f"{os.fspath(path)}.{n}"


def rotate_if_needed(path: str | os.PathLike, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` when it holds ``max_bytes`` or more; True if it rotated.

    Keeps ``path.1`` (newest) .. ``path.<backups>`` (oldest); ``backups=0`` only truncates.
    A missing file is not an error (nothing to rotate)."""
    path = os.fspath(path)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if max_bytes <= 0 or size < max_bytes:
        return False
    if backups <= 0:
        os.truncate(path, 0)
        return True
    tmp = backup_path(path, 1) + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        copied = 0
        while True:  # copy until a read finds nothing new, then truncate at once
            n = os.sendfile(dst.fileno(), src.fileno(), copied, _CHUNK) if _has_sendfile() else \
                _copy_chunk(src, dst, copied)
            if n == 0:
                break
            copied += n
        os.truncate(path, 0)
    # Shift the older backups up, dropping the oldest, then put the new one in place.
    oldest = backup_path(path, backups)
    if os.path.exists(oldest):
        os.remove(oldest)
    for n in range(backups - 1, 0, -1):
        src_name = backup_path(path, n)
        if os.path.exists(src_name):
            os.replace(src_name, backup_path(path, n + 1))
    os.replace(tmp, backup_path(path, 1))
    return True


def _has_sendfile() -> bool:
    return hasattr(os, "sendfile")


def _copy_chunk(src, dst, offset: int) -> int:
    src.seek(offset)
    data = src.read(_CHUNK)
    dst.write(data)
    dst.flush()
    return len(data)


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


def read_from(path: str | os.PathLike, offset: int, limit: int = _CHUNK) -> tuple[bytes, int]:
    """Bytes after ``offset`` (at most ``limit``) and the offset to ask for next: the polling
    step of ``logs -f``. If the file is now shorter than ``offset`` it was truncated by a
    rotation, and reading starts again at 0. A missing file gives ``(b"", 0)``.

    A file that was truncated and then grew past ``offset`` between two polls cannot be told
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
