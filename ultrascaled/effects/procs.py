"""The thin OS layer for gunicorn instances: spawn, watch, signal, reap, find leftovers.

Each instance is a gunicorn master started in its own session (`setsid`), so its process
group id equals its pid and every worker it forks is in that group. Exits are noticed at once
through a pidfd (for our children and for masters adopted from an earlier run alike), not by a
polling tick.
"""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Callable

import psutil

from ultrascaled.core.seams import Leftover, PortHolder, ProcMem


class Proc:
    """A running gunicorn master: our child (`popen` set) or adopted from an earlier run.

    It holds a pidfd from the moment it is made, so a signal never reaches another process
    that took the pid over after ours exited (pidfd_send_signal)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen
        self._watching = False
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = None

    @property
    def pgid(self) -> int:
        return self.pid  # started with setsid

    @property
    def exited(self) -> bool:
        return self._fd is None

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int | None], None]) -> bool:
        """Call on_exit(returncode or None) once the process has exited. False if already gone."""
        if self._fd is None:
            loop.call_soon(on_exit, self._reap())
            return False

        def ready() -> None:
            self._close(loop)
            on_exit(self._reap())

        loop.add_reader(self._fd, ready)
        self._watching = True
        return True

    def _close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._fd is not None:
            if self._watching and loop is not None:
                loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._watching = False

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._close(loop)

    def _reap(self) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None

    def send(self, sig: int) -> bool:
        """Signal this very process (not whatever holds its pid now); False once it exited."""
        if self._fd is None:
            return False
        try:
            signal.pidfd_send_signal(self._fd, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill_group(self, sig: int = signal.SIGKILL) -> bool:
        return kill_group(self.pgid, sig)


def pid_running(pid: int) -> bool:
    """True unless the pid is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    """True while a process of the group is still running. Zombies do not count: they hold no
    sockets, and the reaper of orphans (PID 1) may take a second to collect them."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pgrp == pgid and state not in (b"Z", b"X") for _, state, _, pgrp in proc_stats())


def proc_stats():
    """(pid, state, ppid, pgrp) of every process, from one pass over /proc/*/stat."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        yield int(entry.name), fields[0], int(fields[1]), int(fields[2])


async def wait_group_gone(pgid: int, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


LOGPIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shims",
                       "ultrascale_logpipe.py")


def log_pipe(log_path: str, max_bytes: int, backups: int) -> int:
    """The write end of a pipe whose reader appends to `log_path` and rotates it itself
    (shims/ultrascale_logpipe.py, in a session of its own): for a process that cannot be told
    to reopen its log, as gunicorn is with SIGUSR1. The caller closes the fd once it is handed on."""
    # the checks an open here makes (a symlink planted there, no folder) fail now, not in the reader
    os.close(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640))
    r, w = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-S", "-I", LOGPIPE, log_path, str(max_bytes), str(backups)],
                         stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return w


def spawn(argv: list[str], env: dict[str, str], cwd: str, log_path: str, pass_fds: tuple[int, ...] = (),
          rotate: tuple[int, int] | None = None) -> Proc:
    """Start a master in its own session, its output appended to `log_path` (never through a
    symlink planted there). `pass_fds`: listening sockets the master inherits under the same
    numbers (`--bind fd://N`); every other fd of the daemon is closed in the child. `rotate`:
    (max_bytes, backups) for a log rotated by a pipe's reader instead (:func:`log_pipe`)."""
    fd = log_pipe(log_path, *rotate) if rotate else \
        os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                 cwd=cwd, env=env, start_new_session=True, close_fds=True,
                                 pass_fds=pass_fds)
    finally:
        os.close(fd)
    return Proc(popen.pid, popen)


def port_in_use(host: str, port: int) -> PortHolder | None:
    """None if `host:port` can be bound now; else who holds it (when we can tell)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return PortHolder(None, exc.strerror or str(exc))
    finally:
        s.close()
    try:
        for c in psutil.net_connections("inet"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                try:
                    return PortHolder(c.pid, psutil.Process(c.pid).name())
                except psutil.Error:
                    return PortHolder(c.pid, "?")
    except psutil.Error:
        pass
    return PortHolder(None, "unknown program")


def marker_port(cmdline: list[str] | tuple[str, ...], fleet: str) -> int | None:
    """The port in this fleet's exact marker, if `cmdline` is one of this fleet's gunicorn
    processes: `... -m gunicorn ... --name ultrascale-FLEET-PORT ...` as started, or the title
    `gunicorn: master [ultrascale-FLEET-PORT]` when setproctitle rewrote it. A neighbour fleet
    whose name shares a prefix (`demo` and `demo-2`), or any other program that merely mentions
    the marker, does not match."""
    prefix = f"ultrascale-{fleet}-"   # command.marker(fleet, port) without the port

    def port_of(name: str) -> int | None:
        rest = name[len(prefix):] if name.startswith(prefix) else ""
        return int(rest) if rest.isascii() and rest.isdigit() and len(rest) <= 5 else None

    args = list(cmdline)
    if len(args) == 1 and args[0].startswith("gunicorn: "):  # setproctitle: one string
        title = args[0].split()
        if len(title) == 3 and title[1] in ("master", "worker") and title[2].startswith("[") \
                and title[2].endswith("]"):
            return port_of(title[2][1:-1])
        return None
    is_gunicorn = any(a == "gunicorn" or a.endswith("/gunicorn") for a in args[:3]) or \
        any(args[i] == "-m" and args[i + 1] == "gunicorn" for i in range(min(len(args) - 1, 4)))
    if not is_gunicorn:
        return None
    for i, a in enumerate(args):
        if a == "--name" and i + 1 < len(args):
            return port_of(args[i + 1])
        if a.startswith("--name="):
            return port_of(a[len("--name="):])
    return None


def find_leftovers(fleet: str) -> list[Leftover]:
    """gunicorn processes of this fleet from an earlier run of the daemon, by exact marker."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid == me:
                continue
            port = marker_port(p.info["cmdline"] or [], fleet)
            if port is None:
                continue
            pgid = os.getpgid(p.pid)
            _remember(p.pid)  # signal_worker checks it is still this process
            found.append(Leftover(p.pid, port, tuple(p.info["cmdline"]), pgid == p.pid,
                                  pgid == p.pid or psutil.pid_exists(pgid)))
        except (psutil.Error, ProcessLookupError, OSError):
            continue
    return found


# Memory and CPU of the pids the daemon already knows, read straight from /proc/PID/statm and
# /proc/PID/stat (the files psutil reads for memory_info() and cpu_times()) instead of through
# psutil: measured 2026-12-07 on the 2-core bench machine, 50 us per process against psutil's 80 us
# (its Process objects, wrappers and buffered opens; py-spy put the psutil sampler at 35 % of an
# idle daemon's CPU with 16 instances; docs/benchmarks.md, "The daemon's idle cost"). uss and pss
# still come from psutil (they need /proc/PID/smaps_rollup parsed).
_PAGE = os.sysconf("SC_PAGE_SIZE")
_HZ = os.sysconf("SC_CLK_TCK")
_STARTS: dict[int, bytes] = {}    # pid -> its start time (stat field 22) when first seen


def _read_small(path: str) -> bytes:
    """A small /proc file in one read (os.read: no buffered file object for 200 bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat after "pid (comm) ": [state, ppid, pgrp, ...] (field 3 onwards), or None."""
    try:
        stat = _read_small(f"/proc/{pid}/stat")
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _read_mem(pid: int, metric: str) -> ProcMem | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        _STARTS.pop(pid, None)
        return None
    start = _STARTS.setdefault(pid, fields[19])
    if start != fields[19]:            # the pid was reused since: a new process under an old number
        _STARTS[pid] = fields[19]
    cpu = (int(fields[11]) + int(fields[12])) / _HZ          # utime + stime, in clock ticks
    if metric == "rss":
        try:
            rss = int(_read_small(f"/proc/{pid}/statm").split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            _STARTS.pop(pid, None)
            return None
        return ProcMem(pid, rss, None, None, cpu)
    try:
        mi = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        _STARTS.pop(pid, None)
        return None
    return ProcMem(pid, mi.rss, mi.uss, getattr(mi, "pss", None), cpu)


def children_of(pid: int) -> list[int] | None:
    """Direct children from /proc/PID/task/PID/children (one small read), or None when the
    kernel does not provide that file."""
    try:
        return [int(x) for x in _read_small(f"/proc/{pid}/task/{pid}/children").split()]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return []


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, from one pass over /proc (what psutil's children() does on
    every call)."""
    kids: dict[int, list[int]] = {}
    for pid, _, ppid, _ in proc_stats():
        kids.setdefault(ppid, []).append(pid)
    return kids


_ROUND_MAP: tuple[float, dict[int, list[int]]] = (-1.0, {})


def _round_children_map(max_age: float = 0.5) -> dict[int, list[int]]:
    """children_map() shared by the instances of one round of samples (a kernel without
    /proc/PID/task/PID/children otherwise costs a pass over /proc per instance per round)."""
    global _ROUND_MAP
    now = time.monotonic()
    if now - _ROUND_MAP[0] > max_age:
        _ROUND_MAP = (now, children_map())
    return _ROUND_MAP[1]


def sample_group(master_pid: int, metric: str = "rss") -> tuple[ProcMem | None, list[ProcMem]]:
    """Memory and CPU of a master and its workers; processes that vanish meanwhile are skipped."""
    master = _read_mem(master_pid, metric)
    if master is None:
        return None, []
    kids = children_of(master_pid)
    if kids is None:  # no children file in this kernel: one pass over /proc for the whole round
        kids = _round_children_map().get(master_pid, [])
    workers = [m for m in (_read_mem(pid, metric) for pid in kids) if m is not None]
    return master, workers


def _remember(pid: int) -> None:
    fields = _stat_fields(pid)
    if fields is not None and len(fields) >= 20:
        _STARTS.setdefault(pid, fields[19])


def sample_tree(root_pid: int, metric: str = "rss") -> list[ProcMem]:
    """Memory and CPU of a process and all its descendants (a worker type's process: a Celery
    parent, its pool children and theirs), root first; [] when the root is gone. One small read
    of /proc/PID/task/PID/children per process of the tree, a pass over /proc without it."""
    root = _read_mem(root_pid, metric)
    if root is None:
        return []
    out, todo, seen = [root], [root_pid], {root_pid}
    every: dict[int, list[int]] | None = None
    while todo:
        pid = todo.pop()
        kids = children_of(pid)
        if kids is None:
            every = every if every is not None else children_map()
            kids = every.get(pid, [])
        for kid in kids:
            if kid in seen:
                continue
            seen.add(kid)
            m = _read_mem(kid, metric)
            if m is not None:
                out.append(m)
                todo.append(kid)
    return out


def signal_worker(pid: int, sig: int) -> bool:
    """Signal a worker seen by `sample_group` (or `find_leftovers`), only if it is still that
    process: a pidfd is opened first, then the pid's start time compared with the one recorded
    when it was seen, and the signal goes through the pidfd (a reused pid is left alone)."""
    start = _STARTS.get(pid)
    if start is None:
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        _STARTS.pop(pid, None)
        return False
    try:
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 20 or fields[19] != start:
            _STARTS.pop(pid, None)
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except (ProcessLookupError, PermissionError):
        _STARTS.pop(pid, None)
        return False
    finally:
        os.close(fd)


def forget_pids(pids) -> None:
    for pid in pids:
        _STARTS.pop(pid, None)


# ---- listening sockets the daemon holds (docs/deploys.md, "Sockets the daemon holds") ------------

LISTEN_BACKLOG = 2048    # gunicorn's default `backlog`


def listen(host: str, port: int, gate_closed: bool = False) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), not inherited by children
    unless passed on purpose (Python's sockets are close-on-exec). `gate_closed`: it listens
    with its gate closed (see `set_gate`), opened once its instance is ready."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if gate_closed:
            set_gate(s, False)
        s.listen(LISTEN_BACKLOG)
    except OSError:
        s.close()
        raise
    return s


# ---- the gate of a held socket: how an instance joins and leaves a static nginx upstream ------
#
# nginx (the open-source one) changes its upstream only by a reload, and a reload closes idle
# client keep-alive connections. So the upstream lists every port of the fleet's range once, and
# the daemon opens and closes each port's *gate* instead: a classic BPF filter on the listening
# socket that drops every packet (SO_ATTACH_FILTER; unprivileged, shared by every copy of the
# socket, so it acts on the masters' copies too). A closed gate drops new connection attempts (nginx's
# connect times out, it marks the port failed and tries the next one) while the connections
# already queued stay and are accepted; detaching the filter opens it. No kernel module, no root.

SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)      # BPF_RET | BPF_K, 0: keep no byte of the packet


def set_gate(sock: socket.socket, open_: bool) -> None:
    if open_:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        except OSError as exc:
            if exc.errno != errno.ENOENT:   # no filter attached: already open
                raise
        return
    import ctypes
    prog = ctypes.create_string_buffer(_DROP_ALL, len(_DROP_ALL))
    fprog = struct.pack("HxxxxxxP", 1, ctypes.addressof(prog))   # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


_SYS_PIDFD_GETFD = 438   # the same number on every Linux architecture (since 5.6)


def _pidfd_getfd(pidfd: int, targetfd: int) -> int:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, targetfd, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def take_listener(pid: int, host: str, port: int) -> socket.socket | None:
    """A duplicate of the listening socket on host:port that process `pid` holds, taken with
    pidfd_getfd(2) (Linux >= 5.6; needs ptrace rights over it: the same user and Yama's
    ptrace_scope 0, or CAP_SYS_PTRACE). None when it cannot be taken."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(entry.path).startswith("socket:"):
                    continue
                fd = _pidfd_getfd(pidfd, int(entry.name))
            except (OSError, ValueError):
                continue
            s = socket.socket(fileno=fd)
            try:
                if s.type == socket.SOCK_STREAM and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) \
                        and s.getsockname()[:2] == (host, port):
                    return s
            except OSError:
                pass
            s.close()
    except OSError:
        return None
    finally:
        os.close(pidfd)
    return None
