"""The alert rules and their evaluation, pure: a :class:`MetricSample` of the fleet over one
interval, the :class:`Rule`s a spec's ``alerts:`` section enables (fleet-wide and per instance),
and :func:`evaluate`, ``(rules, state, sample, now) -> (state, transitions)``: a rule fires
once its condition has held for ``for`` seconds and resolves as soon as it stops holding.

:func:`sample_from` turns two consecutive metric scrapes into a sample (rates over the
interval, with ``metric_math``); :func:`with_traffic` puts in the figures measured at nginx
(``core/traffic.py``'s windows) instead of the app's. The loop that samples, evaluates and
notifies is ``observe/alerts.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Union

from ultrascaled.core.traffic import TrafficSource, TrafficWindow
from ultrascaled.observe.metric_math import (CACHE_HITS, CACHE_MISSES, DB_CONNECTIONS, FLEET_BUDGET, LATENCY_BUCKET,
                                             FLEET_MEMORY, MASTER_CPU, REQUESTS, WORKER_CPU, Flat,
                                             bucket_deltas, current, delta, flatten, histogram_quantile)
from ultrascaled.spec import AlertsSection


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
    # traffic log, any app); with nginx, per instance too: port -> TrafficWindow.
    source: str = "app"
    instances: Mapping[int, TrafficWindow] = field(default_factory=dict)
    # Per route at nginx over the interval: route -> (requests, 5xx) (core/routes.py's names).
    routes: Mapping[str, tuple[int, int]] = field(default_factory=dict)

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
        return alert_key(self.name, dict(self.labels))

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


def route_rules(section: AlertsSection, routes: Mapping[str, tuple[int, int]],
                state: "AlertState") -> tuple[Rule, ...]:
    """``route_errors`` once per route that answered 5xx in the sample, or whose alert is
    pending or firing (so that it can resolve): the alert labelled ``route``."""
    s = section
    if s.route_error_rate is None:
        return ()
    names = {r for r, (_, bad) in routes.items() if bad}
    for key, st in state.rules.items():
        if key.startswith("route_errors,") and (st.pending_since is not None or st.firing_since is not None):
            names.add(parse_key(key)[1].get("route"))
    out = []
    for route in sorted(n for n in names if isinstance(n, str)):
        def figures(m: MetricSample, r: str = route) -> tuple[int, int]:
            return m.routes.get(r, (0, 0))
        out.append(Rule(
            "route_errors", lambda m, f=figures: f(m)[1] / f(m)[0] if f(m)[0] else None, ">",
            s.route_error_rate, s.route_error_rate_for,
            lambda v, t, m, r=route, f=figures: f"route {r}: {f(m)[1]} of {f(m)[0]} requests answered 5xx "
                                                f"({v:.0%}, over {t:.0%}) in {m.interval:.0f}s, at nginx",
            volume=lambda m, f=figures: f(m)[0], min_volume=s.route_min_requests,
            labels={"route": route}))
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
            name, labels = parse_key(key)
            where = "".join(f" {k} {v}" for k, v in sorted(labels.items()))
            why = ("the route had no requests" if "route" in labels
                   else "the instance left the fleet or stopped serving")
            transitions.append(Transition(name, "resolved", None, 0.0,
                                          f"{name}{where} resolved: not judged any more ({why})", labels))
    return AlertState(out), transitions


def parse_key(key: str) -> tuple[str, dict]:
    """The rule name and labels back from :func:`alert_key`'s key."""
    name, *pairs = key.split(",")
    labels: dict[str, Any] = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        labels[k] = int(v) if v.isdigit() else v
    return name, labels


# ---- samples from metric families ----------------------------------------------------------

# Every series sample_from reads: all an evaluation needs from the fleet's metric families
# (metrics.families(only=...) builds just those).
SAMPLE_SERIES = frozenset({REQUESTS, LATENCY_BUCKET, WORKER_CPU, MASTER_CPU, FLEET_MEMORY, FLEET_BUDGET,
                           CACHE_HITS, CACHE_MISSES, DB_CONNECTIONS})


def sample_from(prev: Union[Iterable[Any], Flat], cur: Union[Iterable[Any], Flat], interval: float,
                cpu_count: Optional[int] = None) -> MetricSample:
    """The sample over ``interval`` seconds between two scrapes (families or :func:`flatten`ed).
    ``cpu_count``: the host's CPUs, for ``cpu_percent`` (None without it)."""
    p, c = flatten(prev), flatten(cur)
    requests = delta(p, c, REQUESTS)
    errors = delta(p, c, REQUESTS, lambda lab: lab.get("status") == "5xx")
    buckets = bucket_deltas(p, c)
    p95 = histogram_quantile(0.95, buckets) if requests > 0 else None
    cpu = None
    if WORKER_CPU in c or MASTER_CPU in c:
        cpu = delta(p, c, WORKER_CPU) + delta(p, c, MASTER_CPU)
    cpu_pct = 100.0 * cpu / (interval * cpu_count) if cpu is not None and interval > 0 and cpu_count else None
    return MetricSample(
        interval=interval, requests=requests, errors_5xx=errors, p95_latency=p95,
        cpu_seconds=cpu, cpu_percent=cpu_pct,
        memory_bytes=current(c, FLEET_MEMORY), memory_budget_bytes=current(c, FLEET_BUDGET),
        cache_hits=delta(p, c, CACHE_HITS), cache_misses=delta(p, c, CACHE_MISSES),
        db_connections=current(c, DB_CONNECTIONS))


def with_traffic(sample: MetricSample, source: TrafficSource, ports: Iterable[int]) -> MetricSample:
    """The sample with requests, 5xx and p95 from a TrafficSource (measured at nginx) over the
    sample's interval: the fleet's, and each instance's in ``instances``."""
    fleet = source.window(None, sample.interval)
    return dataclasses.replace(sample, requests=fleet.requests, errors_5xx=fleet.errors_5xx,
                               p95_latency=fleet.p95, source="nginx",
                               instances={p: source.window(p, sample.interval) for p in ports})


def alert_key(name: str, labels: dict) -> str:
    """One alert's key: its name, then its labels sorted (``error_rate,port=8001``)."""
    return name + "".join(f",{k}={labels[k]}" for k in sorted(labels))
