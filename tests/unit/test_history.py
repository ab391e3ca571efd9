"""The dashboard's history (ultrascaled/observe/history.py): bounded, and traffic from metric scrapes
computed per instance and for the fleet the way alerts compute it (restarts included)."""
from __future__ import annotations

import asyncio

from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.observe.history import History, MetricsTraffic
from ultrascaled.observe.metric_math import LATENCY_BUCKET, REQUESTS


def scrape(ok: float, errors: float, fast: float = 0, slow: float = 0) -> dict:
    """One instance's flattened metrics: requests by status, latency buckets (0.1 s, 1 s, +Inf)."""
    return {REQUESTS: {frozenset({("status", "2xx")}): ok, frozenset({("status", "5xx")}): errors},
            LATENCY_BUCKET: {frozenset({("le", "0.1")}): fast, frozenset({("le", "1.0")}): fast + slow,
                             frozenset({("le", "+Inf")}): fast + slow}}


def test_windows_per_instance_and_for_the_fleet_with_a_restarted_instance():
    src = MetricsTraffic(dict, lambda path: [])
    src.add(0.0, {8001: scrape(100, 0, 100, 0), 8002: scrape(50, 5, 50, 5)})
    src.add(5.0, {8001: scrape(150, 10, 150, 10), 8002: scrape(3, 1, 3, 1)})  # 8002 restarted: counts from 0
    a, b, fleet = src.window(8001, 5), src.window(8002, 5), src.window(None, 5)
    assert (a.requests, a.errors_5xx, a.seconds) == (60, 10, 5.0)
    assert (b.requests, b.errors_5xx) == (4, 1)
    assert (fleet.requests, fleet.errors_5xx) == (64, 11)
    assert abs(fleet.rate_5xx - 11 / 64) < 1e-9
    assert 0.1 < a.p95 <= 1.0 and fleet.p95 is not None
    assert src.window(9999, 5).requests == 0 and src.window(9999, 5).p95 is None


def test_a_window_needs_two_scrapes_and_picks_the_one_closest_to_its_length():
    src = MetricsTraffic(dict, lambda path: [])
    assert src.window(None, 5) == TrafficWindow()
    for t, n in ((0, 0), (5, 10), (10, 30), (15, 60)):
        src.add(float(t), {1: scrape(n, 0)})
    assert src.window(1, 5).requests == 30
    assert src.window(1, 10).requests == 50 and src.window(1, 10).seconds == 10


def test_refresh_reads_each_instance_folder_off_the_loop():
    reads = []
    src = MetricsTraffic(lambda: {8001: "/m/8001"}, lambda path: reads.append(path) or [],
                         clock=iter([1.0, 2.0]).__next__)
    asyncio.run(src.refresh())
    asyncio.run(src.refresh())
    assert reads == ["/m/8001", "/m/8001"] and src.window(8001, 1).requests == 0


class Flat:
    def window(self, port, seconds):
        return TrafficWindow(requests=seconds, seconds=seconds)


def test_the_ring_never_holds_more_than_its_span_and_keeps_the_newest():
    ticks = iter(range(10_000))
    snap = {"desired": 16, "ready": 16, "memory": {"total_rss_bytes": 1, "budget_bytes": 2},
            "instances": [{"port": 8000 + i, "pid": 1} for i in range(16)]}
    h = History(Flat(), lambda: snap, seconds=900, interval=5, wall=lambda: float(next(ticks)))
    assert h.size == 181
    for _ in range(400):
        h.record()
    assert len(h.points) == 181 and h.points[0].t == 219 and h.points[-1].t == 399
    p = h.since(398)[0]
    assert p["fleet"]["rps"] == 1 and p["fleet"]["instances"] == 16 and p["fleet"]["target"] is None
    assert len(p["ports"]) == 16


def test_a_failing_source_does_not_end_the_loop():
    class Broken:
        def window(self, port, seconds):
            raise OSError("folder gone")

    h = History(Broken(), lambda: {"instances": []}, seconds=60, interval=0.001)
    beats = []

    async def go():
        task = asyncio.create_task(h.run(beat=lambda: beats.append(1)))
        while len(beats) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
    asyncio.run(go())
    assert h.errors >= 3 and "folder gone" in h.last_error


class Log:
    active = True

    def window(self, port, seconds):
        return TrafficWindow(requests=7, seconds=seconds)


def test_nginx_traffic_while_its_log_is_read_else_the_apps_metrics():
    from ultrascaled.observe.history import FirstActive
    refreshed = []

    class Metrics(Flat):
        label = "app metrics"

        async def refresh(self):
            refreshed.append(1)

    log, src = Log(), None
    src = FirstActive(log, Metrics())
    asyncio.run(src.refresh())
    assert src.window(None, 5).requests == 7 and src.label == "nginx access log" and refreshed == []
    log.active = False
    asyncio.run(src.refresh())
    assert src.window(None, 5).requests == 5 and src.label == "app metrics" and refreshed == [1]
