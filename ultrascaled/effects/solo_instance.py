"""One instance of the spec's app, alone, for `ultrascalectl plan --measure`: gunicorn started
with the command line the daemon builds (core/command.py), bound to a loopback port, no nginx
and no daemon; stopped by its pid (and its own process group) when the measurement ends.

    with SoloInstance(spec, port=free_port(), workdir=tmp) as inst:   # waits for health.path
        inst.get("/")                                                  # (status, first bytes)
        inst.rss_bytes()                                               # master + workers

Every failure is a :class:`SoloInstanceError` whose message says what to fix: a busy port, an
app gunicorn cannot load (with the last lines of its log), a health path that never answers.
"""
from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from ultrascaled.core.command import gunicorn_argv, instance_env, with_binds
from ultrascaled.spec import Spec

HOST = "127.0.0.1"


class SoloInstanceError(RuntimeError):
    """The instance could not be started or does not answer; the message says why."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def marker(fleet: str, port: int) -> str:
    """Not the daemon's `ultrascale-FLEET-PORT`: a daemon of the same fleet never adopts it."""
    return f"ultrascale-measure-{fleet}-{port}"


class SoloInstance:
    def __init__(self, spec: Spec, port: int, workdir: str | os.PathLike, directory: str | None = None):
        """`directory`: the folder gunicorn runs in (the fleet's current release), app.directory if None."""
        self.spec, self.port, self.workdir = spec, port, Path(workdir)
        self.directory = directory or spec.app.directory
        self.log_path = self.workdir / "gunicorn.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = with_binds(gunicorn_argv(self.spec, self.port, str(self.log_path), self.directory), [f"{HOST}:{self.port}"])
        i = argv.index("--name")
        argv[i + 1] = marker(self.spec.name, self.port)
        return argv

    def start(self) -> "SoloInstance":
        if port_in_use(self.port):
            raise SoloInstanceError(f"port {self.port} on {HOST} is busy: choose another with --port, "
                                    "or leave --port out for a free one")
        metrics = self.workdir / "metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        env = instance_env(self.spec, 0, self.port, str(metrics))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True, close_fds=True)
        h = self.spec.health
        deadline = time.monotonic() + h.start_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                why = self.exception_line()
                raise SoloInstanceError(
                    f"the app did not start: gunicorn exited with code {code} ({self.spec.app.module} "
                    f"in {self.directory})" + (f": {why}" if why else "")
                    + f"; the end of its log:\n{self.log_tail()}")
            try:
                status, _ = self.get(h.path, timeout=h.timeout)
                if status == 200:
                    return self
                last = f"HTTP {status}"
            except OSError as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(0.05)
        raise SoloInstanceError(f"health.path {h.path} did not answer 200 within health.start_timeout "
                                f"({h.start_timeout:g} s; last: {last}); the end of its log:\n{self.log_tail()}")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """One GET on the instance (no proxy): (status, up to 200 bytes of the body)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": f"{HOST}:{self.port}"})
            resp = conn.getresponse()
            return resp.status, resp.read(200)
        finally:
            conn.close()

    def rss_bytes(self) -> int | None:
        """Resident memory of the master and its workers now."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            master = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [master, *master.children(recursive=True)])
        except psutil.Error:
            return None

    def exception_line(self) -> str | None:
        """The last `SomeError: message` line of the log (a traceback's last line)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for ln in reversed(lines):
            head = ln.strip().split(":", 1)[0]
            if ":" in ln and head.isidentifier() and (head.endswith("Error") or head.endswith("Exception")):
                return ln.strip()
        return None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "  (no log)"
        return "\n".join(f"  {ln}" for ln in lines) or "  (empty log)"

    def stop(self) -> None:
        """SIGTERM to the master (it stops its workers gracefully); after
        gunicorn.graceful_timeout + 2 s, SIGKILL to it and to the workers it had (psutil checks
        each is still the process it was, so a reused pid is never signalled)."""
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            workers = psutil.Process(p.pid).children(recursive=True) if p.poll() is None else []
        except psutil.Error:
            workers = []
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(self.spec.gunicorn.graceful_timeout + 2.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for w in workers:
            try:
                w.kill()
            except psutil.Error:   # gone (or its pid reused: psutil refuses to signal it)
                pass

    def __enter__(self) -> "SoloInstance":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
