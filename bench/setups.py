"""The four setups, each started and stopped by the benchmark.

  sync         (a) one gunicorn, 5 sync workers, hit directly
  supervisord  (b) N gunicorn x 1 gevent worker under supervisord, behind nginx
  handwired    (c) the same instances started by hand (setsid each), static nginx upstream
  ultrascaled  (d) ultrascaled with the same instances behind its managed nginx

Every instance runs the command ultrascaled itself builds (`ultrascaled.supervise.supervisor.gunicorn_argv`)
with the environment it builds (`instance_env`), and (b) and (c) get the nginx configuration
from the same renderer (`ultrascaled.effects.nginx_render`) with default `NginxSettings`, so between
(b), (c) and (d) only the supervisor differs.
"""
from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil

from ultrascaled.spec.nginx import NginxSettings
from ultrascaled.effects.nginx_render import render_main_conf, render_upstream
from ultrascaled.spec import Spec, parse_spec
from ultrascaled.core.command import gunicorn_argv, instance_env

from bench.util import REPO, Tracker, nginx_binary, port_free, probe, stop_pid, wait_ok
from support.harness import Daemon, tool

# Loopback ports of each setup: instances at base, base+1, ...; nginx next to them. ultrascaled
# (d) takes free ports from the launcher.
PORTS = {
    "sync": {"base": 18801},
    "supervisord": {"base": 18601, "nginx": 18680},
    "handwired": {"base": 18701, "nginx": 18780},
}
MAX_INSTANCES = 8


class NotSupported(Exception):
    """The setup has no way to do this (the table says so)."""


def bench_spec(name: str, base_port: int, count: int, state_dir: Path, *, workers: int = 1,
               worker_class: str = "gevent", api_port: int = 19500, nginx_port: int = 18580,
               nginx_mode: str = "managed") -> Spec:
    state_dir = Path(state_dir)
    text = f"""
name: {name}
app: {{directory: {REPO}, python: {sys.executable}, module: 'app.wsgi:application', config: app/gunicorn_conf.py}}
instances: {{count: {count}, min: 1, max: 16, base_port: {base_port}}}
gunicorn: {{workers: {workers}, worker_class: {worker_class}}}
api: {{port: {api_port}}}
paths: {{state_dir: {state_dir / 'state'}, log_dir: {state_dir / 'log'}}}
nginx: {{mode: {nginx_mode}, listen: {nginx_port}}}
"""
    return parse_spec(text, source=f"<bench {name}>", base_dir=REPO)


