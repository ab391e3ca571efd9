"""Alert rules over the fleet's metrics: a pure evaluation, a webhook sink and the glue loop.

Three layers, from pure to effectful:

* :class:`AlertsSection` -- the spec's ``alerts:`` keys (thresholds, ``*_for`` durations, webhook).
* :func:`sample_from` turns two consecutive metric scrapes into a :class:`MetricSample` (rates
  over the interval), and :func:`evaluate` is a pure function
  ``(rules, state, sample, now) -> (state, transitions)``: a rule fires once its condition has
  held for ``for`` seconds and resolves as soon as it stops holding.
* :class:`WebhookSink` (async POSTs with timeout, retries and a bounded queue; never blocks
  the caller) and :class:`AlertManager` (evaluates every ``evaluation_interval``, emits
  ``alert.firing`` / ``alert.resolved`` events, keeps what is firing for ``GET /alerts``).

Samples are computed from prometheus_client metric families: those :mod:`ultrascaled.observe.metrics`
builds (``Renderer.families``, no text round trip) or those
``prometheus_client.parser.text_string_to_metric_families`` parses from an exposition; both
have the same shape. Counter deltas are taken per series (per instance, route, ...), and a
series whose value went down (its instance restarted and its metrics folder was emptied)
counts its current value as the delta, like Prometheus' ``rate()``; the deltas are then summed
over the fleet.

The module imports neither aiohttp nor psutil at import time: aiohttp is imported when the
webhook sink starts.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, NamedTuple, Optional, Union

import structlog

log = structlog.get_logger("ultrascaled.observe.alerts")


from ultrascaled.spec import AlertsSection  # noqa: E402  (declared with the other spec sections)


# ---- rules, samples, evaluation (pure) -----------------------------------------------------

@dataclass(frozen=True)
class MetricSample:
    """The fleet over one interval between two scrapes (counts are deltas, not totals)."""
    interval: float
    requests: float = 0.0
    errors_5xx: float = 0.0
    p95_latency: Optional[float] = None       # seconds, None without requests
    cpu_seconds: Optional[float] = None       # CPU used by every instance process in the interval
    cpu_percent: Optional[float] = None       # of the host's CPUs (100 = all of them busy)
    memory_bytes: Optional[float] = None      # fleet total (current)
    memory_budget_bytes: Optional[float] = None
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    db_connections: Optional[float] = None    # MongoDB connections in use (current), None = no metric
    # Where requests, 5xx and p95 come from: "app" (the app's own metrics) or "nginx" (the
    # traffic log, any app); with nginx, per instance too: port -> accesslog.TrafficWindow.
    source: str = "app"
    instances: Mapping[int, Any] = field(default_factory=dict)

    @property
    def error_rate(self) -> Optional[float]:
        return self.errors_5xx / self.requests if self.requests > 0 else None

    @property
    def request_rate(self) -> float:
        return self.requests / self.interval if self.interval > 0 else 0.0

    @property
    def cache_lookups(self) -> float:
        return self.cache_hits + self.cache_misses

    @property
    def cache_hit_rate(self) -> Optional[float]:
        n = self.cache_lookups
        return self.cache_hits / n if n > 0 else None

    @property
    def memory_fraction(self) -> Optional[float]:
        if self.memory_bytes is None or not self.memory_budget_bytes:
            return None
        return self.memory_bytes / self.memory_budget_bytes


@dataclass(frozen=True)
class Rule:
    name: str
    value: Callable[[MetricSample], Optional[float]]
    op: str                      # ">" or "<"
    threshold: float
    for_seconds: float
    describe: Callable[[float, float, MetricSample], str]
    volume: Optional[Callable[[MetricSample], float]] = None   # must reach min_volume to judge
    min_volume: float = 0
    labels: Mapping[str, Any] = field(default_factory=dict)    # e.g. {"port": 8001}: one instance

    @property
    def key(self) -> str:
        return _key(self.name, dict(self.labels))

    def holds(self, sample: MetricSample) -> tuple[bool, Optional[float]]:
        v = self.value(sample)
        if v is None or (self.volume is not None and self.volume(sample) < self.min_volume):
            return False, v
        return (v > self.threshold if self.op == ">" else v < self.threshold), v


class Transition(NamedTuple):
    name: str
    status: str          # "firing" or "resolved"
    value: Optional[float]
    threshold: float
    message: str
    labels: Mapping[str, Any] = {}


@dataclass(frozen=True)
class RuleState:
    pending_since: Optional[float] = None   # when the condition started holding
    firing_since: Optional[float] = None    # when it fired; None = not firing
    value: Optional[float] = None           # last value seen
    message: str = ""


@dataclass(frozen=True)
class AlertState:
    rules: Mapping[str, RuleState] = field(default_factory=dict)

    def get(self, name: str) -> RuleState:
        return self.rules.get(name) or RuleState()


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def build_rules(section: AlertsSection, db_connection_budget: Optional[int] = None) -> tuple[Rule, ...]:
    """The rules a section enables (a null threshold turns its rule off)."""
    s = section
    rules: list[Rule] = []
    if s.p95_latency_seconds is not None:
        rules.append(Rule(
            "p95_latency", lambda m: m.p95_latency, ">", s.p95_latency_seconds, s.p95_latency_for,
            lambda v, t, m: f"p95 latency {v:.3f}s over {t:g}s ({m.requests:.0f} requests "
                            f"in {m.interval:.0f}s{_at(m)})",
            volume=lambda m: m.requests, min_volume=s.min_requests))
    if s.error_rate is not None:
        rules.append(Rule(
            "error_rate", lambda m: m.error_rate, ">", s.error_rate, s.error_rate_for,
            lambda v, t, m: f"5xx rate {v:.2%} over {t:.2%} ({m.errors_5xx:.0f} of "
                            f"{m.requests:.0f} requests{_at(m)})",
            volume=lambda m: m.requests, min_volume=s.min_requests))
    if s.cpu_percent is not None:
        rules.append(Rule(
            "cpu", lambda m: m.cpu_percent, ">", s.cpu_percent, s.cpu_for,
            lambda v, t, m: f"fleet CPU {v:.1f}% of the host over {t:g}%"))
    if s.memory_budget_fraction is not None:
        rules.append(Rule(
            "memory", lambda m: m.memory_fraction, ">", s.memory_budget_fraction, s.memory_for,
            lambda v, t, m: f"fleet memory {_gib(m.memory_bytes or 0)} is {v:.0%} of the "
                            f"{_gib(m.memory_budget_bytes or 0)} budget (threshold {t:.0%})"))
    if s.cache_hit_rate is not None:
        rules.append(Rule(
            "cache_hit_rate", lambda m: m.cache_hit_rate, "<", s.cache_hit_rate, s.cache_hit_rate_for,
            lambda v, t, m: f"cache hit rate {v:.1%} under {t:.0%} ({m.cache_hits:.0f} hits, "
                            f"{m.cache_misses:.0f} misses)",
            volume=lambda m: m.cache_lookups, min_volume=s.min_requests))
    if s.db_connections_fraction is not None and db_connection_budget:
        limit = s.db_connections_fraction * db_connection_budget
        rules.append(Rule(
            "db_connections", lambda m: m.db_connections, ">", limit, s.db_connections_for,
            lambda v, t, m: f"MongoDB connections in use {v:.0f} over {t:.0f} "
                            f"(budget {db_connection_budget})"))
    return tuple(rules)


def instance_rules(section: AlertsSection, ports: Iterable[int]) -> tuple[Rule, ...]:
    """The error-rate and latency rules once per instance port, over the sample's per-instance
    traffic figures (``MetricSample.instances``, measured at nginx): same thresholds, ``for``
    and ``min_requests`` as the fleet's rules, the alert labelled ``port``."""
    s = section
    out: list[Rule] = []
    for port in sorted(ports):
        def win(m: MetricSample, p: int = port):
            return m.instances.get(p)
        if s.p95_latency_seconds is not None:
            out.append(Rule(
                "p95_latency", lambda m, w=win: getattr(w(m), "p95", None), ">", s.p95_latency_seconds,
                s.p95_latency_for,
                lambda v, t, m, p=port, w=win: f"instance {p}: p95 latency {v:.3f}s over {t:g}s "
                                               f"({w(m).requests} requests in {m.interval:.0f}s, at nginx)",
                volume=lambda m, w=win: getattr(w(m), "requests", 0), min_volume=s.min_requests,
                labels={"port": port}))
        if s.error_rate is not None:
            out.append(Rule(
                "error_rate", lambda m, w=win: getattr(w(m), "rate_5xx", None) if getattr(w(m), "requests", 0)
                else None, ">", s.error_rate, s.error_rate_for,
                lambda v, t, m, p=port, w=win: f"instance {p}: 5xx rate {v:.2%} over {t:.2%} "
                                               f"({w(m).errors_5xx} of {w(m).requests} requests, at nginx)",
                volume=lambda m, w=win: getattr(w(m), "requests", 0), min_volume=s.min_requests,
                labels={"port": port}))
    return tuple(out)


