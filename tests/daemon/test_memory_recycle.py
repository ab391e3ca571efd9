"""A worker that grows past its limit is recycled alone and gracefully, with no failed request."""
from __future__ import annotations

import time

import pytest

from support.harness import http_get, pid_alive
from loadtest import BackgroundLoad

pytestmark = pytest.mark.integration

SPEC = {"memory": {"worker_limit_mb": 120, "samples_over": 2, "sample_interval": 0.2}}


def test_a_leaking_worker_is_recycled_alone_under_load_with_no_failed_request(make_daemon):
    d = make_daemon(SPEC).start()
    fleet = d.wait_until(lambda f: all(i["workers"] for i in f["instances"]), timeout=10, what="sampled")
    victim, other = fleet["instances"]
    old_worker = victim["workers"][0]["pid"]
    other_pids = (other["pid"], other["workers"][0]["pid"])
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=100, duration_limit=60, timeout=5.0)
    load.start()
    try:
        load.wait_for_ok(200, timeout=30)
        status, _ = http_get(victim["port"], "/debug/alloc?mb=150", timeout=10)
        assert status == 200
        d.wait_until(lambda f: any(e["event"] == "watchdog.recycled" for e in d.events("watchdog")),
                     timeout=15, what="recycle")
        fleet = d.wait_until(lambda f: f["instances"][0]["workers"]
                             and f["instances"][0]["workers"][0]["pid"] != old_worker
                             and f["instances"][0]["state"] == "running", timeout=30, what="fresh worker")
        time.sleep(0.5)
    finally:
        result = load.stop()
    assert result.failed == 0, (result.status_counts, result.error_counts, result.error_samples[:5])
    event = [e for e in d.events("watchdog.recycled")][0]
    assert (event["pid"], event["port"], event["role"]) == (old_worker, victim["port"], "worker")
    assert event["value_bytes"] > event["limit_bytes"] == 120 * 1024 * 1024
    assert not pid_alive(old_worker)
    inst = fleet["instances"][0]
    assert inst["pid"] == victim["pid"], "the master stayed; only the worker was replaced"
    assert inst["workers"][0]["rss"] < 120 * 1024 * 1024
    assert (fleet["instances"][1]["pid"], fleet["instances"][1]["workers"][0]["pid"]) == other_pids
    assert http_get(victim["port"])[0] == 200