def instance_command(spec: Spec, index: int, metrics_root: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment of instance `index`, exactly as ultrascaled would start it."""
    port = spec.port(index)
    mdir = metrics_root / str(port)
    mdir.mkdir(parents=True, exist_ok=True)
    return gunicorn_argv(spec, port), instance_env(spec, index, port, str(mdir))


def check_ports(ports: list[int]) -> None:
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise RuntimeError(f"ports already in use (another bench run?): {busy}")


def master_of(port: int) -> psutil.Process | None:
    """The gunicorn master listening on `port`: the listener whose parent is not a listener."""
    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            try:
                p = psutil.Process(c.pid)
                parent = p.parent()
                if parent and "gunicorn" in " ".join(parent.cmdline()):
                    return parent
                return p
            except psutil.Error:
                continue
    return None


class NginxFront:
    """nginx for (b) and (c): the config ultrascaled would write, driven like an operator would."""

    def __init__(self, tracker: Tracker, prefix: Path, listen: int):
        self.tracker = tracker
        self.settings = NginxSettings(mode="managed", prefix=str(prefix), listen=listen)
        self.prefix = Path(prefix)
        self.binary = nginx_binary()

    def _args(self) -> list[str]:
        s = self.settings
        return [self.binary, "-p", str(self.prefix) + "/", "-c", s.conf_path, "-e", s.error_log_path]

    def write_upstream(self, ports: list[int]) -> None:
        Path(self.settings.effective_upstream_file).write_bytes(
            render_upstream(self.settings, [("127.0.0.1", p) for p in ports]))

    def start(self, ports: list[int]) -> None:
        for sub in ("conf", "logs", "temp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        Path(self.settings.conf_path).write_bytes(render_main_conf(self.settings))
        self.write_upstream(ports)
        subprocess.run(self._args(), check=True, env=self.tracker.env(), capture_output=True, timeout=15)
        deadline = time.monotonic() + 10
        while probe(self.settings.listen, "/nginx_status")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx on {self.settings.listen} did not start")
            time.sleep(0.05)

    def set_upstream(self, ports: list[int]) -> None:
        """Rewrite the upstream file and `nginx -s reload` (returns once the signal is sent)."""
        self.write_upstream(ports)
        subprocess.run(self._args() + ["-s", "reload"], check=True, capture_output=True, timeout=15)

    def pid(self) -> int | None:
        try:
            return int(Path(self.settings.pid_path).read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid:  # fast shutdown: the load runs are over when a setup stops
            stop_pid(pid, signal.SIGTERM, timeout=10)


class Setup:
    key = ""
    label = ""
    url = ""

    def __init__(self, tracker: Tracker, run_dir: Path):
        self.tracker = tracker
        # A fresh folder for every start: ultrascaled keeps the last scaled count in its
        # state_dir and would start with it instead of the spec's count.
        n = 1
        while (Path(run_dir) / f"{self.key}-{n}").exists():
            n += 1
        self.dir = Path(run_dir) / f"{self.key}-{n}"
        self.dir.mkdir(parents=True)

    # lifecycle
    def start(self, count: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # fleet
    def ports(self) -> list[int]:
        raise NotImplementedError

    def master_pid(self, port: int) -> int:
        m = master_of(port)
        if not m:
            raise RuntimeError(f"no gunicorn master listens on {port}")
        return m.pid

    def supervisor_pid(self) -> int | None:
        return None

    def check_count(self, count: int) -> None:
        ports = self.ports()
        if len(ports) != count:
            raise RuntimeError(f"{self.key}: asked for {count} instances, got {len(ports)}: {ports}")

    def wait_stable(self, timeout: float = 60.0) -> None:
        for p in self.ports():
            if not wait_ok(p, timeout=timeout):
                raise RuntimeError(f"{self.key}: instance {p} not answering")

    # operations (NotSupported where the setup has no such thing)
    def scale(self, n: int) -> str:
        raise NotSupported

    def restart_all(self) -> str:
        raise NotSupported

    def restart_each(self) -> str:
        raise NotSupported

    def status_argv(self) -> list[str]:
        raise NotSupported


class SyncDirect(Setup):
    """(a) one gunicorn, `--workers 5 --worker-class sync`, no nginx."""
    key, label = "sync", "(a) 1 gunicorn, 5 sync workers, direct"

    def start(self, count: int = 1) -> None:
        base = PORTS["sync"]["base"]
        check_ports([base])
        spec = bench_spec("bench-sync", base, 1, self.dir, workers=5, worker_class="sync",
                          nginx_mode="off", api_port=19599)
        argv, env = instance_command(spec, 0, self.dir / "metrics")
        self.proc = self.tracker.spawn(argv, env=env, cwd=str(REPO), log_path=self.dir / "gunicorn.log")
        self.port = base
        self.url = f"http://127.0.0.1:{base}"
        if not wait_ok(base, timeout=30):
            raise RuntimeError("sync gunicorn did not start; see " + str(self.dir / "gunicorn.log"))

    def ports(self) -> list[int]:
        return [self.port]

    def stop(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGTERM, timeout=35)


class HandWired(Setup):
    """(c) instances started directly, each with setsid, and a static nginx upstream."""
    key, label = "handwired", "(c) hand-wired: setsid instances + static nginx upstream"

    def start(self, count: int = 4) -> None:
        cfg = PORTS["handwired"]
        check_ports([cfg["base"] + i for i in range(count)] + [cfg["nginx"]])
        self.spec = bench_spec("bench-hw", cfg["base"], count, self.dir, nginx_port=cfg["nginx"])
        self.procs = {}
        for i in range(count):
            argv, env = instance_command(self.spec, i, self.dir / "metrics")
            port = self.spec.port(i)
            self.procs[port] = self.tracker.spawn(argv, env=env, cwd=str(REPO),
                                                  log_path=self.dir / f"gunicorn-{port}.log")
        for port in self.procs:
            if not wait_ok(port, timeout=30):
                raise RuntimeError(f"hand-wired instance {port} did not start")
        self.nginx = NginxFront(self.tracker, self.dir / "nginx", cfg["nginx"])
        self.nginx.start(sorted(self.procs))
        self.url = f"http://127.0.0.1:{cfg['nginx']}"

    def ports(self) -> list[int]:
        return sorted(self.procs)

    def stop(self) -> None:
        if getattr(self, "nginx", None):
            self.nginx.stop()
        for p in getattr(self, "procs", {}).values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in getattr(self, "procs", {}).values():
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


SUPERVISORD_HEAD = """\
; Generated by scripts/bench: one program per instance port, supervisord's defaults otherwise.
[unix_http_server]
file={dir}/supervisor.sock

[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
childlogdir={dir}/log
nodaemon=true
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{dir}/supervisor.sock
"""

GROUP = "web"

PROGRAM = """
[program:{name}]
command={command}
directory={directory}
autostart={autostart}
autorestart=true
redirect_stderr=true
stdout_logfile={dir}/log/{name}.log
environment={environment}
"""


def _supervisor_env(env: dict[str, str], base: dict[str, str]) -> str:
    """supervisord's `environment=` value: the keys that differ from its own environment."""
    items = []
    for k, v in sorted(env.items()):
        if base.get(k) != v:
            v = v.replace("%", "%%").replace('"', '\\"')
            items.append(f'{k}="{v}"')
    return ",".join(items)


def render_supervisord_conf(spec: Spec, count: int, max_instances: int, run_dir: Path,
                            base_env: dict[str, str]) -> str:
    """supervisord.conf for `max_instances` programs `i<PORT>`; the first `count` autostart."""
    run_dir = Path(run_dir)
    out = [SUPERVISORD_HEAD.format(dir=run_dir)]
    # One group, as numprocs would make: supervisord then stops the programs in parallel
    # (separate groups are stopped one after another on shutdown).
    names = ",".join(f"i{spec.port(i)}" for i in range(max_instances))
    out.append(f"\n[group:{GROUP}]\nprograms={names}\n")
    for i in range(max_instances):
        argv, env = instance_command(spec, i, run_dir / "metrics")
        out.append(PROGRAM.format(name=f"i{spec.port(i)}", command=shlex.join(argv),
                                  directory=spec.app.directory,
                                  autostart="true" if i < count else "false", dir=run_dir,
                                  environment=_supervisor_env(env, base_env)))
    return "".join(out)


class Supervisord(Setup):
    """(b) supervisord with one program per instance, nginx driven by hand.

    Scaling is what an operator would do: up = `supervisorctl start` the new programs, wait
    until they answer, add them to the upstream, `nginx -s reload`; down = remove them from the
    upstream, reload, wait 1 s, `supervisorctl stop`. supervisord itself has no such command.
    """
    key, label = "supervisord", "(b) supervisord + nginx"

    def start(self, count: int = 4) -> None:
        cfg = PORTS["supervisord"]
        check_ports([cfg["base"] + i for i in range(MAX_INSTANCES)] + [cfg["nginx"]])
        (self.dir / "log").mkdir(exist_ok=True)
        self.spec = bench_spec("bench-sv", cfg["base"], min(count, 16), self.dir, nginx_port=cfg["nginx"])
        self.conf = self.dir / "supervisord.conf"
        base_env = self.tracker.env()
        self.conf.write_text(render_supervisord_conf(self.spec, count, MAX_INSTANCES, self.dir, base_env))
        self.proc = self.tracker.spawn([tool("supervisord"), "-c", str(self.conf)],
                                       env=base_env, cwd=str(self.dir),
                                       log_path=self.dir / "supervisord.out")
        self.running = [self.spec.port(i) for i in range(count)]
        for port in self.running:
            if not wait_ok(port, timeout=30):
                raise RuntimeError(f"supervisord instance {port} did not start")
        self.nginx = NginxFront(self.tracker, self.dir / "nginx", cfg["nginx"])
        self.nginx.start(self.running)
        self.url = f"http://127.0.0.1:{cfg['nginx']}"

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([tool("supervisorctl"), "-c", str(self.conf), *args],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"supervisorctl {' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def status_argv(self) -> list[str]:
        return [tool("supervisorctl"), "-c", str(self.conf), "status"]

    def ports(self) -> list[int]:
        return sorted(self.running)

    def supervisor_pid(self) -> int | None:
        return self.proc.pid

    def master_pid(self, port: int) -> int:
        r = self.ctl("pid", f"{GROUP}:i{port}")
        return int(r.stdout.strip())

    def scale(self, n: int) -> str:
        cur = self.ports()
        want = [self.spec.port(i) for i in range(n)]
        if n > len(cur):
            new = [p for p in want if p not in cur]
            self.ctl("start", *[f"{GROUP}:i{p}" for p in new])
            for p in new:
                wait_ok(p, timeout=30)
            self.nginx.set_upstream(want)
            self.running = want
            return "supervisorctl start, wait for /health, rewrite upstream, nginx -s reload"
        gone = [p for p in cur if p not in want]
        self.nginx.set_upstream(want)
        time.sleep(1.0)
        self.ctl("stop", *[f"{GROUP}:i{p}" for p in gone])
        self.running = want
        return "rewrite upstream, nginx -s reload, sleep 1 s, supervisorctl stop"

    def restart_all(self) -> str:
        self.ctl("restart", "all")
        return "supervisorctl restart all"

    def restart_each(self) -> str:
        for p in self.ports():
            self.ctl("restart", f"{GROUP}:i{p}")
        return f"supervisorctl restart {GROUP}:iPORT, one after another"

    def wait_stable(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.ctl("status", check=False)
            states = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.strip()}
            if all(states.get(f"{GROUP}:i{p}") == "RUNNING" for p in self.ports()):
                break
            time.sleep(0.2)
        super().wait_stable(max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        # nginx first: its idle keep-alive connections would hold each gunicorn's graceful stop
        if getattr(self, "nginx", None):
            self.nginx.stop()
        if getattr(self, "proc", None) and self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGTERM, timeout=40)


class Ultrascaled(Setup):
    """(d) `ultrascaled --spec` with its managed nginx, started by the tests' launcher
    (`support.harness.Daemon`, spec defaults: no test tuning); operations through `ultrascalectl`."""
    key, label = "ultrascaled", "(d) ultrascaled"

    def start(self, count: int = 4) -> None:
        # 16 instance ports (the spec's max), then the API and nginx: free ones, not fixed.
        self.daemon = Daemon(self.dir, {"instances": {"count": count, "min": 1, "max": 16},
                                        "gunicorn": {"workers": 1}},
                             span=18, tuned=False, name=f"bench-{self.key}")
        self.daemon.env = self.tracker.env()
        self.daemon.start(wait=False)
        self.tracker.adopt(self.daemon.proc)
        self.api = self.daemon.api_url
        self.url = f"http://127.0.0.1:{self.daemon.nginx_port}"
        self.wait_stable(60)
        self.check_count(count)

    def fleet(self) -> dict:
        return self.daemon.fleet()

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.daemon.ctl(*args, timeout=300)
        if check and r.returncode != 0:
            raise RuntimeError(f"ultrascalectl {' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def events(self, n: int = 100) -> str:
        return self.ctl("events", "-n", str(n), check=False).stdout

    def status_argv(self) -> list[str]:
        return [tool("ultrascalectl"), "--api", self.api, "status"]

    def wait_stable(self, timeout: float = 60.0) -> None:
        try:
            self.daemon.wait_until(lambda f: f["ready"] == f["desired"] == len(f["instances"]) and all(
                i["serving"] for i in f["instances"]), timeout=timeout, what="fleet ready")
        except AssertionError as exc:
            raise RuntimeError(f"ultrascaled fleet did not become ready; see {self.daemon.log_path}: "
                               f"{str(exc)[:500]}") from None

    def ports(self) -> list[int]:
        return sorted(self.fleet()["ports"])

    def supervisor_pid(self) -> int | None:
        return self.daemon.proc.pid

    def master_pid(self, port: int) -> int:
        for i in self.fleet()["instances"]:
            if i["port"] == port and i["pid"]:
                return int(i["pid"])
        raise RuntimeError(f"ultrascaled reports no pid for {port}")

    def scale(self, n: int) -> str:
        self.ctl("scale", str(n))
        return f"ultrascalectl scale {n}"

    def restart_all(self) -> str:
        self.ctl("restart", "--all")
        return "ultrascalectl restart --all"

    def restart_each(self) -> str:
        for p in self.ports():
            self.ctl("restart", str(p))
        return "ultrascalectl restart PORT, one after another"

    def stop(self) -> None:
        d = getattr(self, "daemon", None)
        if d and d.proc and d.proc.poll() is None:
            stop_pid(d.proc.pid, signal.SIGTERM, timeout=60)


class Before(Ultrascaled):
    """ultrascaled of another git ref: its source exported beside the run, first on PYTHONPATH
    (`scripts/bench --before REF`, `scripts/bench-deploy`): the same run measures both."""
    key, label = "before", "ultrascaled (before)"
    src: Path | None = None

    @classmethod
    def export(cls, ref: str, run_dir: Path) -> None:
        src = run_dir / "before-src"
        src.mkdir()
        data = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(data)).extractall(src, filter="data")
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref],
                                capture_output=True, text=True, check=True).stdout.strip()
        cls.src, cls.label = src, f"ultrascaled before ({ref if ref == commit else f'{ref} {commit}'})"

    def start(self, count: int = 4) -> None:
        orig = self.tracker.env

        def env(base=None):
            e = orig(base)
            e["PYTHONPATH"] = str(self.src) + (":" + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
            return e
        self.tracker.env = env
        try:
            super().start(count)
        finally:
            self.tracker.env = orig


SETUPS = {cls.key: cls for cls in (SyncDirect, Supervisord, HandWired, Ultrascaled, Before)}