def _at(m: MetricSample) -> str:
    return ", at nginx" if m.source == "nginx" else ""


def evaluate(rules: Iterable[Rule], state: AlertState, sample: MetricSample,
             now: float) -> tuple[AlertState, list[Transition]]:
    """One evaluation step. A value that is missing, or an interval below the rule's minimum
    volume, counts as the condition not holding (so a firing rule resolves). A labelled rule
    (one instance's) that is no longer evaluated -- the instance left -- resolves too."""
    out: dict[str, RuleState] = {}
    transitions: list[Transition] = []
    for rule in rules:
        key = rule.key
        labels = dict(rule.labels)
        prev = state.get(key)
        held, value = rule.holds(sample)
        if held:
            pending = prev.pending_since if prev.pending_since is not None else now
            message = rule.describe(value, rule.threshold, sample)
            firing_since = prev.firing_since
            if firing_since is None and now - pending >= rule.for_seconds:
                firing_since = now
                transitions.append(Transition(rule.name, "firing", value, rule.threshold, message, labels))
            out[key] = RuleState(pending, firing_since, value, message)
        else:
            if prev.firing_since is not None:
                shown = "no data" if value is None else f"{value:.4g}"
                where = "".join(f" {k} {v}" for k, v in sorted(labels.items()))
                message = (f"{rule.name}{where} back to normal ({shown}, threshold "
                           f"{'>' if rule.op == '>' else '<'} {rule.threshold:g})")
                transitions.append(Transition(rule.name, "resolved", value, rule.threshold, message, labels))
            out[key] = RuleState(None, None, value, "")
    for key, prev in state.rules.items():
        if key not in out and "," in key and prev.firing_since is not None:
            name, labels = _unkey(key)
            where = "".join(f" {k} {v}" for k, v in sorted(labels.items()))
            transitions.append(Transition(name, "resolved", None, 0.0,
                                          f"{name}{where} resolved: not judged any more (the instance left the fleet "
                                          "or stopped serving)", labels))
    return AlertState(out), transitions


