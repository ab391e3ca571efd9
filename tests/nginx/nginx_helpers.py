"""Helpers and fixtures for the nginx tests: fakes for unit tests, real nginx + tiny backends
for integration tests.  Every process started here is killed by pid in a finally block.
(Named nginx_helpers, not conftest, so test modules can import it without clashing.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from support import needs
from ultrascaled.effects.nginx_control import RunResult, find_binary

NGINX = find_binary("nginx")

BACKEND = r"""
import http.server, socketserver, sys
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = str(port).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("127.0.0.1", port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def get(url: str, timeout: float = 3.0, context=None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def kill_pid(pid: int, timeout: float = 3.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def nginx_pids_of_prefix(prefix: str) -> list[int]:
    """All live (non-zombie) nginx processes whose master was started with -p prefix."""
    import psutil
    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "status", "ppid"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.info["name"] != "nginx":
                continue
            title = " ".join(p.info["cmdline"] or [])
            parent = psutil.Process(p.info["ppid"]) if "worker" in title else None
            ptitle = " ".join(parent.cmdline()) if parent else title
            if f"-p {prefix.rstrip('/')}/" in ptitle or f"-p {prefix} " in ptitle:
                out.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.fixture
def backends():
    """start(n) -> list of ports of tiny HTTP servers answering with their port."""
    procs: list[subprocess.Popen] = []

    def start(n: int) -> list[int]:
        ports = []
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, "-c", BACKEND, str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        for port in ports:
            wait_for_port(port)
        return ports

    try:
        yield start
    finally:
        for p in procs:
            kill_pid(p.pid)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def nginx_prefix(tmp_path):
    """A prefix dir; after the test every nginx of this prefix is killed by pid."""
    if not os.access(NGINX, os.X_OK):
        needs.nginx()   # not where ultrascaled looks: unavailable, naming scripts/setup test
    prefix = str(tmp_path / "nginx")
    os.makedirs(prefix)
    try:
        yield prefix
    finally:
        pid_file = os.path.join(prefix, "logs", "nginx.pid")
        pids = set(nginx_pids_of_prefix(prefix))
        try:
            pids.add(int(open(pid_file).read().strip()))
        except (OSError, ValueError):
            pass
        import psutil
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.name() == "nginx":
                    p.kill()
            except psutil.NoSuchProcess:
                pass


class FakeRunner:
    """Records every argv; answers from a list of (predicate, RunResult) rules."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.fail: dict[str, RunResult] = {}  # key: "check" | "reload" | "dump" | "start"
        self.dump_stdout = ""

    def kind(self, argv) -> str:
        if "-T" in argv:
            return "dump"
        if "-t" in argv:
            return "check"
        if "-s" in argv or "reload" in " ".join(argv):
            return "reload"
        return "start"

    async def __call__(self, argv, timeout):
        argv = list(argv)
        self.calls.append(argv)
        k = self.kind(argv)
        if k in self.fail:
            return self.fail[k]
        if k == "dump":
            return RunResult(0, self.dump_stdout, "")
        return RunResult(0, "", "")

    def kinds(self) -> list[str]:
        return [self.kind(a) for a in self.calls]


class FakeProcs:
    """ProcessOps fake: one 'master' whose worker generation changes on SIGHUP."""

    def __init__(self, pid=4242, pid_file_pid=None):
        self.master = pid
        self.pid_file_pid = pid_file_pid
        self.running = True
        self.gen = 0
        self.signals: list[tuple[int, int]] = []
        self.hup_fails = False

    def read_pid(self, path):
        return self.pid_file_pid

    def alive(self, pid):
        return self.running and pid == self.master

    def is_master(self, pid, prefix=None):
        return self.running and pid == self.master

    def workers(self, pid):
        if not self.alive(pid):
            return {}
        return {10000 + self.gen: "nginx: worker process"}

    def strays(self, prefix):
        return []

    def signal(self, pid, sig):
        self.signals.append((pid, sig))
        if sig == signal.SIGHUP and not self.hup_fails:
            self.gen += 1
        if sig in (signal.SIGQUIT, signal.SIGKILL):
            self.running = False
        return True


@pytest.fixture
def fake_runner():
    return FakeRunner()


