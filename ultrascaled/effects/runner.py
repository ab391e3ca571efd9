"""The real runner: the reconciler's seam (`ultrascaled.core.seams.Runner`) on this host's
subprocesses, pidfds, /proc and sockets; tested against real processes.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import psutil

from ultrascaled.core.seams import ProbeResult
from ultrascaled.effects import logfiles, procs, takeover


class OsRunner:
    """The real runner: subprocess, pidfds, /proc and sockets on this host."""

    def spawn(self, argv, env, cwd, log_path, pass_fds=()):
        return procs.spawn(argv, env, cwd, log_path, pass_fds)

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
