"""A job's run lock: `<state_dir>/job-<name>.lock`, flock'd by the run itself.

The daemon takes the lock, hands the open file to the run's process (pass_fds) and closes its own
copy: the lock is then held for exactly as long as the run (and anything it leaves in its
session holding the file) lives, whatever happens to the daemon. A next daemon that finds the
lock held knows a run is going even when the record of it was lost with a SIGKILLed daemon, so
a `forbid` job is never started twice on the host (supervise/jobs_loop.py).
"""
from __future__ import annotations

import fcntl
import os


def take(path: str) -> int | None:
    """An fd holding the lock (inheritable, for pass_fds), or None when a run holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Close the daemon's copy: the run's copy keeps the lock (or nothing does, if it failed)."""
    os.close(fd)


def held(path: str) -> bool:
    """Someone holds the lock now (a run, or a daemon between take and release)."""
    try:
        fd = take(path)
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return False
