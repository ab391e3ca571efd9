"""Per-instance traffic figures measured at nginx, for any app: requests, 5xx and latency.

The managed nginx writes one JSON line per request to its *traffic log* (``log_format ...
escape=json``, rendered by effects/nginx_render.py's ``traffic_log_format``), with the upstream
address, status and response time of every try nginx made. The daemon tails that file (:class:`LogTail`), parses each line
(:func:`parse_line`) and folds it into bounded per-port windows (:class:`TrafficStore`). What
the canary, the alerts, the dashboard and the autoscaler read is :class:`TrafficSource`:
``window(port, seconds)`` (``port=None`` for the whole fleet) gives a :class:`TrafficWindow`
(both from ``core/traffic.py``, the one traffic type).

Attribution. ``$upstream_addr``, ``$upstream_status`` and ``$upstream_response_time`` list one
entry per try, separated by ``", "`` (and ``" : "`` across an internal redirect): a request
nginx passed from 8001 (connection refused, 502) to 8002 (200) counts one 5xx try for 8001
and one 2xx for 8002. The fleet window counts *client requests* (one per line) by the status
the client got (``$status``), so a 503 nginx answered itself with no instance ready counts
there; its latency is the time spent in the upstreams (the tries' times summed), and a line
without any upstream time counts in requests but not in the latency figures.

Memory. Each port keeps a ring of ``SLOTS`` slots of ``window / SLOTS`` seconds; a slot is one
``array('I')`` of ``2 + len(BOUNDS) + 1`` counters (requests, 5xx, latency histogram), 288
bytes, made only when the slot saw a request. So the store holds at most
``(ports + 1) × SLOTS × 288`` bytes whatever the request rate (16 instances: 1.5 MB; the
largest fleet, 256: 22 MB), plus the cumulative counters for ``/metrics`` (one short list per
port). Ports the fleet no longer runs are forgotten (:meth:`TrafficStore.keep`); lines for a
port outside the fleet's range are counted (``foreign``) and dropped.

Reading. :meth:`LogTail.read` is bounded per call (``budget`` bytes), plain blocking file
calls meant for a worker thread; it follows rotation by rename (it drains the old file, then
switches, and keeps reading the old one for ``ROTATED_GRACE`` seconds and as long as it
grows, for lines nginx's workers wrote before they reopened), truncation in place (``copytruncate``), a torn last line
(kept until its newline arrives), a huge line (dropped past ``max_line`` bytes, with memory
bounded by it), a missing file, and a reader that fell behind (it skips ahead, counting the
bytes skipped). p95 is interpolated inside histogram buckets (Prometheus' method); the
buckets are at most 1.5 times apart, so it is within that bucket's width.

Pure except :class:`LogTail` (file reads) and :class:`TrafficMonitor` (the loop). Imports
prometheus_client's metric families only, when asked for them.

Written here rather than taken from a library: the Python tailers (pygtail, tailer) read
unbounded lines with no byte budget per call, and after a rename they lose what nginx's
workers still write to the rotated file; prometheus_client's histograms are cumulative, with
no sliding window to compare the last minute of one instance with another's.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import stat
import threading
import time
from array import array
from bisect import bisect_left
from typing import Any, Awaitable, Callable, Iterable, NamedTuple, Optional

from ultrascaled.core.routes import normalise
from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.effects import logfiles


# ---- parsing (pure) -----------------------------------------------------------------------

class Try(NamedTuple):
    port: Optional[int]        # None: not a host:port (a unix socket, an upstream group name)
    status: Optional[int]      # None: "-" (nginx got no status)
    seconds: Optional[float]   # None: "-"


class Line(NamedTuple):
    t: float                   # Unix time the request ended ($msec)
    status: int                # what the client got
    tries: tuple[Try, ...]     # () when nginx answered itself or the lists disagree
    upstream_seconds: Optional[float]   # the tries' times summed; None without any
    request_seconds: float
    route: Optional[str] = None         # core/routes.py's name of the request ("GET /polls/:id/")


_SPLIT = re.compile(r", | : ")
_TORN = b'{"t":'
MAX_STATUS = 999


def _num(v: Any) -> Optional[float]:
    if v.__class__ is float:
        return v if 0 <= v < math.inf else None
    if v.__class__ is int:
        return float(v) if v >= 0 else None
    return None


def _items(v: Any) -> Optional[list[str]]:
    if v.__class__ is not str:
        return None
    if v == "" or v == "-":
        return []
    if "," in v or " : " in v:
        return _SPLIT.split(v)
    return [v]


_MISS = object()
_PORTS: dict[str, Optional[int]] = {}      # a fleet has few addresses: parse each once
_STATUSES: dict[str, Optional[int]] = {}
_ROUTES: dict[tuple, Optional[str]] = {}   # (method, path) -> route; cleared when full
_CACHE_MAX = 4096


def _route(method: Any, path: Any) -> Optional[str]:
    if path.__class__ is not str or method.__class__ is not str:
        return None
    key = (method, path)
    r = _ROUTES.get(key, _MISS)
    if r is _MISS:
        r = normalise(method, path)
        if len(_ROUTES) >= _CACHE_MAX:
            _ROUTES.clear()
        _ROUTES[key] = r
    return r  # type: ignore[return-value]


def _port(addr: str) -> Optional[int]:
    p = _PORTS.get(addr, _MISS)
    if p is _MISS:
        host, sep, port = addr.rpartition(":")
        p = None
        if sep and host and port.isdigit() and len(port) <= 5 and not host.startswith("unix"):
            p = int(port) if 0 < int(port) < 65536 else None
        if len(_PORTS) < _CACHE_MAX:
            _PORTS[addr] = p
    return p  # type: ignore[return-value]


def _status(s: str) -> Optional[int]:
    v = _STATUSES.get(s, _MISS)
    if v is _MISS:
        v = int(s) if s.isdigit() and len(s) <= 3 else None
        if len(_STATUSES) < _CACHE_MAX:
            _STATUSES[s] = v
    return v  # type: ignore[return-value]


def _seconds(s: str) -> Optional[float]:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if 0 <= v < math.inf else None


def parse_line(raw: bytes) -> Optional[Line]:
    """One log line, or None when it is not one of ours (never raises). A line whose start was
    torn (a partial write on a full disk, then the next line) is read from its last ``{"t":``."""
    at = raw.rfind(_TORN)
    if at < 0:
        return None
    try:
        d = json.loads(raw[at:] if at else raw)
    except (ValueError, RecursionError):
        return None
    if d.__class__ is not dict:
        return None
    t, status, rt = _num(d.get("t")), d.get("s"), _num(d.get("rt"))
    if t is None or rt is None or status.__class__ is not int or not 0 <= status <= MAX_STATUS:
        return None
    addrs, statuses, times = _items(d.get("a")), _items(d.get("u")), _items(d.get("ut"))
    if addrs is None or statuses is None or times is None:
        return None
    route = _route(d.get("m"), d.get("p"))
    if len(addrs) == 1 and len(statuses) == 1 and len(times) == 1:   # one try: most lines
        tr = Try(_port(addrs[0]), _status(statuses[0]), _seconds(times[0]))
        return Line(t, status, (tr,), tr.seconds, rt, route)
    if not addrs:
        return Line(t, status, (), _sum_seconds(times), rt, route)
    # a lone "-" is one try without a status or a time, not an empty list
    statuses = statuses or ["-"]
    times = times or ["-"]
    tries: tuple[Try, ...] = ()
    if len(addrs) == len(statuses) == len(times):
        tries = tuple(Try(_port(a), _status(s), _seconds(x)) for a, s, x in zip(addrs, statuses, times))
        spent = [tr.seconds for tr in tries if tr.seconds is not None]
        return Line(t, status, tries, sum(spent) if spent else None, rt, route)
    return Line(t, status, tries, _sum_seconds(times), rt, route)


def _sum_seconds(times: list[str]) -> Optional[float]:
    spent = [x for x in map(_seconds, times) if x is not None]
    return sum(spent) if spent else None


# ---- windows (pure, locked for the reader thread) ------------------------------------------

# Latency bucket upper bounds, seconds: 9 per decade from 1 ms to 10 s, then to 60 s; each at
# most 1.5 times the one before. EXPORT_BOUNDS (the /metrics histogram) is a subset.
BOUNDS: tuple[float, ...] = tuple(
    round(m * 10.0 ** e, 6) for e in (-3, -2, -1, 0) for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5)
) + (10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0)
EXPORT_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                    30.0, 60.0)
_EXPORT_AT = tuple(BOUNDS.index(b) for b in EXPORT_BOUNDS)
NB = len(BOUNDS) + 1            # + the bucket past the last bound
SLOTS = 300
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


def bucket(seconds: float) -> int:
    return bisect_left(BOUNDS, seconds)


def status_class(status: Optional[int]) -> int:
    """Index into CLASSES."""
    return status // 100 - 1 if status is not None and 100 <= status <= 599 else 5


def quantile(q: float, counts: Iterable[int]) -> Optional[float]:
    """The q-quantile of a latency histogram (per-bucket counts over BOUNDS, plus overflow),
    interpolated linearly inside its bucket; past the last bound: that bound."""
    counts = list(counts)
    total = sum(counts)
    if total <= 0:
        return None
    rank, below = q * total, 0
    for i, c in enumerate(counts):
        if c and below + c >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return lower + (BOUNDS[i] - lower) * max(0.0, rank - below) / c
        below += c
    return BOUNDS[-1]


class _Ring:
    """SLOTS slots of ``width`` seconds; slot k holds Unix times [k*width, (k+1)*width)."""
    __slots__ = ("ids", "data")

    def __init__(self) -> None:
        self.ids = [-1] * SLOTS
        self.data: list[Optional[array]] = [None] * SLOTS

    def slot(self, sid: int) -> array:
        i = sid % SLOTS
        if self.ids[i] != sid:
            self.ids[i] = sid
            self.data[i] = array("I", bytes(4 * (2 + NB)))
        return self.data[i]  # type: ignore[return-value]

    def add_to(self, first: int, last: int, acc: list[int]) -> None:
        """Add slots first..last into ``acc`` = [requests, 5xx, histogram...]."""
        for i, sid in enumerate(self.ids):
            if first <= sid <= last:
                d = self.data[i]
                for k in range(2 + NB):
                    acc[k] += d[k]


def _window(acc: list[int], seconds: float) -> TrafficWindow:
    req, err = acc[0], acc[1]
    if not req:
        return TrafficWindow(seconds=seconds)
    return TrafficWindow(req, err, quantile(0.95, acc[2:]), seconds)


class _Totals:
    """Cumulative figures of one port for /metrics: tries by status class, latency buckets."""
    __slots__ = ("classes", "hist", "sum")

    def __init__(self) -> None:
        self.classes = [0] * len(CLASSES)
        self.hist = [0] * NB
        self.sum = 0.0


class TrafficStore:
    """Bounded per-port windows and cumulative counters. ``add`` may run in a worker thread
    while the event loop reads ``window``: one lock, held for a batch."""

    def __init__(self, window: float = 300.0, clock: Callable[[], float] = time.time,
                 allowed: Optional[Callable[[int], bool]] = None):
        self.span = float(window)
        self.width = self.span / SLOTS
        self.clock = clock
        self.allowed = allowed or (lambda port: True)
        self._lock = threading.Lock()
        self._ports: dict[int, _Ring] = {}
        self._fleet = _Ring()
        self._totals: dict[int, _Totals] = {}
        self.fleet_classes = [0] * len(CLASSES)
        # Per route, cumulative: {(port, or None for the fleet's client requests, route):
        # [requests, 5xx]} (readers take differences, as with /metrics' counters), and each
        # route's last slot: at most MAX_ROUTES names seen within the window (then OTHER_ROUTES),
        # so memory is bounded by MAX_ROUTES x (ports + 1) cells whatever the paths clients send.
        self._route_totals: dict[tuple[Optional[int], str], list[int]] = {}
        self._route_last: dict[str, int] = {}
        self.lines = self.foreign = self.late = 0
        # Unix time up to which every line has been added (the monitor sets it after each
        # read): windows then end with the last slot complete before it, so a window is never
        # cut short by lines nginx wrote but the reader has not read yet. None: up to the clock.
        self.until: Optional[float] = None

    FUTURE = 60.0       # seconds: a line further ahead of the clock would overwrite a live slot

    def add(self, lines: Iterable[Line]) -> None:
        now = self.clock()
        oldest, newest = (now - self.span) / self.width, (now + self.FUTURE) / self.width
        with self._lock:
            for ln in lines:
                self.lines += 1
                sid = int(ln.t // self.width)
                c = status_class(ln.status)
                self.fleet_classes[c] += 1
                recent = oldest <= sid <= newest
                for tr in ln.tries:
                    self._add_try(tr, sid, recent)
                if not recent:
                    self.late += 1      # outside the window: counted in the totals only
                    continue
                d = self._fleet.slot(sid)
                d[0] += 1
                if c == 4:
                    d[1] += 1
                if ln.upstream_seconds is not None:
                    d[2 + bucket(ln.upstream_seconds)] += 1
                if ln.route is not None:
                    self._add_route(ln, sid, c, int(oldest))

    MAX_ROUTES = 256
    OTHER_ROUTES = "(other routes)"

    def _add_route(self, ln: Line, sid: int, c: int, oldest: int) -> None:
        route = ln.route
        last = self._route_last
        if route not in last and len(last) >= self.MAX_ROUTES:
            gone = {r for r, at in last.items() if at < oldest and r != self.OTHER_ROUTES}
            for r in gone:
                del last[r]
            for key in [k for k in self._route_totals if k[1] in gone]:
                del self._route_totals[key]
            if len(last) >= self.MAX_ROUTES:
                route = self.OTHER_ROUTES
        last[route] = sid  # type: ignore[index]
        totals = self._route_totals
        for port, bad in ((None, c == 4), *((tr.port, status_class(tr.status) == 4) for tr in ln.tries)):
            if port is not None and not self.allowed(port):
                continue
            cell = totals.get((port, route))  # type: ignore[arg-type]
            if cell is None:
                cell = totals[(port, route)] = [0, 0]  # type: ignore[index]
            cell[0] += 1
            if bad:
                cell[1] += 1

    def route_totals(self, ports: Iterable[Optional[int]]) -> dict[str, tuple[int, int]]:
        """Per route, cumulative (requests, 5xx) of these ports together (tries; ``None``: the
        fleet's client requests). The figures of a span are the difference of two readings
        (``core/routes.py``'s :func:`delta`)."""
        want = set(ports)
        out: dict[str, list[int]] = {}
        with self._lock:
            for (port, route), (n, bad) in self._route_totals.items():
                if port in want:
                    acc = out.setdefault(route, [0, 0])
                    acc[0] += n
                    acc[1] += bad
        return {r: (n, bad) for r, (n, bad) in out.items()}

    def _span(self, seconds: float) -> tuple[int, int]:
        until = self.until
        last = int(self.clock() // self.width) if until is None else int(until // self.width) - 1
        n = max(1, min(SLOTS, round(seconds / self.width)))
        return last - n + 1, last

    def _add_try(self, tr: Try, sid: int, recent: bool) -> None:
        port = tr.port
        if port is None or not self.allowed(port):
            self.foreign += 1
            return
        tot = self._totals.get(port)
        if tot is None:
            tot = self._totals[port] = _Totals()
        c = status_class(tr.status)
        tot.classes[c] += 1
        b = None if tr.seconds is None else bucket(tr.seconds)
        if b is not None:
            tot.hist[b] += 1
            tot.sum += tr.seconds  # type: ignore[operator]
        if not recent:
            return
        ring = self._ports.get(port)
        if ring is None:
            ring = self._ports[port] = _Ring()
        d = ring.slot(sid)
        d[0] += 1
        if c == 4:
            d[1] += 1
        if b is not None:
            d[2 + b] += 1

    def window(self, port: Optional[int], seconds: float) -> TrafficWindow:
        """The figures of the last ``seconds`` (cut to the store's span; at least one slot)."""
        return self.window_of([port], seconds)

    def window_of(self, ports: Iterable[Optional[int]], seconds: float) -> TrafficWindow:
        """The figures of several instances together, their latency histograms merged (a p95
        cannot be made from p95s): e.g. the instances a canary is compared with."""
        first, last = self._span(seconds)
        acc = [0] * (2 + NB)
        with self._lock:
            for port in set(ports):
                ring = self._fleet if port is None else self._ports.get(port)
                if ring is not None:
                    ring.add_to(first, last, acc)
        return _window(acc, (last - first + 1) * self.width)

    def keep(self, ports: Iterable[int]) -> None:
        """Forget every port not in ``ports`` (instances that left the fleet)."""
        keep = set(ports)
        with self._lock:
            for k in [k for k in self._route_totals if k[0] is not None and k[0] not in keep]:
                del self._route_totals[k]
            for p in [p for p in self._ports if p not in keep]:
                del self._ports[p]
            for p in [p for p in self._totals if p not in keep]:
                del self._totals[p]

    def ports(self) -> list[int]:
        with self._lock:
            return sorted(set(self._ports) | set(self._totals))

    def families(self) -> list:
        """/metrics: tries per instance by status class, their response-time histogram, and
        client requests by status class."""
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
        req = CounterMetricFamily("ultrascale_upstream_requests",
                                  "Tries nginx sent to the instance, by the instance's status class "
                                  "(other: no status, e.g. the connection failed)", labels=["port", "status"])
        lat = HistogramMetricFamily("ultrascale_upstream_response_seconds",
                                    "Instance response time per try as nginx measured it "
                                    "($upstream_response_time)", labels=["port"])
        fleet = CounterMetricFamily("ultrascale_nginx_requests",
                                    "Client requests nginx answered, by the status class the client got",
                                    labels=["status"])
        with self._lock:
            for port in sorted(self._totals):
                tot = self._totals[port]
                for name, n in zip(CLASSES, tot.classes):
                    req.add_metric([str(port), name], n)
                cum, at, buckets = 0, 0, []
                for idx, bound in zip(_EXPORT_AT, EXPORT_BOUNDS):
                    while at <= idx:
                        cum += tot.hist[at]
                        at += 1
                    buckets.append((_le(bound), cum))
                total = sum(tot.hist)
                buckets.append(("+Inf", total))
                lat.add_metric([str(port)], buckets, tot.sum)
            for name, n in zip(CLASSES, self.fleet_classes):
                fleet.add_metric([name], n)
        return [req, lat, fleet]


def _le(b: float) -> str:
    return repr(float(b))


# ---- reading the file (blocking; run in a worker thread) ----------------------------------

class LogTail:
    """Reads new complete lines of ``path``, at most ``budget`` bytes per call. See the module
    docstring for what it survives. Counters: ``oversized`` lines dropped, ``torn`` partial
    lines dropped (end of a rotated or truncated file), ``skipped`` bytes jumped over when
    behind, ``rotations``, ``truncations``."""

    ROTATED_GRACE = 5.0      # seconds the rotated file is still read after the switch
    READ = 1 << 20

    def __init__(self, path: str, *, max_line: int = 16384, backlog: int = 1 << 20,
                 max_lag: int = 64 << 20, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.max_line = max_line
        self.backlog = backlog      # on the first open, read at most this much of the history
        self.max_lag = max_lag      # further behind than this: skip ahead
        self.clock = clock
        self._fd: Optional[int] = None
        self._id: Optional[tuple[int, int]] = None
        self._pos = 0
        self._partial = bytearray()
        self._discard = False       # drop bytes up to the next newline
        self._old: Optional[tuple[int, int, float, bytearray, bool]] = None  # fd, pos, until, partial, discard
        self._opened_once = False
        self.oversized = self.torn = self.skipped = self.rotations = self.truncations = 0
        self.lag = 0
        self.size = 0               # of the file now at `path` (what rotation looks at)
        self.old_growing = False    # the rotated file still grows after the grace: no reopen
        self.error = ""

    @property
    def rotating(self) -> bool:
        """A rotated file is still being read (nginx may still write to it)."""
        return self._old is not None

    def close(self) -> None:
        for fd in (self._fd, self._old[0] if self._old else None):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd, self._old = None, None

    def pending(self) -> bool:
        """Is there anything to do (cheap: two stat calls, no read)? Lets the loop skip the
        worker thread while nginx is idle."""
        if self._fd is None or self._old is not None:
            return True
        try:
            st = os.stat(self.path)
            size = os.fstat(self._fd).st_size
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._id or size != self._pos

    def _open(self) -> bool:
        try:
            # O_NONBLOCK: a FIFO put at the path must not hang the reader (it is refused below)
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self.error = f"{self.path}: not a regular file"
            return False
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        self._partial, self._discard, self.error = bytearray(), False, ""
        self._pos = 0
        if not self._opened_once and st.st_size > self.backlog:
            # from the newline before the backlog: the first (partial) line is dropped
            self._pos, self._discard = st.st_size - self.backlog - 1, True
        self._opened_once = True
        return True

    def read(self, budget: int = 4 << 20) -> list[bytes]:
        lines: list[bytes] = []
        budget = self._read_old(budget, lines)
        if self._fd is None and not self._open():
            self.lag = self.size = 0
            return lines
        try:
            now = os.stat(self.path)
            now_id: Optional[tuple[int, int]] = (now.st_dev, now.st_ino)
            self.size = now.st_size
        except OSError:
            now_id = None           # renamed away, not yet reopened: keep following the old inode
            self.size = 0
        size = os.fstat(self._fd).st_size  # type: ignore[arg-type]
        if size < self._pos:         # truncated in place
            self.truncations += 1
            self._drop_partial()
            self._pos = 0
        if size - self._pos > self.max_lag:
            skip_to = size - budget
            self.skipped += skip_to - self._pos
            self._pos, self._discard = skip_to, True
            self._partial = bytearray()
        self._pos, budget = self._consume(self._fd, self._pos, size, budget, lines, self)  # type: ignore[arg-type]
        if now_id is not None and now_id != self._id:
            # Rotated: a new file is at the path. Keep the old one for stragglers, switch now.
            self.rotations += 1
            if self._old is not None:
                os.close(self._old[0])
            self._old = (self._fd, self._pos, self.clock() + self.ROTATED_GRACE,  # type: ignore[arg-type]
                         self._partial, self._discard)
            self._fd = None
            if self._open():
                size = os.fstat(self._fd).st_size  # type: ignore[arg-type]
                self._pos, budget = self._consume(self._fd, 0, size, budget, lines, self)  # type: ignore[arg-type]
        cur = os.fstat(self._fd).st_size if self._fd is not None else 0
        self.lag = max(0, cur - self._pos)
        if self._fd is not None:
            self.error = ""
        return lines

    def _drop_partial(self) -> None:
        if self._partial:
            self.torn += 1
        self._partial = bytearray()
        self._discard = False

    def _read_old(self, budget: int, lines: list[bytes]) -> int:
        if self._old is None:
            self.old_growing = False
            return budget
        fd, pos, until, partial, discard = self._old
        size = os.fstat(fd).st_size
        holder = _Holder(partial, discard)
        start = pos
        pos, budget = self._consume(fd, pos, size, budget, lines, holder)
        # Let the rotated file go once the grace is over and nobody writes to it any more: an
        # nginx worker that could not reopen the new file goes on writing to this one.
        self.old_growing = self.clock() >= until and pos > start
        if self.clock() >= until and pos >= size and pos == start:
            if holder._partial:
                self.torn += 1
            os.close(fd)
            self._old = None
        else:
            self._old = (fd, pos, until, holder._partial, holder._discard)
        return budget

    def _consume(self, fd: int, pos: int, size: int, budget: int, lines: list[bytes],
                 st: Any) -> tuple[int, int]:
        """Read [pos, size) up to ``budget`` bytes into complete lines; ``st`` holds the
        partial line and the discard flag of this file."""
        while pos < size and budget > 0:
            data = os.pread(fd, min(self.READ, size - pos, budget), pos)
            if not data:
                break
            pos += len(data)
            budget -= len(data)
            parts = data.split(b"\n")
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                if st._discard:
                    if not last:
                        st._discard = False  # the newline ends the dropped line
                    continue
                if last:
                    st._partial += part
                    if len(st._partial) > self.max_line:
                        self.oversized += 1
                        st._partial = bytearray()
                        st._discard = True
                    continue
                if st._partial:
                    part = bytes(st._partial) + part
                    st._partial = bytearray()
                if len(part) > self.max_line:
                    self.oversized += 1
                elif part:
                    lines.append(part)
        return pos, budget


class _Holder:
    __slots__ = ("_partial", "_discard")

    def __init__(self, partial: bytearray, discard: bool):
        self._partial, self._discard = partial, discard


# ---- the loop the daemon runs ------------------------------------------------------------

def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class TrafficMonitor:
    """The daemon's :class:`TrafficSource`: every ``interval`` seconds, reads the new lines of
    the traffic log in a worker thread (at most ``budget`` bytes), folds them into the store,
    forgets ports that left, and rotates the file past ``max_bytes`` (rename, then
    ``reopen()``: nginx's USR1)."""

    WRITE_DELAY = 0.1    # seconds between nginx taking $msec and the line being in the file

    def __init__(self, path: str, *, window: float = 300.0, ports: Callable[[], Iterable[int]],
                 serving: Optional[Callable[[], Iterable[int]]] = None,
                 allowed: Optional[Callable[[int], bool]] = None, interval: float = 1.0,
                 budget: int = 4 << 20, max_bytes: int = 0, backups: int = 5,
                 reopen: Optional[Callable[[], Awaitable[bool]]] = None,
                 emit: Callable[..., Any] = lambda *a, **k: None,
                 clock: Callable[[], float] = time.time, companions: tuple[str, ...] = ()):
        self.path = path
        # nginx's other logs, rotated by the same rule and the same reopen (the managed nginx's
        # error.log; the tries of closed ports of the static upstream are kept out of it by
        # nginx.proxy_error_log_level, unless set to error or below)
        self.companions = companions
        self.store = TrafficStore(window, clock=clock, allowed=allowed)
        self.tail = LogTail(path)
        self.ports = ports              # the fleet's instances: figures of other ports are forgotten
        self.serving = serving or ports  # the instances the alerts judge (those meant to serve)
        self.interval = interval
        self.budget = budget
        self.max_bytes = max_bytes
        self.backups = backups
        self.reopen = reopen
        self.emit = emit
        self.malformed = 0
        self.read_seconds = 0.0
        self._reported = ""
        self._reopen_failed = False

    @property
    def active(self) -> bool:
        """The log is being read (False while it is missing or unreadable: the alerts then
        judge the app's own metrics, if it writes any)."""
        return not self.tail.error

    def window(self, port: Optional[int], seconds: float) -> TrafficWindow:
        return self.store.window(port, seconds)

    def window_of(self, ports: Iterable[Optional[int]], seconds: float) -> TrafficWindow:
        """Several instances together (histograms merged): see TrafficStore.window_of."""
        return self.store.window_of(ports, seconds)

    def route_totals(self, ports: Iterable[Optional[int]]) -> dict[str, tuple[int, int]]:
        return self.store.route_totals(ports)

    def poll(self) -> int:
        """One bounded read and fold (blocking: run it in a thread). Returns lines read."""
        t0 = time.perf_counter()
        started = self.store.clock() - self.WRITE_DELAY
        try:
            raw = self.tail.read(self.budget)
        except OSError as exc:      # an I/O error: reported, and tried again at the next tick
            self.tail.error = f"{self.path}: {exc.strerror or exc}"
            return 0
        parsed = []
        for r in raw:
            ln = parse_line(r)
            if ln is None:
                self.malformed += 1
            else:
                parsed.append(ln)
        self.store.add(parsed)
        if self.tail.lag and parsed:          # behind: the windows end where the reading is
            self.store.until = max(self.store.until or 0.0, min(parsed[-1].t, started))
        else:   # everything written before the read is in (or nothing comes: windows age out)
            self.store.until = started
        self.read_seconds += time.perf_counter() - t0
        return len(raw)

    async def tick(self) -> None:
        if self.tail.pending():
            await asyncio.to_thread(self.poll)
        else:
            self.store.until = self.store.clock() - self.WRITE_DELAY
        self.store.keep(self.ports())
        if self.tail.error != self._reported:
            self._reported = self.tail.error
            if self.tail.error:
                self.emit("traffic.log_unreadable", level="warning", path=self.path, error=self.tail.error)
        if not self.tail.rotating:
            self._reopen_failed = False
        elif self.tail.old_growing and not self._reopen_failed:
            self._reopen_failed = True
            self.emit("traffic.log_reopen_failed", level="error", path=self.path,
                      error="nginx still writes to the rotated file: its workers could not reopen "
                            f"{self.path} (see nginx's error.log; can nginx's worker user reach that "
                            "folder?); rotation is held until they do")
        if self.max_bytes and self.reopen is not None and self.tail.size >= self.max_bytes \
                and not self.tail.rotating:
            # one rotation at a time: the next waits until nginx has let go of the last one
            await self.rotate()
        if self.max_bytes and self.reopen is not None and self.companions:
            await self._rotate_companions()

    async def _rotate_companions(self) -> None:
        big = [p for p in self.companions if _size(p) >= self.max_bytes]
        if not big:
            return
        try:
            for p in big:
                await asyncio.to_thread(logfiles.shift, p, self.backups)
        except OSError as exc:
            self.emit("nginx.log_rotate_failed", level="error", path=p, error=str(exc))
            return
        ok = await self.reopen()  # type: ignore[misc]
        self.emit("nginx.log_rotated", paths=big, reopened=ok)

    async def rotate(self) -> None:
        try:
            await asyncio.to_thread(logfiles.shift, self.path, self.backups)
        except OSError as exc:
            self.emit("traffic.log_rotate_failed", level="error", path=self.path, error=str(exc))
            return
        ok = await self.reopen()  # type: ignore[misc]
        self.tail.size = 0
        self.emit("traffic.log_rotated", path=self.path, reopened=ok)

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        while True:
            await self.tick()
            beat()
            await asyncio.sleep(self.interval)

    def families(self) -> list:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
        fams = self.store.families()
        for name, doc, value in (
                ("traffic_log_lines", "Traffic log lines read", self.store.lines),
                ("traffic_log_malformed", "Traffic log lines that were not ours (dropped)", self.malformed),
                ("traffic_log_oversized", "Traffic log lines over the length limit (dropped)",
                 self.tail.oversized),
                ("traffic_log_skipped_bytes", "Traffic log bytes skipped because the reader fell behind",
                 self.tail.skipped),
                ("traffic_log_rotations", "Rotations of the traffic log the reader followed",
                 self.tail.rotations)):
            c = CounterMetricFamily("ultrascale_" + name, doc)
            c.add_metric([], value)
            fams.append(c)
        lag = GaugeMetricFamily("ultrascale_traffic_log_lag_bytes", "Traffic log bytes not read yet")
        lag.add_metric([], self.tail.lag)
        fams.append(lag)
        return fams
