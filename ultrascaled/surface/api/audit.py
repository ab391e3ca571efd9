"""The audit log: one fsync'd JSON line per mutating request."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from typing import Any

# ---- the audit log ---------------------------------------------------------------------------

class AuditLog:
    """Append-only JSON lines, one per mutating request, fsync'd before the answer goes out.

    Opened with O_NOFOLLOW (a symlink planted in the state folder is refused) and O_APPEND."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600)
        self._lock = threading.Lock()

    def _write(self, line: bytes) -> None:
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    async def record(self, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), **fields}, sort_keys=True) + "\n"
        await asyncio.to_thread(self._write, line.encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
