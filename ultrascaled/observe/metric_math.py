"""Prometheus-family arithmetic: metric families flattened to series, counter deltas across
restarts, bucket deltas and histogram quantiles, and the names of the series the daemon reads.

Families come from the collectors (``metrics.Renderer.families``, no text round trip) or from
``prometheus_client.parser.text_string_to_metric_families``; both have the same shape. Counter
deltas are taken per series (per instance, route, ...), and a series whose value went down (its
instance restarted and its metrics folder was emptied) counts its current value as the delta,
like Prometheus' ``rate()``.

Pure: used by the alert rules (``alert_rules.sample_from``), the dashboard's metrics traffic
source (``history.MetricsTraffic``) and the autoscaler.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping, Optional, Union

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


def delta(prev: Flat, cur: Flat, name: str, where: Callable[[dict], bool] | None = None) -> float:
    """A counter's growth between two scrapes, summed over its series (those ``where`` keeps);
    a series that went down counts its current value (restarted)."""
    total = 0.0
    before = prev.get(name, {})
    series = cur.get(name, {})
    if series == before:      # nothing moved (an idle fleet): every delta is 0
        return total
    for key, value in series.items():
        if where is not None and not where(dict(key)):
            continue
        old = before.get(key)
        total += value - old if old is not None and value >= old else value
    return total


def current(cur: Flat, name: str) -> Optional[float]:
    """A gauge's value summed over its series; None when there is no series."""
    series = cur.get(name)
    return sum(series.values()) if series else None


def bucket_deltas(prev: Flat, cur: Flat, name: str = LATENCY_BUCKET,
                  into: Optional[dict[float, float]] = None) -> dict[float, float]:
    """A histogram's cumulative bucket counts gained between two scrapes, {upper bound: count},
    summed over its series (into ``into``, to add several instances); restarts as in :func:`delta`."""
    buckets: dict[float, float] = {} if into is None else into
    before = prev.get(name, {})
    series = cur.get(name, {})
    if series == before:      # nothing moved: each bound gains 0
        for key in series:
            buckets.setdefault(_le(key), 0.0)
        return buckets
    for key, value in series.items():
        le = _le(key)
        old = before.get(key)
        buckets[le] = buckets.get(le, 0.0) + (value - old if old is not None and value >= old else value)
    return buckets


@functools.lru_cache(maxsize=8192)
def _le(key: frozenset) -> float:
    """A bucket series' upper bound, parsed once per series (an idle daemon's alert evaluation
    spent most of its time here: every series of every instance, at each evaluation)."""
    return float(dict(key).get("le", "inf"))


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