def _unkey(key: str) -> tuple[str, dict]:
    name, *pairs = key.split(",")
    labels: dict[str, Any] = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        labels[k] = int(v) if v.isdigit() else v
    return name, labels


# ---- samples from metric families ----------------------------------------------------------

REQUESTS = "ultrascale_http_requests_total"
LATENCY_BUCKET = "ultrascale_http_request_duration_seconds_bucket"
CACHE_HITS = "ultrascale_cache_hits_total"
CACHE_MISSES = "ultrascale_cache_misses_total"
DB_CONNECTIONS = "ultrascale_mongodb_connections_in_use"
WORKER_CPU = "ultrascale_worker_cpu_seconds_total"
MASTER_CPU = "ultrascale_master_cpu_seconds_total"
FLEET_MEMORY = "ultrascale_fleet_memory_bytes"
FLEET_BUDGET = "ultrascale_fleet_memory_budget_bytes"

Flat = dict  # sample name -> {frozenset(labels.items()): value}


def flatten(families: Union[Iterable[Any], Flat]) -> Flat:
    """Metric families (from the collectors or the text parser) to sample name -> series -> value."""
    if isinstance(families, dict):
        return families
    out: Flat = {}
    for fam in families:
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def _delta(prev: Flat, cur: Flat, name: str, where: Callable[[dict], bool] | None = None) -> float:
    total = 0.0
    before = prev.get(name, {})
    for key, value in cur.get(name, {}).items():
        if where is not None and not where(dict(key)):
            continue
        old = before.get(key)
        total += value - old if old is not None and value >= old else value
    return total


