"""Request and cache metrics with prometheus_client, multiprocess aware.

Reuse in a user's app::

    from app.monitoring import MetricsMiddleware
    application = MetricsMiddleware(my_wsgi_app, route_of=lambda environ: my_route_template(environ))

    # cache counters:
    from app.monitoring import AppMetrics
    metrics = AppMetrics()
    cache = TwoTierCache.from_env(on_event=metrics.cache_event)

    # gunicorn config (app/gunicorn_conf.py does this):
    def child_exit(server, worker):
        from app.monitoring import mark_worker_dead; mark_worker_dead(worker.pid)

When ``PROMETHEUS_MULTIPROC_DIR`` is set *before prometheus_client is imported* (the daemon sets
it in each instance's environment, one directory per instance), every value is written to
mmap'd files in that directory and the daemon aggregates them with
``prometheus_client.multiprocess.MultiProcessCollector`` (see :func:`collect_text`), no HTTP.

Metrics (all prefixed ``ultrascale_``):

* ``http_requests_total{route,method,status}``   counter, status is a class: 1xx..5xx
* ``http_request_duration_seconds{route}``       histogram
* ``http_requests_in_flight``                    gauge (multiprocess: livesum)
* ``cache_hits_total{tier}``                     counter, tier = memory | redis
* ``cache_misses_total``, ``cache_evictions_total``, ``cache_loads_total``,
  ``cache_coalesced_total``, ``cache_expirations_total``, ``cache_redis_skipped_total``
* ``cache_errors_total{tier}``                   counter, tier = redis | loader

``route`` is a template (``/cached/{key}``), never the raw path, so label cardinality is bounded.
Nothing is created at import time: metric objects (and their files) are made when
:class:`AppMetrics` is instantiated.
"""
from __future__ import annotations

import os
import time
from typing import Callable

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_STATUS_CLASS = {"1": "1xx", "2": "2xx", "3": "3xx", "4": "4xx", "5": "5xx"}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir(env=None) -> str | None:
    env = os.environ if env is None else env
    return env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir") or None


class AppMetrics:
    """The app's metric objects in their own registry (so several instances can coexist in
    one process, e.g. in tests)."""

    def __init__(self, registry=None, namespace: str = "ultrascale"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("http_requests", "HTTP requests by route template, method and status class",
                                ["route", "method", "status"], namespace=namespace, registry=r)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency by route template",
                                 ["route"], namespace=namespace, registry=r, buckets=BUCKETS)
        self.in_flight = Gauge("http_requests_in_flight", "HTTP requests being served",
                               namespace=namespace, registry=r, multiprocess_mode="livesum")
        self.cache_hits = Counter("cache_hits", "Cache hits by tier", ["tier"], namespace=namespace, registry=r)
        self.cache_errors = Counter("cache_errors", "Cache errors by tier", ["tier"],
                                    namespace=namespace, registry=r)
        plain = {}
        for name, doc in (("misses", "Cache misses (loader called)"),
                          ("evictions", "Memory-tier LRU evictions"),
                          ("loads", "Successful loader calls"),
                          ("coalesced", "Lookups answered by a concurrent load of the same key"),
                          ("expirations", "Memory-tier entries dropped at TTL"),
                          ("redis_skipped", "Redis lookups skipped while its circuit breaker is open")):
            plain[name] = Counter(f"cache_{name}", doc, namespace=namespace, registry=r)
        self._cache_counters = {
            "hits_memory": self.cache_hits.labels("memory"),
            "hits_redis": self.cache_hits.labels("redis"),
            "errors_redis": self.cache_errors.labels("redis"),
            "load_errors": self.cache_errors.labels("loader"),
            "misses": plain["misses"],
            "evictions": plain["evictions"],
            "loads": plain["loads"],
            "coalesced": plain["coalesced"],
            "expirations": plain["expirations"],
            "skipped_redis": plain["redis_skipped"],
        }
        self._req_children: dict = {}
        self._lat_children: dict = {}

    # cache hook: TwoTierCache(on_event=metrics.cache_event)
    def cache_event(self, name: str, amount: int = 1) -> None:
        c = self._cache_counters.get(name)
        if c is not None:
            c.inc(amount)

    def observe(self, route: str, method: str, status: str, seconds: float) -> None:
        key = (route, method, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(route, method, status)
        child.inc()
        lat = self._lat_children.get(route)
        if lat is None:
            lat = self._lat_children[route] = self.latency.labels(route)
        lat.observe(seconds)


def status_class(status: str | None) -> str:
    if not status:
        return "1xx"  # no start_response: the connection was taken over (WebSocket upgrade)
    return _STATUS_CLASS.get(status[0], "5xx")


class _ClosingIterator:
    """Wraps a streamed response so the request is recorded when the server closes it."""

    __slots__ = ("_it", "_done")

    def __init__(self, iterable, done):
        self._it = iterable
        self._done = done

    def __iter__(self):
        return iter(self._it)

    def close(self):
        try:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


class MetricsMiddleware:
    """WSGI middleware recording count, latency, status class and in-flight per route.

    ``route_of(environ) -> str`` must return a bounded template. ``metrics`` may be given or is
    created on first request (so constructing the middleware does no I/O)."""

    def __init__(self, app, route_of: Callable[[dict], str], metrics: AppMetrics | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.app = app
        self.route_of = route_of
        self._metrics = metrics
        self.clock = clock

    @property
    def metrics(self) -> AppMetrics:
        if self._metrics is None:
            self._metrics = AppMetrics()
        return self._metrics

    def __call__(self, environ, start_response):
        m = self._metrics or self.metrics
        route = self.route_of(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in _METHODS:
            method = "OTHER"
        status_seen = [None]

        def sr(status, headers, exc_info=None):
            status_seen[0] = status
            return start_response(status, headers, exc_info)

        clock = self.clock
        m.in_flight.inc()
        t0 = clock()
        finished = False

        def done():
            nonlocal finished
            if finished:
                return
            finished = True
            m.in_flight.dec()
            m.observe(route, method, status_class(status_seen[0]), clock() - t0)

        try:
            result = self.app(environ, sr)
        except StopIteration:
            done()  # WebSocket handled on the raw socket (gunicorn's "already handled" signal)
            raise
        except BaseException:
            if status_seen[0] is None:
                status_seen[0] = "500"
            done()
            raise
        if type(result) is list or type(result) is tuple:
            done()
            return result
        return _ClosingIterator(result, done)


def mark_worker_dead(pid: int, env=None) -> None:
    """For gunicorn's ``child_exit`` hook: drop a dead worker's live gauges."""
    path = multiprocess_dir(env)
    if not path:
        return
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, path)


def collect_text(path: str) -> bytes:
    """Aggregate every process's metric files in ``path`` (Prometheus text format)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry)
