"""Real gunicorn (gevent workers) serving app.wsgi:application, with a real Redis."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from app.monitoring import collect_text
from app.wsgi import compute

from app_helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet_of_one(gunicorn_factory, redis_server, tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir()
    g = gunicorn_factory({"REDIS_URL": redis_server.url, "PROMETHEUS_MULTIPROC_DIR": str(prom),
                          "ULTRASCALE_INSTANCE": "4", "ULTRASCALE_TEST_ENDPOINTS": "1"}, workers=2)
    return g, prom, redis_server


def worker_pids(g, n=2, timeout=10):
    pids = set()
    wait_for(lambda: pids.add(g.get("/health")[1]["pid"]) or len(pids) >= n, timeout=timeout,
             interval=0.01, what=f"{n} distinct workers answering")
    return pids


def test_health_cached_and_metrics_files_under_real_gunicorn(fleet_of_one):
    g, prom, redis_server = fleet_of_one
    status, health = g.get("/health")
    assert status == 200
    assert (health["instance"], health["port"], health["redis"], health["mongodb"]) == \
        (4, g.port, "ok", "not_configured")

    status, body = g.get("/cached/alpha")
    assert status == 200 and body["value"] == compute("alpha") and body["source"] == "loader"
    # The other worker has its own memory tier: it finds the value in Redis.
    sources = {g.get("/cached/alpha")[1]["source"] for _ in range(30)}
    assert sources <= {"memory", "redis"} and "loader" not in sources
    assert redis_server.client().exists("ultrascale:cache:cached:alpha")

    pids = worker_pids(g)
    files = set(os.listdir(prom))
    for pid in pids:
        assert f"counter_{pid}.db" in files and f"histogram_{pid}.db" in files
    text = collect_text(str(prom)).decode()
    line = next(l for l in text.splitlines()
                if l.startswith("ultrascale_http_requests_total{") and 'route="/cached/{key}"' in l
                and 'status="2xx"' in l)
    assert float(line.rsplit(" ", 1)[1]) == 31
    assert "ultrascale_cache_misses_total 1.0" in text


def in_flight(prom) -> float:
    """The fleet's http_requests_in_flight gauge (livesum over the live workers' files)."""
    text = collect_text(str(prom)).decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ultrascale_http_requests_in_flight"))


def test_io_requests_overlap_in_gevent_workers(fleet_of_one):
    g, prom, _ = fleet_of_one
    results = []

    def one():
        results.append(g.get("/io?ms=3000", timeout=30)[0])

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    try:
        # Seen, not timed: 20 requests in flight at once on 2 workers is 10 in one worker, which
        # a worker serving one request at a time (sync) or a few threads (gthread) never holds.
        wait_for(lambda: in_flight(prom) >= 20, timeout=30, interval=0.05,
                 what="20 of the 40 requests in flight at once on 2 workers")
    finally:
        for t in threads:
            t.join(60)
    assert results == [200] * 40


def test_killed_worker_is_marked_dead_in_metrics_dir_and_replaced(fleet_of_one):
    g, prom, _ = fleet_of_one
    pids = worker_pids(g)
    victim = sorted(pids)[0]
    assert os.path.exists(prom / f"gauge_livesum_{victim}.db")
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(prom / f"gauge_livesum_{victim}.db"), timeout=10,
             what="child_exit to mark the dead worker")
    new = worker_pids(g, n=2)
    assert victim not in new


def test_debug_alloc_grows_one_workers_rss(fleet_of_one):
    import psutil
    g, _, _ = fleet_of_one
    status, body = g.get("/debug/alloc?mb=50")
    assert status == 200
    rss = psutil.Process(body["pid"]).memory_info().rss
    assert rss >= 50 * 1024 * 1024
    assert body["rss_bytes"] >= 50 * 1024 * 1024


def test_redis_down_under_gunicorn_health_stays_200_and_reports_down(fleet_of_one):
    g, _, redis_server = fleet_of_one
    redis_server.stop()
    misses = iter(range(10_000))

    def both_report_down():
        # A worker learns Redis is down from its own Redis traffic (health does no I/O), and
        # gunicorn does not spread requests evenly: keep sending misses until both have had some.
        for _ in range(5):
            assert g.get(f"/cached/down{next(misses)}")[0] == 200
        states = {}
        for _ in range(20):
            _, h = g.get("/health")
            states[h["pid"]] = h["redis"]
        return len(states) == 2 and set(states.values()) == {"down"}

    wait_for(both_report_down, timeout=10, what="every worker to report redis down")
    # /health makes no Redis round trip (that would count a Redis error in the worker answering):
    # each worker's count stays as it was over 20 health checks
    errors: dict[int, set] = {}
    for _ in range(20):
        status, h = g.get("/health")
        assert status == 200 and h["redis"] == "down"
        errors.setdefault(h["pid"], set()).add(h["cache"]["errors"]["redis"])
    assert all(len(counts) == 1 for counts in errors.values()), errors
