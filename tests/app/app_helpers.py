"""Helpers and fixtures for the app tier (imported by conftest.py): real redis-server and real gunicorn on free loopback ports.

Every process started here is stopped in a ``finally`` (by pid / its own process group),
even when the test fails.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import needs
from support.waiting import wait_for  # noqa: F401 (the tests import it from here)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable  # the interpreter running the tests has the app's packages (no venv assumed)
GUNICORN_CONF = str(REPO / "app" / "gunicorn_conf.py")

# Keep app-tier env from the developer's shell out of the tests.
_APP_ENV = ("REDIS_URL", "MONGODB_URI", "CACHE_TTL", "PROMETHEUS_MULTIPROC_DIR", "ULTRASCALE_TEST_ENDPOINTS",
            "ULTRASCALE_INSTANCE", "ULTRASCALE_PORT", "PORT", "GUNICORN_CMD_ARGS")


class RedisCalls:
    """Every call a TwoTierCache makes to its Redis tier from now on, as (operation, on the
    caller's thread). A caller waits only for the calls on its own thread: the breaker's probe
    ("probe") belongs on a background thread. The check that a request did not wait on Redis is
    then an event check, what it asked, not a stopwatch a busy host can stretch."""

    def __init__(self, cache):
        self.calls: list[tuple[str, bool]] = []
        self._caller = threading.get_ident()
        for op in ("get", "set", "delete", "ping"):
            setattr(cache.redis, op, self._recorded(op, getattr(cache.redis, op)))
        cache.breaker.probe = self._recorded("probe", cache.breaker.probe)

    def _recorded(self, op, real):
        def call(*args, **kwargs):
            self.calls.append((op, threading.get_ident() == self._caller))
            return real(*args, **kwargs)
        return call

    def on_caller(self) -> list[str]:
        """The operations the caller's own thread made (and waited for)."""
        return [op for op, mine in self.calls if mine]

    def clear(self) -> None:
        self.calls.clear()


class _SelectionsStarted(logging.Handler):
    def __init__(self, out: list[str]):
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record):
        message = record.getMessage()
        if "Server selection started" in message:
            self.out.append(message)


@contextlib.contextmanager
def mongo_server_selections():
    """The server selections pymongo starts inside the block (its documented
    pymongo.serverSelection DEBUG log, pymongo >= 4.7): a selection is what waits up to
    serverSelectionTimeoutMS for a server, so none means nothing waited for MongoDB."""
    logger = logging.getLogger("pymongo.serverSelection")
    started: list[str] = []
    handler, level = _SelectionsStarted(started), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield started
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, method: str = "GET"):
    """(status, parsed JSON or raw bytes)"""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def _stop(proc: subprocess.Popen, term_timeout: float = 8.0, group: bool = False) -> None:
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(term_timeout)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    finally:
        if group:  # the master and its workers share the session we created for them
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


class RedisServer:
    """A real redis-server on a free loopback port. stop()/start() keep the port."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def client(self):
        import redis
        return redis.Redis.from_url(self.url, socket_timeout=2)


@pytest.fixture(autouse=True)
def _clean_app_env(monkeypatch):
    for name in _APP_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def redis_server(tmp_path):
    needs.redis_server()
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Gunicorn:
    def __init__(self, port: int, proc: subprocess.Popen, log_path: Path, env: dict):
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.env = env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kw):
        return http_get(self.url + path, **kw)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def gunicorn_factory(tmp_path):
    """start(env=..., workers=2) -> Gunicorn, ready (GET /health == 200). All stopped at teardown."""
    started: list[Gunicorn] = []

    def start(env: dict | None = None, workers: int = 2, name: str | None = None) -> Gunicorn:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if k not in _APP_ENV}
        full_env.update({"ULTRASCALE_PORT": str(port), "LOG_LEVEL": "warning"})
        full_env.update(env or {})
        log_path = tmp_path / f"gunicorn-{port}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", GUNICORN_CONF, "--bind", f"127.0.0.1:{port}",
             "--workers", str(workers), "--worker-class", "gevent", "--no-control-socket",
             "--name", name or f"ultrascale-test-{port}", "app.wsgi:application"],
            cwd=str(REPO), env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        g = Gunicorn(port, proc, log_path, full_env)
        started.append(g)

        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {proc.returncode}:\n{g.log()}")
            return g.get("/health", timeout=1)[0] == 200
        wait_for(ready, timeout=20, interval=0.1, what=f"gunicorn on port {port}")
        return g

    try:
        yield start
    finally:
        for g in started:
            _stop(g.proc, group=True)