def _current(cur: Flat, name: str) -> Optional[float]:
    series = cur.get(name)
    return sum(series.values()) if series else None


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> Optional[float]:
    """Quantile from cumulative bucket counts {upper bound: count}, interpolating linearly
    inside the bucket (Prometheus' method). Past the last finite bound: that bound."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sample_from(prev: Union[Iterable[Any], Flat], cur: Union[Iterable[Any], Flat], interval: float,
                cpu_count: Optional[int] = None) -> MetricSample:
    """The sample over ``interval`` seconds between two scrapes (families or :func:`flatten`ed)."""
    p, c = flatten(prev), flatten(cur)
    requests = _delta(p, c, REQUESTS)
    errors = _delta(p, c, REQUESTS, lambda lab: lab.get("status") == "5xx")
    buckets: dict[float, float] = {}
    before = p.get(LATENCY_BUCKET, {})
    for key, value in c.get(LATENCY_BUCKET, {}).items():
        le = float(dict(key).get("le", "inf"))
        old = before.get(key)
        buckets[le] = buckets.get(le, 0.0) + (value - old if old is not None and value >= old else value)
    p95 = histogram_quantile(0.95, buckets) if requests > 0 else None
    cpu = None
    if WORKER_CPU in c or MASTER_CPU in c:
        cpu = _delta(p, c, WORKER_CPU) + _delta(p, c, MASTER_CPU)
    cores = cpu_count or _cpu_count()
    cpu_pct = 100.0 * cpu / (interval * cores) if cpu is not None and interval > 0 else None
    return MetricSample(
        interval=interval, requests=requests, errors_5xx=errors, p95_latency=p95,
        cpu_seconds=cpu, cpu_percent=cpu_pct,
        memory_bytes=_current(c, FLEET_MEMORY), memory_budget_bytes=_current(c, FLEET_BUDGET),
        cache_hits=_delta(p, c, CACHE_HITS), cache_misses=_delta(p, c, CACHE_MISSES),
        db_connections=_current(c, DB_CONNECTIONS))


class Sampler:
    """Keeps the previous scrape: each call scrapes and returns the sample since the last call
    (None on the first call). ``collect`` returns metric families, or an awaitable of them
    (e.g. ``metrics.families_async(...)``)."""

    def __init__(self, collect: Callable[[], Any], clock: Callable[[], float] = time.monotonic,
                 cpu_count: Optional[int] = None, traffic: Any = None):
        self.collect = collect
        self.clock = clock
        self.cpu_count = cpu_count
        self.traffic = traffic      # accesslog.TrafficMonitor: requests, 5xx, p95 measured at nginx
        self._prev: Optional[tuple[float, Flat]] = None

    async def __call__(self) -> Optional[MetricSample]:
        fams = self.collect()
        if inspect.isawaitable(fams):
            fams = await fams
        now, cur = self.clock(), flatten(fams)
        prev, self._prev = self._prev, (now, cur)
        if prev is None or now <= prev[0]:
            return None
        sample = sample_from(prev[1], cur, now - prev[0], self.cpu_count)
        t = self.traffic
        # A traffic log that cannot be read leaves the app's own metrics in force. Per instance:
        # those meant to serve (a stopped one's refused connections are not its 5xx).
        if t is not None and getattr(t, "active", True):
            sample = with_traffic(sample, t, (getattr(t, "serving", None) or t.ports)())
        return sample


def with_traffic(sample: MetricSample, source: Any, ports: Iterable[int]) -> MetricSample:
    """The sample with requests, 5xx and p95 from a TrafficSource (measured at nginx) over the
    sample's interval: the fleet's, and each instance's in ``instances``."""
    fleet = source.window(None, sample.interval)
    return dataclasses.replace(sample, requests=fleet.requests, errors_5xx=fleet.errors_5xx,
                               p95_latency=fleet.p95, source="nginx",
                               instances={p: source.window(p, sample.interval) for p in ports})


# ---- the webhook ---------------------------------------------------------------------------

