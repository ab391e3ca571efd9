"""The dashboard's memory: the last `dashboard.history_seconds` of the fleet, one point every
`dashboard.sample_interval`, in a ring that never grows past its size.

Each point holds, for the fleet and per instance port, the request rate, the 95th percentile
latency and the share of 5xx answers over the interval, and for the fleet the memory against
its budget, the desired, ready and running instance counts and the autoscaler's target (None
while autoscaling is off).

Traffic comes from a pluggable `TrafficSource` (`core/traffic.py`: `window(port, seconds)`,
port None = the whole fleet). The daemon gives nginx's traffic log (`observe/accesslog.py`,
any app) while it is being read, else :class:`MetricsTraffic`, which reads what `metrics.py`
aggregates: the app's prometheus_client multiprocess files, one folder per instance
(:class:`FirstActive` makes that choice). Any source with `window()` plugs in; one with an
async `refresh()` gets it awaited before each point (off the event loop's thread, if it reads
files).

Pure except :meth:`History.run` (the loop) and :meth:`MetricsTraffic.refresh` (file reads in a
thread); imports neither aiohttp nor psutil.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import math
import time
from typing import Any, Callable, Mapping, Optional

from ultrascaled.core.traffic import TrafficSource, TrafficWindow
from ultrascaled.observe.metric_math import (LATENCY_BUCKET, REQUESTS, Flat, bucket_deltas, delta, flatten,
                                             histogram_quantile)


# ---- the traffic sources ---------------------------------------------------------------------

class MetricsTraffic:
    """Traffic from the instances' prometheus_client folders (what GET /metrics serves).

    `dirs()` gives {port: folder} (called on the event loop); `read_dir(folder)` its metric
    families (blocking: it reads files; `refresh()` calls it in a thread). The last few scrapes
    are kept with their times; `window(port, seconds)` compares the newest scrape with the one
    closest to `seconds` before it. A counter that went down (the instance restarted and its
    folder was emptied) counts its current value, as Prometheus' rate() does."""

    def __init__(self, dirs: Callable[[], Mapping[int, str]], read_dir: Callable[[str], Any],
                 clock: Callable[[], float] = time.monotonic, keep: int = 4):
        self.dirs = dirs
        self.read_dir = read_dir
        self.clock = clock
        self._scrapes: collections.deque[tuple[float, dict[int, Flat]]] = collections.deque(maxlen=keep)

    KEEP = (REQUESTS, LATENCY_BUCKET)   # all a window needs; an app's other series are not kept
    label = "app metrics"

    def _read(self, dirs: dict[int, str]) -> dict[int, Flat]:
        out = {}
        for port, path in dirs.items():
            flat = flatten(self.read_dir(path))
            out[port] = {name: flat[name] for name in self.KEEP if name in flat}
        return out

    async def refresh(self) -> None:
        scrape = await asyncio.to_thread(self._read, dict(self.dirs()))
        self.add(self.clock(), scrape)

    def add(self, now: float, scrape: dict[int, Flat]) -> None:
        self._scrapes.append((now, scrape))

    def window(self, port: int | None, seconds: float) -> TrafficWindow:
        if len(self._scrapes) < 2:
            return TrafficWindow()
        now, cur = self._scrapes[-1]
        then, prev = min(list(self._scrapes)[:-1], key=lambda s: abs((now - s[0]) - seconds))
        ports = sorted(cur) if port is None else [port]
        requests = errors = 0.0
        buckets: dict[float, float] = {}
        for p in ports:
            c, b = cur.get(p, {}), prev.get(p, {})
            requests += delta(b, c, REQUESTS)
            errors += delta(b, c, REQUESTS, lambda lab: lab.get("status") == "5xx")
            bucket_deltas(b, c, LATENCY_BUCKET, into=buckets)
        p95 = histogram_quantile(0.95, buckets) if requests > 0 else None
        return TrafficWindow(requests, errors, p95, now - then)


