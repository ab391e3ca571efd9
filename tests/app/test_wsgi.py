"""The reference WSGI app called in-process (wsgiref environ)."""
from __future__ import annotations

import subprocess
import time

import pytest

from app.cache import TwoTierCache
from app.wsgi import IO_MAX_MS, compute, create_app, route_of

from app_helpers import PYTHON, REPO, RedisCalls, free_port, mongo_server_selections
from app_wsgi_helpers import call, call_raw


@pytest.fixture
def app():
    return create_app({"ULTRASCALE_INSTANCE": "2", "ULTRASCALE_PORT": "8002"})


def test_import_does_no_io_and_builds_nothing():
    script = ("import sys, app.wsgi, app.cache, app.mongo, app.monitoring;"
              "print(app.wsgi.application._app is None, 'pymongo' in sys.modules, 'socketio' in sys.modules,"
              " 'prometheus_client' in sys.modules)")
    out = subprocess.run([PYTHON, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False", "False"]


def test_hello_is_a_tiny_json(app):
    status, headers, body = call_raw(app, "/")
    assert status == "200 OK"
    assert headers["Content-Type"] == "application/json"
    assert body == b'{"message":"hello","instance":2}'
    assert int(headers["Content-Length"]) == len(body) <= 40


def test_health_reports_instance_and_dependency_states(app):
    status, body = call(app, "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert (body["instance"], body["port"]) == (2, 8002)
    assert isinstance(body["pid"], int)
    assert body["redis"] == "not_configured"
    assert body["mongodb"] == "not_configured"
    assert set(body["cache"]["hit_rate"]) == {"memory", "redis"}


def test_health_with_dead_redis_is_200_reports_down_and_does_not_wait():
    cache = TwoTierCache(f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout=4.0,
                         breaker_failures=1, breaker_retry=60)
    app = create_app({}, cache=cache)
    assert call(app, "/cached/a")[0] == 200        # Redis refused: served by the loader
    redis = RedisCalls(cache)
    status, body = call(app, "/health")
    assert redis.calls == []    # no Redis call, so no wait for Redis's 4 s socket timeout
    assert status == 200
    assert body["redis"] == "down"
    assert body["cache"]["errors"]["redis"] == 1


def test_cached_computes_once_then_serves_from_memory(app):
    status, first = call(app, "/cached/abc")
    assert status == 200
    assert first == {"key": "abc", "value": compute("abc"), "source": "loader"}
    assert len(first["value"]) == 64
    assert call(app, "/cached/abc")[1]["source"] == "memory"
    assert call(app, "/cached/abd")[1]["value"] != first["value"]
    hit_rate = call(app, "/health")[1]["cache"]["hit_rate"]["memory"]
    assert hit_rate == pytest.approx(1 / 3, abs=0.01)


def test_cached_miss_costs_a_few_ms_of_cpu():
    t0 = time.thread_time()  # CPU time: what other processes on a busy host do not inflate
    compute("timing")
    assert 0.0003 < time.thread_time() - t0 < 0.05


@pytest.mark.parametrize("path", ["/cached/" + "x" * 201, "/cached/"])
def test_cached_rejects_bad_keys(app, path):
    status, body = call(app, path)
    assert status == 400 and body["error"] == "bad_key"


def test_io_waits_the_requested_time(app):
    t0 = time.monotonic()
    status, body = call(app, "/io?ms=30")
    assert status == 200 and body == {"slept_ms": 30}
    assert time.monotonic() - t0 >= 0.029


@pytest.mark.parametrize("query", ["ms=-1", f"ms={IO_MAX_MS + 1}", "ms=abc", "", "ms=1.5"])
def test_io_rejects_bad_values_with_json_400(app, query):
    status, body = call(app, "/io?" + query)
    assert status == 400
    assert body["error"] == "bad_request" and "ms" in body["message"]


def test_items_without_mongodb_is_503_with_clear_message(app):
    status, body = call(app, "/items/42")
    assert status == 503
    assert body["error"] == "mongodb_not_configured"
    assert "MONGODB_URI" in body["message"]


def test_unknown_path_is_404_json(app):
    status, body = call(app, "/nope")
    assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize("method, path", [("POST", "/"), ("DELETE", "/health"), ("PUT", "/cached/a")])
def test_wrong_method_is_405_json_with_allow(app, method, path):
    status, headers, body = call_raw(app, path, method)
    assert status.startswith("405")
    assert headers["Allow"] == "GET, HEAD"
    assert b"method_not_allowed" in body


def test_head_has_headers_but_no_body(app):
    status, headers, body = call_raw(app, "/health", "HEAD")
    assert status == "200 OK" and body == b"" and int(headers["Content-Length"]) > 0


def test_debug_endpoints_are_404_unless_enabled(app):
    assert call(app, "/debug/alloc?mb=1")[0] == 404
    assert call(app, "/debug/free")[0] == 404


def test_debug_alloc_grows_rss_and_free_releases():
    app = create_app({"ULTRASCALE_TEST_ENDPOINTS": "1"})
    before = call(app, "/debug/free")[1]["rss_bytes"]
    status, body = call(app, "/debug/alloc?mb=64")
    assert status == 200 and body["held_mb"] == 64
    assert body["rss_bytes"] - before >= 60 * 1024 * 1024     # pages touched: RSS really grew
    assert call(app, "/debug/alloc?mb=16")[1]["held_mb"] == 80
    after = call(app, "/debug/free")[1]
    assert after["held_mb"] == 0
    assert after["rss_bytes"] < body["rss_bytes"]
    assert call(app, "/debug/alloc?mb=0")[0] == 400
    assert call(app, "/debug/alloc?mb=x")[0] == 400


@pytest.mark.parametrize("path, template", [
    ("/", "/"), ("/health", "/health"), ("/cached/k1", "/cached/{key}"), ("/items/9", "/items/{id}"),
    ("/socket.io/", "/socket.io/"), ("/io", "/io"), ("/a/b/c", "unmatched"),
])
def test_route_templates_bound_label_cardinality(path, template):
    assert route_of({"PATH_INFO": path}) == template


def test_lazy_application_builds_once_per_process():
    from app.wsgi import LazyApplication
    built = []

    def factory():
        built.append(1)
        return lambda environ, start_response: (start_response("200 OK", []), [b"x"])[1]

    lazy = LazyApplication(factory)
    assert built == []
    assert call_raw(lazy, "/")[2] == b"x"
    call_raw(lazy, "/")
    assert built == [1]
    lazy.reset_after_fork()
    call_raw(lazy, "/")
    assert built == [1, 1]


def test_items_fail_fast_once_mongodb_is_known_down():
    from app.mongo import MongoHandle, settings_from_env
    from app_helpers import wait_for
    handle = MongoHandle(settings_from_env({"MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/x"}))
    app = create_app({}, mongo_handle=handle)
    try:
        assert call(app, "/health")[1]["mongodb"] == "down"      # creates the client, starts its monitor
        wait_for(handle.known_down, timeout=5, what="the monitor's first failed check")
        with mongo_server_selections() as selections:
            status, body = call(app, "/items/1")
        assert selections == []       # answered without waiting serverSelectionTimeoutMS (2 s)
        assert status == 503 and body == {"error": "mongodb_unavailable", "message": "MongoUnavailable"}
    finally:
        handle.close()