class WebhookSink:
    """POSTs JSON notifications from a background task; :meth:`send` never waits.

    Each notification gets up to ``1 + retries`` attempts: a timeout, a connection error, a
    5xx or a 429 is retried after ``backoff * 2**n`` seconds (capped at ``backoff_max``);
    another 4xx is permanent and given up at once. Counters: ``sent``, ``failed`` (given up),
    ``dropped`` (queue full), ``attempts``.
    """

    def __init__(self, url: str, *, timeout: float = 2.0, retries: int = 3, backoff: float = 0.5,
                 backoff_max: float = 10.0, queue_size: int = 100, name: str = "alerts.webhook"):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.name = name
        self.sent = self.failed = self.dropped = self.attempts = 0
        self._task: Optional[asyncio.Task] = None
        self._session = None

    @classmethod
    def from_section(cls, section: AlertsSection) -> Optional["WebhookSink"]:
        if not section.webhook_url:
            return None
        return cls(section.webhook_url, timeout=section.webhook_timeout,
                   retries=section.webhook_retries, backoff=section.webhook_backoff,
                   queue_size=section.webhook_queue)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
            self._task.add_done_callback(self._crashed)

    def send(self, payload: dict) -> bool:
        """Queue one notification; False (and ``dropped`` + 1) when the queue is full.
        Call from the event loop's thread."""
        self.start()
        try:
            self.queue.put_nowait(payload)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert.webhook_dropped", alert=payload.get("alert"), dropped=self.dropped)
            return False

    def counters(self) -> dict[str, int]:
        return {"alerts_webhook_sent": self.sent, "alerts_webhook_failed": self.failed,
                "alerts_webhook_dropped": self.dropped}

    async def close(self, drain: float = 0.0) -> None:
        """Stop the task, after waiting up to ``drain`` seconds for the queue to empty."""
        if self._task is not None and drain > 0:
            try:
                await asyncio.wait_for(self.queue.join(), drain)
            except asyncio.TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _crashed(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("alert.webhook_crashed", error=repr(task.exception()))

    async def _run(self) -> None:
        import aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        while True:
            payload = await self.queue.get()
            try:
                await self._deliver(payload)
            finally:
                self.queue.task_done()

    async def _deliver(self, payload: dict) -> None:
        import aiohttp
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(self.backoff_max, self.backoff * 2 ** (attempt - 1)))
            self.attempts += 1
            try:
                async with self._session.post(self.url, json=payload) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.sent += 1
                        return
                    error = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status != 429:
                        break  # permanent: the receiver rejects this payload
            except asyncio.TimeoutError:
                error = f"timed out after {self.timeout:g}s"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"
        self.failed += 1
        log.warning("alert.webhook_failed", alert=payload.get("alert"), error=error,
                    attempts=attempt + 1)


# ---- the loop the daemon runs --------------------------------------------------------------

