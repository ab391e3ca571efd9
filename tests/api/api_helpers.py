"""A fake fleet implementing FleetControl, and a client for the API app built on it.

The fake records what the handlers asked for, so a test can check that a refused request
changed nothing. Everything runs in-process on aiohttp's test server (milliseconds a test).
"""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from ultrascaled.surface.app import build_app
from ultrascaled.surface.api.auth import Credentials, Limits, Settings, Token
from ultrascaled.core.control import FleetControl, ScaleRefused
from ultrascaled.observe.events import EventLog
from ultrascaled.spec import SpecError

BASE = 18001


class FakeUpstream:
    def status(self) -> dict:
        return {"mode": "off", "running": False}


class FakeFleet:
    """The smallest FleetControl: ports BASE.. for `count` instances, min 1, max 8."""

    def __init__(self, tmp: Path, count: int = 2):
        self.events = EventLog(logger=_Quiet())
        self.upstream = FakeUpstream()
        self.autoscaler: Any = None     # a test sets one (tests/api/test_api_autoscale.py)
        self.traffic: Any = None        # a test sets one (tests/api/test_api_traffic.py)
        self.count = count
        self.counters: dict[str, Any] = {"watchdog_recycles": {}}
        self.shutting_down = False
        self.tmp = tmp
        self.instances: dict[int, object] = {BASE + i: object() for i in range(count)}
        self.calls: list[tuple] = []

    @property
    def wanted(self) -> tuple[int, ...]:
        return tuple(BASE + i for i in range(self.count))

    def snapshot(self) -> dict:
        instances = [{"port": p, "pid": None, "state": "running", "restarts": 0}
                     for p in sorted(self.instances)]
        return {"fleet": "fake", "desired": self.count, "ready": len(self.instances),
                "ports": list(self.wanted), "upstream": [], "memory": {}, "instances": instances}

    def health(self) -> tuple[bool, list[str]]:
        return True, []

    def scale(self, n: int, source: str = "operator") -> str | None:
        if not 1 <= n <= 8:
            raise ScaleRefused("out_of_range", f"instances must be 1..8 (instances.min..max), got {n}")
        self.calls.append(("scale", n))
        self.count = n
        # like the real fleet: an operator's scale pauses the autoscaler, and says so
        if source == "operator" and self.autoscaler is not None:
            return self.autoscaler.manual_scale(n)
        return None

    workers = 1   # the fake's one worker type, `worker` (0..4)

    def processes(self) -> dict:
        web = {"kind": "web", "desired": self.count, "ready": len(self.instances),
               "instances": [{"index": i, "port": p, "pid": None, "state": "running", "uptime": None,
                              "restarts": 0, "rss": None} for i, p in enumerate(sorted(self.instances))]}
        worker = {"kind": "worker", "desired": self.workers, "ready": self.workers,
                  "instances": [{"index": i, "pid": 4000 + i, "state": "running", "uptime": 1.5,
                                 "restarts": 0} for i in range(self.workers)]}
        return {"web": web, "worker": worker}

    def scale_process(self, name: str, n: int, source: str = "operator") -> dict:
        if name == "web":
            previous = self.count
            said = self.scale(n, source)
            return {"process": "web", "desired": n, "previous": previous, **({"autoscale": said} if said else {})}
        if name != "worker":
            raise ScaleRefused("not_found", f"no process type {name!r} (types: web, worker)")
        if not 0 <= n <= 4:
            raise ScaleRefused("out_of_range", f"worker must be 0..4 (processes.worker.min..max), got {n}")
        self.calls.append(("scale_process", name, n))
        previous, self.workers = self.workers, n
        return {"process": name, "desired": n, "previous": previous}

    def restart_process(self, name: str) -> dict:
        if name == "web":
            return {"process": "web", "restarting": self.restart()}
        if name != "worker":
            raise ScaleRefused("not_found", f"no worker type {name!r} (worker types: worker)")
        self.calls.append(("restart_process", name))
        return {"process": name, "restarting": list(range(self.workers))}

    def process_metric_families(self) -> list:
        from ultrascaled.observe.metrics import process_families
        return process_families(self.processes(), {"nightly": {"outcomes": {"succeeded": 3}, "last_success": 1.7e9,
                                                               "last_duration": 2.5, "next_run": 1.7e9 + 86400}})

    job_running = False   # the fake's one job, `nightly` (concurrency: forbid)

    def _job(self) -> dict:
        last = {"run": 3, "pid": 4100, "started": 1_700_000_000.0, "due": 1_700_000_000.0, "why": "schedule",
                "duration": 2.5, "returncode": 0, "outcome": "succeeded", "log": "/tmp/job-nightly.log",
                "log_offset": 120}
        return {"schedule": "30 3 * * *", "every": None, "concurrency": "forbid",
                "next_run": 1_700_086_200.0, "last_run": last, "running": []}

    def jobs_listing(self) -> dict:
        return {"nightly": self._job()}

    def job_runs(self, name: str) -> list:
        if name != "nightly":
            raise ScaleRefused("not_found", f"no job {name!r} (jobs: nightly)")
        return [self._job()["last_run"]]

    def run_job(self, name: str) -> dict:
        if name != "nightly":
            raise ScaleRefused("not_found", f"no job {name!r} (jobs: nightly)")
        if self.job_running:
            raise ScaleRefused("job_running", "nightly: run 4 still going (concurrency: forbid); nothing started")
        self.calls.append(("run_job", name))
        return {"job": name, "run": 4, "action": "start"}

    def restart(self, port: int | None = None) -> list[int]:
        self.calls.append(("restart", port))
        return [port] if port is not None else sorted(self.instances)

    def log_path(self, port: int) -> Path:
        return self.tmp / f"instance-{port}.log"

    def metrics_dirs(self) -> dict[int, str]:
        return {}

    # releases: a deploy of the release named "good" (or of any existing folder) starts a
    # rollout that never ends; anything else is refused like the real fleet would
    rollout: dict | None = None

    async def deploy(self, directory: str | None = None, release: str | None = None,
                     allow_data: bool = False) -> dict:
        if self.rollout is not None:
            raise ScaleRefused("deploy_in_progress", "a deploy is in progress")
        if release is not None and release != "good" or directory is not None and not os.path.isdir(directory):
            raise ScaleRefused("release_not_found", f"no such release or folder: {release or directory!r}")
        self.calls.append(("deploy", directory, release))
        self.rollout = {"kind": "deploy", "release": "good", "from": None, "phase": "canary", "canary": BASE}
        return {"current": None, "previous": None, "rollout": self.rollout}

    def rollback(self) -> dict:
        if self.rollout is not None:
            raise ScaleRefused("deploy_in_progress", "a deploy is in progress")
        raise ScaleRefused("no_rollback_target", "nothing to roll back to")

    def releases(self) -> list[dict]:
        return [{"id": None, "created": None, "current": True, "previous": False, "ports": sorted(self.instances),
                 "path": str(self.tmp)}]


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The app on a test server in its own event loop; `req` answers (status, body, headers)."""

    def __init__(self, fleet: FleetControl, settings: Settings, reload=None, audit=None, alerts=None):
        self.loop = asyncio.new_event_loop()
        self.fleet = fleet
        self.settings = settings
        app = build_app(fleet, settings, reload or no_change, alerts, audit)
        self.client = TestClient(TestServer(app, host="127.0.0.1", port=settings.port), loop=self.loop)
        self.run(self.client.start_server())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def req(self, method: str, path: str, **kw) -> tuple[int, Any, dict]:
        if "json" not in kw and "data" not in kw:
            kw.setdefault("skip_auto_headers", ["Content-Type"])  # no body, no Content-Type (like curl)

        async def go():
            async with self.client.request(method, path, **kw) as r:
                raw = await r.read()
                body: Any = raw
                if r.content_type == "application/json":
                    body = await r.json()
                return r.status, body, dict(r.headers)
        return self.run(go())

    def code(self, method: str, path: str, **kw) -> tuple[int, str | None]:
        status, body, _ = self.req(method, path, **kw)
        return status, body["error"]["code"] if isinstance(body, dict) and "error" in body else None

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.close()


def settings(port: int | None = None, host: str = "127.0.0.1", tokens: tuple[Token, ...] = (),
             metrics_tokens: tuple[Token, ...] = (), tls: bool = False, **limits) -> Settings:
    return Settings(host=host, port=port or free_port(), tls=tls,
                    credentials=Credentials(tokens, metrics_tokens), limits=Limits(**limits))


async def no_change() -> dict:
    return {"changed": [], "restarting": []}


async def refusing_reload():
    raise SpecError(["instances.count (line 3): must be an integer"])


class LiveApi:
    """The API served the daemon's way (ApiServer: connection cap, timeouts, TLS) on a real
    loopback socket, from an event loop in a thread. `call(fn)` runs fn in that loop."""

    def __init__(self, fleet: FleetControl, settings: Settings, ssl_context=None, audit=None):
        import threading
        from ultrascaled.surface.api.server import ApiServer
        self.fleet, self.settings = fleet, settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = build_app(fleet, settings, no_change, None, audit)
        self.server = ApiServer(app, settings, ssl_context)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{settings.port}"

    def call(self, fn, *args, **kw):
        async def go():
            return fn(*args, **kw)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
