"""The real runner: the reconciler's seam (`ultrascaled.core.seams.Runner`) on this host's
subprocesses, pidfds, /proc and sockets; tested against real processes.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import psutil

from ultrascaled.core.seams import CheckResult, ProbeResult
from ultrascaled.effects import logfiles, procs, takeover


class OsRunner:
    """The real runner: subprocess, pidfds, /proc and sockets on this host."""

    def spawn(self, argv, env, cwd, log_path, pass_fds=(), rotate=None):
        return procs.spawn(argv, env, cwd, log_path, pass_fds, rotate)

    def listen(self, host, port, gate_closed=False):
        return procs.listen(host, port, gate_closed)

    def set_gate(self, sock, open_):
        procs.set_gate(sock, open_)

    def takeover_channel(self):
        return takeover.channel()

    def hand_over(self, chan, sock, copies):
        return takeover.hand_over(chan, sock, copies)

    def take_listener(self, pid, host, port):
        return procs.take_listener(pid, host, port)

    def adopt(self, pid):
        return procs.Proc(pid)

    def watch(self, handle, on_exit):
        handle.watch(asyncio.get_running_loop(), on_exit)

    def unwatch(self, handle):
        handle.unwatch(asyncio.get_running_loop())

    def signal(self, handle, sig):
        return handle.send(sig)

    def kill_group(self, pgid, sig):
        return procs.kill_group(pgid, sig)

    def group_alive(self, pgid):
        return procs.group_alive(pgid)

    def signal_worker(self, pid, sig):
        return procs.signal_worker(pid, sig)

    def sample(self, pid, metric):
        return procs.sample_group(pid, metric)

    def sample_tree(self, pid, metric):
        return procs.sample_tree(pid, metric)

    def forget(self, pids):
        procs.forget_pids(pids)

    def find_leftovers(self, fleet):
        return procs.find_leftovers(fleet)

    def start_time(self, pid):
        try:
            return psutil.Process(pid).create_time()
        except psutil.Error:
            return None

    def port_in_use(self, host, port):
        return procs.port_in_use(host, port)

    async def probe(self, host, port, path, timeout):
        return await http_probe(host, port, path, timeout)

    async def tcp_check(self, host, port, timeout):
        return await tcp_check(host, port, timeout)

    async def run_check(self, argv, env, cwd, timeout):
        return await run_check(argv, env, cwd, timeout)

    def prepare_metrics_dir(self, path):
        os.makedirs(path, exist_ok=True)
        for entry in os.scandir(path):
            if entry.name.endswith(".db"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def log_size(self, path):
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0

    def rotate_log(self, path, backups):
        logfiles.shift(path, backups)

    def log_tail(self, path, lines):
        return logfiles.tail(path, lines)

    def log_since(self, path, offset):
        return logfiles.since(path, offset)


async def http_probe(host: str, port: int, path: str, timeout: float) -> ProbeResult:
    """GET path with raw socket calls on the loop (stream objects per probe were most of the
    daemon's idle CPU); says what it got when it is not a 200."""
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        return ProbeResult(None, f"cannot open a socket: {exc.strerror or exc}")
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                                          f"User-Agent: ultrascaled\r\n\r\n".encode())
            head = await loop.sock_recv(sock, 64)
        parts = head.split(None, 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            return ProbeResult(int(parts[1]), f"HTTP {int(parts[1])}")
        return ProbeResult(None, "answer is not HTTP" if head else "connection closed without an answer")
    except TimeoutError:
        return ProbeResult(None, f"timed out after {timeout:g}s")
    except ConnectionRefusedError:
        return ProbeResult(None, "connection refused")
    except OSError as exc:
        return ProbeResult(None, exc.strerror or type(exc).__name__)
    finally:
        sock.close()


async def tcp_check(host: str, port: int, timeout: float) -> CheckResult:
    """Whether host:port accepts a TCP connection (closed at once, nothing sent)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except (OSError, TimeoutError) as exc:
        return CheckResult(False, f"cannot resolve {host}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
    family, _, _, _, addr = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return CheckResult(False, f"cannot open a socket: {exc.strerror or exc}")
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, addr)
        return CheckResult(True, "connected")
    except TimeoutError:
        return CheckResult(False, f"no answer within {timeout:g}s")
    except ConnectionRefusedError:
        return CheckResult(False, "connection refused")
    except OSError as exc:
        return CheckResult(False, exc.strerror or type(exc).__name__)
    finally:
        sock.close()


async def run_check(argv: list[str], env: dict[str, str], cwd: str, timeout: float) -> CheckResult:
    """Run a readiness command in its own session: ready when it exits 0 within `timeout`; its
    process group is SIGKILLed when it takes longer (and whatever it left, after it exits)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CheckResult(False, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return CheckResult(False, f"{argv[0]} did not exit within {timeout:g}s")
    finally:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)   # what it left in its session
    if proc.returncode == 0:
        return CheckResult(True, "exit 0")
    last = (out or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    return CheckResult(False, f"{argv[0]} exited {proc.returncode}" + (f": {last[0][:200]}" if last[0] else ""))