class FirstActive:
    """nginx's access log (`accesslog.TrafficMonitor`, any app) while it is being read, else the
    app's own metrics: the choice the alerts make. The fallback is refreshed only while it is
    the one in use."""

    def __init__(self, primary: TrafficSource, fallback: TrafficSource):
        self.primary = primary
        self.fallback = fallback

    @property
    def using_primary(self) -> bool:
        return bool(getattr(self.primary, "active", True))

    @property
    def label(self) -> str:
        return "nginx access log" if self.using_primary else getattr(self.fallback, "label", "app metrics")

    async def refresh(self) -> None:
        if not self.using_primary:
            r = getattr(self.fallback, "refresh", None)
            if r is not None:
                await r()

    def window(self, port: int | None, seconds: float) -> TrafficWindow:
        return (self.primary if self.using_primary else self.fallback).window(port, seconds)


# ---- the ring ----------------------------------------------------------------------------------

FLEET_FIELDS = ("rps", "p95", "err", "mem", "budget", "desired", "ready", "instances", "target")
PORT_FIELDS = ("rps", "p95", "err")


def _r(x: Optional[float], digits: int = 4) -> Optional[float]:
    if x is None or isinstance(x, float) and not math.isfinite(x):
        return None
    return round(x, digits)


@dataclasses.dataclass(frozen=True)
class Point:
    t: float                                   # wall clock, seconds
    fleet: tuple                               # FLEET_FIELDS, in order
    ports: tuple[tuple[int, tuple], ...]       # (port, PORT_FIELDS) for every instance present

    def as_json(self) -> dict:
        return {"t": self.t, "fleet": dict(zip(FLEET_FIELDS, self.fleet)),
                "ports": {str(p): list(v) for p, v in self.ports}}


class History:
    """A ring of :class:`Point`s, `ceil(seconds / interval) + 1` at most.

    `snapshot()` returns what GET /fleet returns; `target()` the autoscaler's wanted count, or
    None (autoscaling off, or no decision yet)."""

    def __init__(self, source: TrafficSource, snapshot: Callable[[], Mapping[str, Any]], *,
                 seconds: float = 900, interval: float = 5.0, wall: Callable[[], float] = time.time,
                 target: Callable[[], Optional[int]] = lambda: None):
        self.source = source
        self.snapshot = snapshot
        self.seconds = seconds
        self.interval = interval
        self.wall = wall
        self.target = target
        self.size = int(math.ceil(seconds / interval)) + 1
        self.points: collections.deque[Point] = collections.deque(maxlen=self.size)
        self.errors = 0
        self.last_error = ""

    def record(self) -> Point:
        """Take one point now (after the source was refreshed)."""
        snap = self.snapshot()
        insts = snap.get("instances") or []
        w = self.source.window(None, self.interval)
        mem = snap.get("memory") or {}
        fleet = (_r(_rate(w, self.interval), 3), _r(w.p95), _r(w.rate_5xx),
                 mem.get("total_rss_bytes"), mem.get("budget_bytes"), snap.get("desired"),
                 snap.get("ready"), sum(1 for i in insts if i.get("pid")), self.target())
        ports = []
        for inst in insts:
            port = inst.get("port")
            pw = self.source.window(port, self.interval)
            ports.append((port, (_r(_rate(pw, self.interval), 3), _r(pw.p95), _r(pw.rate_5xx))))
        point = Point(round(self.wall(), 3), fleet, tuple(ports))
        self.points.append(point)
        return point

    def since(self, t: float = 0.0) -> list[dict]:
        return [p.as_json() for p in self.points if p.t > t]

    @property
    def source_label(self) -> str:
        """Where the request figures come from, for the page to say."""
        return getattr(self.source, "label", type(self.source).__name__)

    async def tick(self) -> Point:
        refresh = getattr(self.source, "refresh", None)
        if refresh is not None:
            r = refresh()
            if inspect.isawaitable(r):
                await r
        return self.record()

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """The background loop (run guarded by the daemon's TaskGuard)."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad read must not end the charts
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            beat()
            await asyncio.sleep(self.interval)


def _rate(w: TrafficWindow, interval: float) -> Optional[float]:
    seconds = w.seconds or interval
    return w.requests / seconds if seconds > 0 else None