class AlertManager:
    """Every ``section.evaluation_interval`` seconds: sample, evaluate, emit, notify.

    ``sample()`` returns a :class:`MetricSample` or None (nothing to judge yet), or an
    awaitable of one (a :class:`Sampler` does). ``emit(name, level=..., **fields)`` is
    ``EventLog.emit``. The webhook sink is built from the section unless one is given.
    """

    def __init__(self, section: AlertsSection,
                 sample: Callable[[], Union[Optional[MetricSample], Awaitable[Optional[MetricSample]]]],
                 emit: Callable[..., Any], *, fleet: str,
                 db_connection_budget: Optional[int] = None, sink: Optional[WebhookSink] = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rules: Optional[Iterable[Rule]] = None):
        self.section = section
        self.sample = sample
        self.emit = emit
        self.fleet = fleet
        self.rules = tuple(rules) if rules is not None else build_rules(section, db_connection_budget)
        self.sink = sink if sink is not None else WebhookSink.from_section(section)
        self.clock = clock
        self.wall = wall
        self.state = AlertState()
        self.raised: dict[str, dict] = {}   # alerts raised by the daemon itself, by key
        self.fired = 0
        self.evaluations = 0
        self.last_sample: Optional[MetricSample] = None
        self._evaluated: tuple[Rule, ...] = self.rules

    async def tick(self) -> list[Transition]:
        """One evaluation; returns its transitions."""
        sample = self.sample()
        if inspect.isawaitable(sample):
            sample = await sample
        if sample is None:
            return []
        now = self.clock()
        rules = self.rules + instance_rules(self.section, sample.instances) if sample.instances else self.rules
        self._evaluated = rules
        self.state, transitions = evaluate(rules, self.state, sample, now)
        self.last_sample = sample
        self.evaluations += 1
        wall = self.wall()
        for t in transitions:
            if t.status == "firing":
                self.fired += 1
            self.emit(f"alert.{t.status}", level="warning" if t.status == "firing" else "info",
                      alert=t.name, value=t.value, threshold=t.threshold, message=t.message, **t.labels)
            if self.sink is not None:
                self.sink.send({"alert": t.name, "status": t.status, "value": t.value,
                                "threshold": t.threshold, "message": t.message,
                                "fleet": self.fleet, "time": round(wall, 3), **t.labels})
        return transitions

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """The background task; one failed evaluation is logged and the loop goes on. `beat`
        tells the daemon's task guard the loop is alive."""
        interval = self.section.evaluation_interval
        while True:
            started = self.clock()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad scrape must not end alerting
                log.exception("alert.evaluation_failed", error=repr(exc))
            beat()
            await asyncio.sleep(max(0.0, interval - (self.clock() - started)))

    # ---- alerts the daemon raises itself (an instance FATAL, a task dead, the budget crossed) ----

    def fire(self, name: str, message: str, **labels: Any) -> None:
        """Raise an alert that no metric rule can see; the same path as rule alerts: the
        ``alert.firing`` event, the webhook, ``GET /alerts``. Raising it again updates it."""
        key = _key(name, labels)
        known = self.raised.get(key)
        if known is not None:
            known["message"] = message
            return
        self.raised[key] = {"alert": name, "message": message, "since": round(self.wall(), 3), **labels}
        self._notify(name, "firing", message, labels)

    def resolve(self, name: str, message: str = "", **labels: Any) -> None:
        if self.raised.pop(_key(name, labels), None) is not None:
            self._notify(name, "resolved", message or f"{name} resolved", labels)

    def _notify(self, name: str, status: str, message: str, labels: dict) -> None:
        if status == "firing":
            self.fired += 1
        self.emit(f"alert.{status}", level="error" if status == "firing" else "info", alert=name,
                  message=message, **labels)
        if self.sink is not None:
            self.sink.send({"alert": name, "status": status, "message": message, "fleet": self.fleet,
                            "time": round(self.wall(), 3), **labels})

    def firing(self) -> list[dict]:
        """What is firing now, for ``GET /alerts`` and ``ultrascalectl alerts``."""
        out = [dict(a) for _, a in sorted(self.raised.items())]
        now, wall = self.clock(), self.wall()
        by_key = {r.key: r for r in self._evaluated}
        for key, st in sorted(self.state.rules.items()):
            if st.firing_since is None:
                continue
            rule = by_key.get(key)
            name, labels = _unkey(key)
            out.append({"alert": name, "value": st.value,
                        "threshold": rule.threshold if rule else None,
                        "message": st.message, "since": round(wall - (now - st.firing_since), 3),
                        "for": rule.for_seconds if rule else None, **labels})
        return out

    def counters(self) -> dict[str, int]:
        """For ``metrics.render(counters=...)``."""
        out = {"alerts_fired": self.fired}
        if self.sink is not None:
            out.update(self.sink.counters())
        return out

    async def close(self, drain: float = 0.0) -> None:
        if self.sink is not None:
            await self.sink.close(drain)


def _key(name: str, labels: dict) -> str:
    return name + "".join(f",{k}={labels[k]}" for k in sorted(labels))


class EventAlerts:
    """fire/resolve for a daemon without an AlertManager (tests, alerts disabled): events only."""

    def __init__(self, emit: Callable[..., Any]):
        self.emit = emit
        self.raised: dict[str, dict] = {}

    def fire(self, name: str, message: str, **labels: Any) -> None:
        key = _key(name, labels)
        if key not in self.raised:
            self.raised[key] = {"alert": name, "message": message, **labels}
            self.emit("alert.firing", level="error", alert=name, message=message, **labels)

    def resolve(self, name: str, message: str = "", **labels: Any) -> None:
        if self.raised.pop(_key(name, labels), None) is not None:
            self.emit("alert.resolved", alert=name, message=message or f"{name} resolved", **labels)
