"""The core's seams to the operating system: what the reconciler is given, as protocols and data.

`Runner` is what the reconciler acts through and `Clock` what it reads time from; the real ones
are `ultrascaled.effects.runner.OsRunner` and this `Clock`, the component tests pass fakes
(tests/component/fakes.py). Every Runner method may raise OSError; the reconciler treats that as
a temporary failure of its own, never as the app crashing. Nothing here performs I/O.
"""
from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ultrascaled.spec import Spec


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    name: str


@dataclass(frozen=True)
class Leftover:
    pid: int
    port: int
    cmdline: tuple[str, ...]
    is_master: bool             # leads its own process group (we start masters with setsid)
    master_alive: bool          # for a worker: its group leader still exists


@dataclass(frozen=True)
class ProcMem:
    pid: int
    rss: int
    uss: int | None = None
    pss: int | None = None
    cpu: float = 0.0          # cumulative CPU seconds


class Handle(Protocol):
    """A gunicorn master the runner started or adopted."""
    pid: int
    pgid: int


@dataclass(frozen=True)
class ProbeResult:
    status: int | None      # HTTP status, None when nothing sensible answered
    detail: str             # "HTTP 200", "connection refused", "timed out after 1s", ...

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class CheckResult:
    """A readiness check's or a connect's answer: passed or not, and what it got."""
    ok: bool
    detail: str             # "connected", "connection refused", "exit 1: <its last line>", ...


class Clock:
    """Monotonic time for timers, wall time for what people read."""
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


# errnos that say the daemon is short of a resource for a moment, not that the app is broken
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOSPC,
                              errno.EINTR, errno.ENOBUFS})


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


class Runner(Protocol):
    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str,
              pass_fds: tuple[int, ...] = (), rotate: tuple[int, int] | None = None) -> Handle: ...
    # rotate: (max_bytes, backups): the log is written through a pipe whose reader rotates it
    def listen(self, host: str, port: int, gate_closed: bool = False) -> socket.socket: ...  # port 0: a free one
    def set_gate(self, sock: socket.socket, open_: bool) -> None: ...     # procs.set_gate
    def takeover_channel(self) -> tuple[Any, Any]: ...                   # effects/takeover.py
    def hand_over(self, chan: Any, sock: socket.socket, copies: int) -> int: ...
    def take_listener(self, pid: int, host: str, port: int) -> socket.socket | None: ...
    def adopt(self, pid: int) -> Handle: ...
    def watch(self, handle: Handle, on_exit: Callable[[int | None], None]) -> None: ...
    def unwatch(self, handle: Handle) -> None: ...
    def signal(self, handle: Handle, sig: int) -> bool: ...
    def kill_group(self, pgid: int, sig: int) -> bool: ...
    def group_alive(self, pgid: int) -> bool: ...
    def signal_worker(self, pid: int, sig: int) -> bool: ...
    def sample(self, pid: int, metric: str) -> tuple[ProcMem | None, list[ProcMem]]: ...
    def sample_tree(self, pid: int, metric: str) -> list[ProcMem]: ...  # pid first, then every descendant; [] gone
    def forget(self, pids: list[int]) -> None: ...
    def find_leftovers(self, fleet: str) -> list[Leftover]: ...
    def start_time(self, pid: int) -> float | None: ...
    def port_in_use(self, host: str, port: int) -> PortHolder | None: ...
    async def probe(self, host: str, port: int, path: str, timeout: float) -> ProbeResult: ...
    async def tcp_check(self, host: str, port: int, timeout: float) -> CheckResult: ...   # a connect, closed at once
    async def run_check(self, argv: list[str], env: dict[str, str], cwd: str,
                        timeout: float) -> CheckResult: ...   # exit 0 within timeout; its group killed after
    def prepare_metrics_dir(self, path: str) -> None: ...
    def log_size(self, path: str) -> int: ...
    def rotate_log(self, path: str, backups: int) -> None: ...
    def log_tail(self, path: str, lines: int) -> str: ...              # the last lines of a log
    def log_since(self, path: str, offset: int) -> str: ...            # what a log got after offset (its end)


class Upstream(Protocol):
    """Where the ready instances are published (`ultrascaled.effects.upstream`: nginx, or none)."""
    excluded: frozenset[int]     # ports of the range another program holds: left out of nginx's list

    async def start(self) -> None: ...
    async def apply(self, servers: list[tuple[str, int]]) -> tuple[bool, str, bool]: ...
    """(ok, detail, temporary): a temporary failure is worth retrying with backoff; a permanent
    one (nginx rejects the configuration) is not, until the servers, spec or nginx's files change."""
    def config_stamp(self) -> Any: ...
    async def check(self) -> None: ...
    async def reconfigure(self, spec: Spec) -> tuple[bool, str]: ...
    async def stop(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
