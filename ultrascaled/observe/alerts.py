"""The alerts, applied: sample the fleet's metrics, evaluate the rules, emit and notify.

The pure rules and their evaluation are ``observe/alert_rules.py``; this module is the
effectful part around them:

* :class:`Sampler` keeps the previous scrape and returns the sample since it (with the figures
  measured at nginx when the traffic log is read);
* :class:`WebhookSink` -- async POSTs with timeout, retries and a bounded queue; never blocks
  the caller;
* :class:`AlertManager` -- evaluates every ``evaluation_interval``, emits ``alert.firing`` /
  ``alert.resolved`` events, keeps what is firing for ``GET /alerts``, and carries the alerts
  the daemon raises itself; :class:`EventAlerts` is its events-only stand-in.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import time
from typing import Any, Awaitable, Callable, Iterable, Optional, Union

import aiohttp
import structlog

from ultrascaled.core import routes
from ultrascaled.observe.alert_rules import (AlertState, MetricSample, Rule, Transition, alert_key, build_rules,
                                             evaluate, instance_rules, parse_key, route_rules, sample_from,
                                             with_traffic)
from ultrascaled.observe.metric_math import Flat, flatten
from ultrascaled.spec import AlertsSection

log = structlog.get_logger("ultrascaled.observe.alerts")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Sampler:
    """Keeps the previous scrape: each call scrapes and returns the sample since the last call
    (None on the first call). ``collect`` returns metric families, or an awaitable of them
    (e.g. ``metrics.families_async(...)``)."""

    def __init__(self, collect: Callable[[], Any], clock: Callable[[], float] = time.monotonic,
                 cpu_count: Optional[int] = None, traffic: Any = None):
        self.collect = collect
        self.clock = clock
        self.cpu_count = cpu_count
        self.traffic = traffic      # a TrafficSource (accesslog.TrafficMonitor): requests, 5xx, p95 at nginx
        self._prev: Optional[tuple[float, Flat]] = None
        self._routes: Optional[dict] = None     # the fleet's per-route totals at the last call

    async def __call__(self) -> Optional[MetricSample]:
        fams = self.collect()
        if inspect.isawaitable(fams):
            fams = await fams
        now, cur = self.clock(), flatten(fams)
        prev, self._prev = self._prev, (now, cur)
        if prev is None or now <= prev[0]:
            return None
        sample = sample_from(prev[1], cur, now - prev[0], self.cpu_count or _cpu_count())
        t = self.traffic
        # A traffic log that cannot be read leaves the app's own metrics in force. Per instance:
        # those meant to serve (a stopped one's refused connections are not its 5xx).
        if t is not None and getattr(t, "active", True):
            sample = with_traffic(sample, t, (getattr(t, "serving", None) or t.ports)())
            if hasattr(t, "route_totals"):
                before, self._routes = self._routes, t.route_totals([None])
                if before is not None:
                    sample = dataclasses.replace(sample, routes=routes.delta(before, self._routes))
        return sample


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
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        while True:
            payload = await self.queue.get()
            try:
                await self._deliver(payload)
            finally:
                self.queue.task_done()

    async def _deliver(self, payload: dict) -> None:
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
        rules += route_rules(self.section, sample.routes, self.state)
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
        key = alert_key(name, labels)
        known = self.raised.get(key)
        if known is not None:
            known["message"] = message
            return
        self.raised[key] = {"alert": name, "message": message, "since": round(self.wall(), 3), **labels}
        self._notify(name, "firing", message, labels)

    def resolve(self, name: str, message: str = "", **labels: Any) -> None:
        if self.raised.pop(alert_key(name, labels), None) is not None:
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
            name, labels = parse_key(key)
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


class EventAlerts:
    """fire/resolve for a daemon without an AlertManager (tests, alerts disabled): events only."""

    def __init__(self, emit: Callable[..., Any]):
        self.emit = emit
        self.raised: dict[str, dict] = {}

    def fire(self, name: str, message: str, **labels: Any) -> None:
        key = alert_key(name, labels)
        if key not in self.raised:
            self.raised[key] = {"alert": name, "message": message, **labels}
            self.emit("alert.firing", level="error", alert=name, message=message, **labels)

    def resolve(self, name: str, message: str = "", **labels: Any) -> None:
        if self.raised.pop(alert_key(name, labels), None) is not None:
            self.emit("alert.resolved", alert=name, message=message or f"{name} resolved", **labels)
