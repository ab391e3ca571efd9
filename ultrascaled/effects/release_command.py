"""deploy.release_command, run: one process group in the new release's folder, its output kept
whole in a log file and its tail for the event, killed (the whole group) at its timeout or when
the daemon stops while it runs, and sent SIGTERM when the daemon dies without stopping (SIGKILL,
the OOM killer): a migration never runs on unwatched, where the next daemon's deploy could start
a second one beside it."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl   # resolved here: the forked child only calls it

TAIL_LINES = 20
TAIL_BYTES = 4096
KILL_GRACE = 5.0    # seconds between SIGTERM and SIGKILL to the group at the timeout


@dataclass(frozen=True)
class Outcome:
    rc: int | None          # None: killed at the timeout
    seconds: float
    tail: str               # the output's last lines (at most TAIL_LINES, TAIL_BYTES)
    log_path: str


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            data = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(output not readable: {exc})"
    return "\n".join(data.rstrip("\n").splitlines()[-TAIL_LINES:])


def _dies_with(parent: int):
    """preexec_fn: SIGTERM to the command when the thread that started it (the daemon's event
    loop) ends; and if the daemon was already gone by then, exit at once."""
    def preexec() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


def _kill(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


async def run(argv: list[str], cwd: str, env: dict[str, str], timeout: float, log_path: str) -> Outcome:
    """Run `argv` to its end (or `timeout`), output to `log_path` (appended). Raises OSError when
    it cannot be started (the message names why)."""
    started = time.monotonic()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"==> {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {argv!r} in {cwd}\n".encode())
        log.flush()
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=log, stderr=log, start_new_session=True,
                                                    preexec_fn=_dies_with(os.getpid()))
    rc: int | None = None
    try:
        rc = await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        _kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
        except asyncio.TimeoutError:
            _kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    except BaseException:          # the daemon stops meanwhile: the command does not outlive it
        _kill(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise
    _kill(proc.pid, signal.SIGKILL)   # what it left behind in its group
    return Outcome(rc, time.monotonic() - started, _tail(log_path), log_path)
