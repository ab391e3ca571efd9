"""Metrics middleware and cache metrics (in-process, single-process prometheus mode)."""
from __future__ import annotations

import pytest

from app.monitoring import AppMetrics, MetricsMiddleware, status_class
from app.wsgi import create_app, route_of

from app_wsgi_helpers import call, call_raw


def sample(metrics: AppMetrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


@pytest.fixture
def wired():
    metrics = AppMetrics()
    return create_app({}, metrics=metrics), metrics


def test_requests_are_counted_per_route_template_method_and_status_class(wired):
    app, m = wired
    for key in ("a", "b", "c"):
        call(app, f"/cached/{key}")
    call(app, "/nope")
    call(app, "/", "POST")
    assert sample(m, "ultrascale_http_requests_total", route="/cached/{key}", method="GET", status="2xx") == 3
    assert sample(m, "ultrascale_http_requests_total", route="unmatched", method="GET", status="4xx") == 1
    assert sample(m, "ultrascale_http_requests_total", route="/", method="POST", status="4xx") == 1
    assert sample(m, "ultrascale_http_request_duration_seconds_count", route="/cached/{key}") == 3
    assert sample(m, "ultrascale_http_requests_in_flight") == 0
    # raw paths never become labels
    labels = {s.labels.get("route") for fam in m.registry.collect() for s in fam.samples}
    assert "/cached/a" not in labels


def test_latency_histogram_sees_slow_requests(wired):
    app, m = wired
    call(app, "/io?ms=60")
    assert sample(m, "ultrascale_http_request_duration_seconds_bucket", route="/io", le="0.05") == 0
    assert sample(m, "ultrascale_http_request_duration_seconds_bucket", route="/io", le="+Inf") == 1
    assert sample(m, "ultrascale_http_request_duration_seconds_sum", route="/io") >= 0.059


def test_cache_counters_are_exported(wired):
    app, m = wired
    call(app, "/cached/x")
    call(app, "/cached/x")
    call(app, "/cached/x")
    assert sample(m, "ultrascale_cache_misses_total") == 1
    assert sample(m, "ultrascale_cache_hits_total", tier="memory") == 2
    assert sample(m, "ultrascale_cache_hits_total", tier="redis") == 0
    assert sample(m, "ultrascale_cache_loads_total") == 1


def test_in_flight_is_one_during_a_request_and_streamed_bodies_finish_on_close():
    m = AppMetrics()
    seen = {}

    def streaming(environ, start_response):
        start_response("200 OK", [])
        seen["during"] = sample(m, "ultrascale_http_requests_in_flight")
        yield b"a"
        yield b"b"

    app = MetricsMiddleware(streaming, route_of=route_of, metrics=m)
    _, _, body = call_raw(app, "/health")
    assert body == b"ab"
    assert seen["during"] == 1
    assert sample(m, "ultrascale_http_requests_in_flight") == 0
    assert sample(m, "ultrascale_http_requests_total", route="/health", method="GET", status="2xx") == 1


def test_an_exception_is_recorded_as_5xx_and_reraised():
    m = AppMetrics()

    def broken(environ, start_response):
        raise RuntimeError("boom")

    app = MetricsMiddleware(broken, route_of=route_of, metrics=m)
    with pytest.raises(RuntimeError):
        call_raw(app, "/")
    assert sample(m, "ultrascale_http_requests_total", route="/", method="GET", status="5xx") == 1
    assert sample(m, "ultrascale_http_requests_in_flight") == 0


def test_unknown_methods_are_folded_into_other():
    m = AppMetrics()
    app = MetricsMiddleware(create_app({}, with_metrics=False), route_of=route_of, metrics=m)
    call_raw(app, "/", "BREW")
    assert sample(m, "ultrascale_http_requests_total", route="/", method="OTHER", status="4xx") == 1


@pytest.mark.parametrize("status, expected", [
    ("200 OK", "2xx"), ("301 Moved", "3xx"), ("404 Not Found", "4xx"), ("503 x", "5xx"),
    ("101 Switching Protocols", "1xx"), (None, "1xx"), ("999 ?", "5xx"),
])
def test_status_class(status, expected):
    assert status_class(status) == expected
