"""Run a real ultrascaled on free loopback ports: the one launcher of the integration tests,
the chaos run and the benchmarks (bench/ imports it from here). Every process it starts can be
ended by pid with `cleanup()`.

The console scripts are the ones of the interpreter running this (`sys.executable`'s folder,
e.g. `.venv/bin`), else the first on PATH: no venv is assumed. The reference app is served from
the checkout (`ROOT`, where `app/` lives).
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script (ultrascaled, ultrascalectl, ...): next to this interpreter, else on PATH."""
    here = BIN / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not next to {sys.executable} and not on PATH; "
                                "install the package (scripts/setup test)")
    return found


def _bindable(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port_block(n: int) -> int:
    """A base port with n consecutive free ports (random, to keep parallel runs apart), below the
    kernel's ephemeral range: a port free now but in that range can become a client connection's
    local port a moment later (nginx's and the load tester's), and the instance then cannot bind it."""
    top = min(_ephemeral_range()[0], 65536)
    low = 10000 if top > 20000 else 2000
    for _ in range(200):
        base = random.randrange(low, top - n)
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise RuntimeError("no free port block")


# What tests add to a spec: the app's debug endpoints, one worker, quick health checks, drains
# and stops. Measurements that must see the daemon as shipped pass `tuned=False`.
TEST_TUNING = {
    "app": {"env": {"ULTRASCALE_TEST_ENDPOINTS": "1"}},
    "gunicorn": {"workers": 1, "graceful_timeout": 5},
    "health": {"start_timeout": 20, "interval": 0.5},
    "restart": {"drain_seconds": 0.2},
}


class Daemon:
    def __init__(self, tmp: Path, spec_overrides: dict | None = None, nginx: bool = True, span: int = 12,
                 tuned: bool = True, name: str | None = None):
        """`span` free ports: instances from the first, the API and nginx on the last two.
        The spec serves the reference app from the checkout with `TEST_TUNING` (unless
        `tuned=False`: the defaults), then `spec_overrides`."""
        base = free_port_block(span)
        self.name = name or "t" + uuid.uuid4().hex[:8]
        self.base_port = base
        self.api_port = base + span - 2
        self.nginx_port = base + span - 1
        self.tmp = tmp
        self.spec = {
            "name": self.name,
            # The reference app as etc/ultrascaled/fleet.yaml runs it (module, config, gevent).
            "app": {"directory": str(ROOT), "module": "app.wsgi:application", "config": "app/gunicorn_conf.py"},
            "instances": {"count": 2, "min": 1, "max": 6, "base_port": base},
            "gunicorn": {"worker_class": "gevent"},
            "api": {"port": self.api_port},
            "paths": {"state_dir": str(tmp / "state"), "log_dir": str(tmp / "log")},
            "nginx": {"mode": "managed", "listen": self.nginx_port} if nginx else {"mode": "off"},
        }
        if tuned:
            _merge(self.spec, copy.deepcopy(TEST_TUNING))
        _merge(self.spec, spec_overrides or {})
        self.spec_path = tmp / "fleet.yaml"
        self.write_spec()
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / "daemon.log"
        self.env = dict(os.environ)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def write_spec(self, spec: dict | None = None) -> None:
        self.spec_path.write_text(yaml.safe_dump(spec or self.spec))

    def start(self, wait: bool = True) -> "Daemon":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([tool("ultrascaled"), "--spec", str(self.spec_path),
                                      "--log-format", "json"], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        log.close()
        if wait:
            self.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"]) and all(
                i["serving"] for i in f["instances"]), timeout=30, what="fleet ready")
        return self

    def api(self, method: str, path: str, body=None, raw: bytes | None = None, token: str | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def fleet(self) -> dict:
        return self.api("GET", "/fleet")[1]

    def wait_until(self, cond, timeout: float = 30, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                last = self.fleet()
                if cond(last):
                    return last
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last /fleet: {json.dumps(last)[:2000]}\n"
                             f"{self.log_tail()}")

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([tool("ultrascalectl"), "--api", self.api_url, *args],
                              capture_output=True, text=True, timeout=timeout)

    def events(self, prefix: str = "") -> list[dict]:
        return [e for e in self.api("GET", "/events")[1]["events"] if e["event"].startswith(prefix)]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def fleet_processes(self) -> list:
        from ultrascaled.effects.procs import find_leftovers
        return find_leftovers(self.name)

    def nginx_pid(self) -> int | None:
        try:
            return int((self.tmp / "state" / "nginx" / "logs" / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """End everything this fleet started: gracefully when the daemon still runs (it stops
        its instances and nginx), then by pid whatever is left."""
        import psutil
        if self.proc and self.proc.poll() is None:
            self.stop(timeout=20)
        for lo in self.fleet_processes():
            try:
                os.killpg(os.getpgid(lo.pid), signal.SIGKILL)
            except OSError:
                pass
        pid = self.nginx_pid()
        if pid:
            try:
                master = psutil.Process(pid)
                if "nginx" in master.name():
                    for worker in master.children():  # nginx workers outlive a killed master
                        worker.kill()
                    master.kill()
            except psutil.Error:
                pass
        from ultrascaled.effects.nginx_control import ProcessOps
        for stray in ProcessOps().strays(str(self.tmp / "state" / "nginx")):
            try:
                os.kill(stray, signal.SIGKILL)
            except OSError:
                pass


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v




def http_get(port: int, path: str = "/health", timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def pid_alive(pid: int) -> bool:
    from ultrascaled.effects.procs import pid_running
    return pid_running(pid)
