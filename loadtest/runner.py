"""Coordinator: spawns worker processes, merges their results, prints progress.

Public API: :class:`Config`, :class:`Result`, :func:`run`, :class:`BackgroundLoad`.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import threading
import time
from array import array
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import Callable, TextIO

from .httpclient import parse_target
from .stats import (ERROR_KINDS, Check, LatencyStats, Tally, Targets, evaluate, percentile,
                    split_proportionally)
from .worker import WorkerSpec, worker_entry

CPU_SATURATION = 0.90  # fraction of one core per worker process that triggers a warning
HOST_CPU_SATURATION = 95.0  # psutil.cpu_percent over the run (all cores) that triggers a warning


class ConfigError(ValueError):
    """A bad setting; ``arg`` names the command-line option."""

    def __init__(self, arg: str, message: str):
        super().__init__(f"argument {arg}: {message}")
        self.arg = arg


def default_procs(users: int) -> int:
    return max(1, min(os.cpu_count() or 1, users))


@dataclass
class Config:
    """One load run. At least one of ``duration`` (seconds) and ``requests`` must be set."""

    url: str
    users: int = 10
    duration: float | None = 10.0
    requests: int | None = None
    think_ms: float = 0.0
    ramp: float = 0.0
    paths: list[tuple[str, float]] | None = None  # None: the URL's own path
    timeout: float = 2.0
    procs: int | None = None  # None: min(cpu cores, users)
    targets: Targets = field(default_factory=Targets)

    def validate(self) -> tuple[str, int, str, str]:
        """Raise ConfigError / LoopbackError; return parse_target(url)."""
        target = parse_target(self.url)
        if not isinstance(self.users, int) or self.users < 1:
            raise ConfigError("-u/--users", f"must be an integer >= 1, got {self.users!r}")
        if self.duration is None and self.requests is None:
            raise ConfigError("--duration/--requests", "at least one bound is required")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise ConfigError("--duration", f"must be > 0 seconds, got {self.duration!r}")
        if self.requests is not None and self.requests < 1:
            raise ConfigError("--requests", f"must be >= 1, got {self.requests!r}")
        if not self.think_ms >= 0:
            raise ConfigError("--think", f"must be >= 0 ms, got {self.think_ms!r}")
        if not self.ramp >= 0:
            raise ConfigError("--ramp", f"must be >= 0 seconds, got {self.ramp!r}")
        if self.duration is not None and self.ramp >= self.duration:
            raise ConfigError("--ramp", f"({self.ramp}s) must be shorter than --duration ({self.duration}s)")
        if not (self.timeout > 0):
            raise ConfigError("--timeout", f"must be > 0 seconds, got {self.timeout!r}")
        if self.procs is not None and (not isinstance(self.procs, int) or self.procs < 1):
            raise ConfigError("--procs", f"must be an integer >= 1, got {self.procs!r}")
        for p, w in self.paths or []:
            if not p.startswith("/"):
                raise ConfigError("--path", f"path must start with '/', got {p!r}")
            if not w > 0:
                raise ConfigError("--path", f"weight must be > 0, got {w!r} for {p!r}")
        for name, value in asdict(self.targets).items():
            if value is not None and not value >= 0:
                raise ConfigError(f"--{name.replace('_', '-').replace('-ms', '').replace('-pct', '')}",
                                  f"must be >= 0, got {value!r}")
        return target


@dataclass
class Result:
    """Merged outcome of a run.

    ``failed`` counts every request that did not end in a complete 2xx/3xx response: any
    other status (4xx, 5xx, 1xx), any transport error and any timeout. ``ok + failed`` is
    every request that was sent; requests still in flight when a stop's drain period ended
    are ``cancelled`` and counted in neither.
    """

    url: str
    users: int
    procs: int
    duration_s: float | None  # configured bound
    requests_limit: int | None
    wall_s: float  # from the common start to the last worker finishing
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    error_counts: dict[str, int] = field(default_factory=dict)
    path_counts: dict[str, int] = field(default_factory=dict)
    latency: LatencyStats = field(default_factory=LatencyStats)  # ms, all requests
    client_cpu_s: float = 0.0  # CPU seconds of all worker processes + the coordinator
    client_cpu_per_proc: list[float] = field(default_factory=list)  # CPU s / wall s per worker
    host_cpu_pct: float | None = None  # psutil.cpu_percent over the run (all cores)
    connects: int = 0
    reconnects: int = 0
    timeline: list[dict] = field(default_factory=list)  # per second: t, requests, errors, rps, p95_ms, p99_ms
    error_samples: list[dict] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def rps(self) -> float:
        return self.total / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def error_rate(self) -> float | None:
        """Fraction of failed requests (0..1), None when nothing was sent."""
        return self.failed / self.total if self.total else None

    @property
    def error_rate_pct(self) -> float | None:
        return None if self.error_rate is None else self.error_rate * 100.0

    @property
    def client_cpu_cores(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status_counts"] = {str(k): v for k, v in sorted(self.status_counts.items())}
        d.update(total=self.total, rps=self.rps, error_rate=self.error_rate,
                 error_rate_pct=self.error_rate_pct, client_cpu_cores=self.client_cpu_cores,
                 passed=self.passed, percentile_method="exact, nearest-rank, over all requests")
        return d

    def summary(self) -> str:
        def ms(v):
            return "n/a" if v is None else f"{v:.1f} ms"

        lat = self.latency
        er = "n/a" if self.error_rate_pct is None else f"{self.error_rate_pct:.3f}%"
        bound = []
        if self.duration_s is not None:
            bound.append(f"{self.duration_s:g}s")
        if self.requests_limit is not None:
            bound.append(f"{self.requests_limit} requests")
        lines = [
            f"Target      {self.url}",
            f"Load        {self.users} users in {self.procs} process(es), bound {' / '.join(bound)}",
            f"Requests    {self.total} in {self.wall_s:.2f}s = {self.rps:.1f} req/s"
            + (f"  ({self.cancelled} cancelled in flight at stop)" if self.cancelled else ""),
            f"OK/failed   {self.ok} ok, {self.failed} failed, error rate {er}",
            f"Latency     p50 {ms(lat.p50)}  p95 {ms(lat.p95)}  p99 {ms(lat.p99)}  max {ms(lat.max)}"
            f"  (mean {ms(lat.mean)}; exact nearest-rank over {lat.count} requests)",
        ]
        if self.status_counts:
            lines.append("Status      " + "  ".join(f"{k}: {v}" for k, v in sorted(self.status_counts.items())))
        if self.error_counts:
            lines.append("Errors      " + "  ".join(f"{k}: {v}" for k, v in sorted(self.error_counts.items())))
        if len(self.path_counts) > 1:
            lines.append("Paths       " + "  ".join(f"{k}: {v}" for k, v in sorted(self.path_counts.items())))
        per = ", ".join(f"{x * 100:.0f}%" for x in self.client_cpu_per_proc)
        host = "" if self.host_cpu_pct is None else f"; host CPU {self.host_cpu_pct:.0f}% of all cores"
        lines.append(f"Client CPU  {self.client_cpu_s:.2f} CPU s = {self.client_cpu_cores:.2f} cores"
                     f" (per worker process: {per or 'n/a'}){host}")
        lines.append(f"Connections {self.connects} opened, {self.reconnects} reconnects after idle close")
        for w in self.warnings:
            lines.append(f"WARNING     {w}")
        if self.checks:
            lines.append("Verdict     " + ("PASS" if self.passed else "FAIL"))
            lines.extend("  " + c.describe() for c in self.checks)
        return "\n".join(lines)


ProgressFn = Callable[[dict], None]


def progress_printer(stream: TextIO = sys.stderr) -> ProgressFn:
    def show(tick: dict) -> None:
        p95 = "   n/a" if tick["p95_ms"] is None else f"{tick['p95_ms']:6.1f}"
        stream.write(f"[{tick['t']:6.1f}s] {tick['rps']:8.1f} req/s  p95(last 1s) {p95} ms  "
                     f"requests {tick['total']}  errors {tick['errors_total']}\n")
        stream.flush()
    return show


def _host_cpu_percent():
    try:
        import psutil
        return psutil.cpu_percent(interval=None)
    except Exception:  # pragma: no cover
        return None


def _coordinate(config: Config, *, stop: threading.Event | None = None,
                progress: ProgressFn | None = None,
                started: threading.Event | None = None,
                live: dict | None = None) -> Result:
    host, port, host_header, url_path = config.validate()
    paths = config.paths or [(url_path, 1.0)]
    procs = min(config.procs or default_procs(config.users), config.users)
    users_per = [len(range(p, config.users, procs)) for p in range(procs)]
    req_per = (split_proportionally(config.requests, users_per) if config.requests is not None
               else [None] * procs)
    ctx = multiprocessing.get_context("spawn")
    workers = []  # (process, connection)
    thread_cpu0 = time.thread_time()
    _host_cpu_percent()
    try:
        for p in range(procs):
            offsets = [config.ramp * i / config.users for i in range(p, config.users, procs)]
            spec = WorkerSpec(host=host, port=port, host_header=host_header, paths=list(paths),
                              start_offsets=offsets, duration=config.duration,
                              max_requests=req_per[p], timeout=config.timeout,
                              think=config.think_ms / 1000.0, seed=p + 1)
            parent_end, child_end = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=worker_entry, args=(spec, child_end), daemon=True,
                               name=f"loadtest-worker-{p}")
            proc.start()
            child_end.close()
            workers.append((proc, parent_end))
        for proc, conn in workers:
            if not conn.poll(60):
                raise RuntimeError(f"load worker {proc.name} did not start within 60 s")
            msg = conn.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"load worker {proc.name} failed to start: {msg}")
        t0 = time.monotonic() + 0.05
        for _, conn in workers:
            conn.send(("go", t0))
        if started is not None:
            started.set()
        return _collect(config, workers, t0, procs, stop, progress, thread_cpu0, live)
    finally:
        for proc, conn in workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


def _collect(config, workers, t0, procs, stop, progress, thread_cpu0, live) -> Result:
    total = Tally()
    lat = array("d")
    samples: list[dict] = []
    timeline: list[dict] = []
    open_conns = {conn: proc for proc, conn in workers}
    done: list[dict] = []
    warnings: list[str] = []
    interval = Tally()
    interval_lat = array("d")
    next_tick = t0 + 1.0
    stop_sent = False
    hard_deadline = (t0 + config.duration + config.timeout + 30.0) if config.duration else None

    while open_conns:
        now = time.monotonic()
        if stop is not None and stop.is_set() and not stop_sent:
            for conn in open_conns:
                try:
                    conn.send(("stop",))
                except OSError:
                    pass
            stop_sent = True
        if hard_deadline is not None and now > hard_deadline:
            warnings.append("workers did not finish in time and were terminated; counts may be short")
            for conn, proc in open_conns.items():
                proc.terminate()
            break
        if now >= next_tick:
            t = next_tick - t0
            n = interval.ok + interval.failed
            tick = {"t": round(t, 3), "requests": n, "errors": interval.failed,
                    "rps": float(n), "p95_ms": None, "p99_ms": None,
                    "total": total.ok + total.failed, "errors_total": total.failed}
            if n:
                ordered = sorted(interval_lat)
                tick["p95_ms"] = percentile(ordered, 95) * 1000.0
                tick["p99_ms"] = percentile(ordered, 99) * 1000.0
            timeline.append({k: tick[k] for k in ("t", "requests", "errors", "rps", "p95_ms", "p99_ms")})
            if progress is not None:
                progress(tick)
            interval, interval_lat = Tally(), array("d")
            next_tick += 1.0
            continue
        wait_for = max(0.0, min(next_tick - now, 0.2))
        for conn in mp_wait(list(open_conns), timeout=wait_for):
            proc = open_conns[conn]
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                warnings.append(f"{proc.name} exited without a final report "
                                f"(exit code {proc.exitcode}); its last second is missing")
                del open_conns[conn]
                continue
            if kind == "crash":
                raise RuntimeError(f"load worker {proc.name} crashed:\n{payload}")
            b = Tally(payload["ok"], payload["failed"], payload["status"], payload["errors"],
                      payload["paths"])
            total.merge(b)
            interval.merge(b)
            lat.extend(payload["lat"])
            interval_lat.extend(payload["lat"])
            samples.extend(payload["samples"])
            if live is not None:
                live.update(ok=total.ok, failed=total.failed)
            if kind == "done":
                done.append(payload)
                del open_conns[conn]
    wall = max((time.monotonic() - t0), 1e-9)
    host_cpu = _host_cpu_percent()
    coord_cpu = time.thread_time() - thread_cpu0
    per_proc = [d["cpu"] / d["wall"] for d in done if d["wall"] > 0]
    for i, ratio in enumerate(per_proc):
        if ratio > CPU_SATURATION:
            warnings.append(
                f"load client near CPU saturation: worker {i} used {ratio * 100:.0f}% of a core "
                f"(> {CPU_SATURATION * 100:.0f}%); latencies may include client queueing - "
                "use more --procs or fewer users per process")
            break
    if host_cpu is not None and host_cpu > HOST_CPU_SATURATION:
        warnings.append(
            f"host CPU was {host_cpu:.0f}% busy over the run: the load client and the server "
            "compete for the same cores, so latencies include CPU contention")
    result = Result(
        url=config.url, users=config.users, procs=procs, duration_s=config.duration,
        requests_limit=config.requests, wall_s=wall, ok=total.ok, failed=total.failed,
        cancelled=sum(d["cancelled"] for d in done),
        status_counts=dict(sorted(total.status_counts.items())),
        error_counts={k: total.error_counts[k] for k in ERROR_KINDS if k in total.error_counts},
        path_counts=dict(sorted(total.path_counts.items())),
        latency=LatencyStats.from_seconds(lat),
        client_cpu_s=sum(d["cpu"] for d in done) + coord_cpu,
        client_cpu_per_proc=per_proc, host_cpu_pct=host_cpu,
        connects=sum(d["connects"] for d in done), reconnects=sum(d["reconnects"] for d in done),
        timeline=timeline, error_samples=sorted(samples, key=lambda s: s["t"])[:50],
        warnings=warnings,
    )
    result.checks = evaluate(config.targets, p95_ms=result.latency.p95, p99_ms=result.latency.p99,
                             error_rate_pct=result.error_rate_pct,
                             rps=result.rps if result.total else None)
    return result


def run(config: Config, *, progress: ProgressFn | None = None,
        stop: threading.Event | None = None) -> Result:
    """Run one bounded load test and block until it is over.

    ``progress`` (optional) is called about once a second with a dict (t, rps, p95_ms, total,
    errors_total, ...); ``stop`` (optional) ends the run early when set. Raises ConfigError or
    LoopbackError for bad settings.
    """
    return _coordinate(config, stop=stop, progress=progress)


class BackgroundLoad:
    """Load in worker subprocesses while the caller does something else.

        bg = BackgroundLoad("http://127.0.0.1:8080/", users=200, duration_limit=120)
        bg.start()            # returns once the workers are sending
        ...                   # scale, deploy, kill things
        result = bg.stop()    # stop sending, let in-flight requests finish, merge
        assert result.failed == 0 and result.ok > 1000

    The load stops by itself after ``duration_limit`` seconds (or ``requests_limit``
    requests); :meth:`stop` then just returns the result. Also a context manager.
    """

    def __init__(self, url: str, users: int = 50, duration_limit: float = 120.0, *,
                 requests_limit: int | None = None, think_ms: float = 0.0, ramp: float = 0.0,
                 paths: list[tuple[str, float]] | None = None, timeout: float = 2.0,
                 procs: int = 1):
        self.config = Config(url=url, users=users, duration=duration_limit,
                             requests=requests_limit, think_ms=think_ms, ramp=ramp, paths=paths,
                             timeout=timeout, procs=procs)
        self.config.validate()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._live: dict = {"ok": 0, "failed": 0}
        self._thread: threading.Thread | None = None
        self._result: Result | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        try:
            self._result = _coordinate(self.config, stop=self._stop, started=self._started,
                                       live=self._live)
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc
        finally:
            self._started.set()

    def start(self, timeout: float = 60.0) -> "BackgroundLoad":
        if self._thread is not None:
            raise RuntimeError("BackgroundLoad already started")
        self._thread = threading.Thread(target=self._main, name="loadtest-background", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            self._stop.set()
            raise RuntimeError("background load did not start in time")
        if self._error is not None:
            raise self._error
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> dict:
        """Live {"ok": n, "failed": n}, updated about once a second."""
        return dict(self._live)

    def wait_for_ok(self, n: int, timeout: float = 30.0) -> bool:
        """Block until at least ``n`` ok requests were reported (True) or timeout (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._live["ok"] >= n:
                return True
            if not self.running:
                break
            time.sleep(0.05)
        return self._live["ok"] >= n

    def stop(self, timeout: float | None = None) -> Result:
        """Stop sending, wait for in-flight requests (up to the request timeout), return the Result."""
        if self._thread is None:
            raise RuntimeError("BackgroundLoad was not started")
        self._stop.set()
        self._thread.join(timeout if timeout is not None else self.config.timeout + 60.0)
        if self._thread.is_alive():
            raise RuntimeError("background load did not stop in time")
        if self._error is not None:
            raise self._error
        return self._result

    def __enter__(self) -> "BackgroundLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._thread is not None and self.running:
            self._stop.set()
            self._thread.join(self.config.timeout + 60.0)


def write_json(dest: str, data) -> None:
    """Write `data` as indented JSON to the file `dest`, or to stdout when `dest` is "-"."""
    text = json.dumps(data, indent=2) + "\n"
    if dest == "-":
        sys.stdout.write(text)
    else:
        with open(dest, "w") as f:
            f.write(text)
