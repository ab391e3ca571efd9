"""Warm spares on a real daemon (docs/spares.md): the reference app with a 3 s boot
(ULTRASCALE_BOOT_DELAY), instances.spares: 1, a bounded load through nginx from 127.0.0.1. A
kill -9 of a serving master fails no request, its port is served again by the spare within
milliseconds (the takeover event against the kill's time), the upstream never changes (no nginx
reload), and a new spare boots behind it."""
from __future__ import annotations

import os
import signal
import time

import pytest

from loadtest import BackgroundLoad

pytestmark = pytest.mark.integration

BOOT = 3.0


def test_kill_9_under_load_with_a_3s_boot_is_taken_over_by_the_spare_and_fails_nothing(make_daemon):
    d = make_daemon({"instances": {"count": 2, "spares": 1},
                     "gunicorn": {"worker_class": "sync", "workers": 2},
                     "app": {"env": {"ULTRASCALE_BOOT_DELAY": str(BOOT)}},
                     "health": {"start_timeout": 30}}).start()
    f = d.wait_until(lambda f: f["spares"] and f["spares"][0]["ready"], timeout=30, what="a ready spare")
    spare = f["spares"][0]
    assert spare["port"] == d.base_port + 6, "past the range nginx lists (base_port + max)"
    assert f["ready"] == 2 and spare["port"] not in f["upstream"]["servers"]
    reloads = len(d.events("nginx.reloaded"))
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=200, duration_limit=60, timeout=5.0, procs=1)
    load.start()
    try:
        load.wait_for_ok(500, timeout=30)
        victim = f["instances"][0]
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        f = d.wait_until(lambda f: f["instances"][0]["pid"] == spare["pid"], timeout=5, what="the takeover")
        assert f["instances"][0]["serving"] and f["ready"] == 2
        take = d.events("instance.takeover")[-1]
        assert (take["port"], take["spare_port"], take["pid"]) == (victim["port"], spare["port"], spare["pid"])
        assert take["reason"] == "crash: killed by SIGKILL"
        back_ms = (take["time"] - killed_at) * 1000
        assert back_ms <= 100, f"capacity back {back_ms:.0f} ms after the kill"
        f = d.wait_until(lambda f: f["spares"][0]["ready"] and f["spares"][0]["pid"] != spare["pid"],
                         timeout=BOOT + 15, what="a new spare behind it")
        time.sleep(0.5)
    finally:
        result = load.stop()
    assert result.failed == 0, (result.status_counts, result.error_counts, result.error_samples[:5])
    assert result.ok >= 1000
    assert len(d.events("nginx.reloaded")) == reloads, "no nginx reload"
    # the taken-over master's workers serve the port: the answers name its pids
    assert d.fleet()["instances"][0]["pid"] == spare["pid"]
    print(f"\ntakeover: capacity back {back_ms:.1f} ms after kill -9; {result.ok} ok, 0 failed")


def test_a_daemon_killed_after_a_takeover_adopts_the_taken_over_master_and_ends_the_waiting_spare(make_daemon):
    d = make_daemon({"instances": {"count": 2, "spares": 1},
                     "gunicorn": {"worker_class": "sync", "workers": 1},
                     "app": {"env": {"ULTRASCALE_BOOT_DELAY": "1"}}}).start()
    f = d.wait_until(lambda f: f["spares"] and f["spares"][0]["ready"], timeout=30, what="a ready spare")
    spare = f["spares"][0]["pid"]
    os.kill(f["instances"][0]["pid"], signal.SIGKILL)
    f = d.wait_until(lambda f: f["instances"][0]["pid"] == spare and f["spares"][0]["ready"], timeout=30,
                     what="the takeover and a new spare")
    waiting = f["spares"][0]["pid"]
    d.proc.kill()
    d.proc.wait()
    d.start()
    f = d.wait_until(lambda f: f["spares"] and f["spares"][0]["ready"], timeout=30, what="a ready spare again")
    assert [(e["pid"], e["port"]) for e in d.events("adopt.spare_took_over")] == [(spare, d.base_port)], \
        "the master that took over port 0 was adopted as its instance (by the socket it holds)"
    assert f["instances"][0]["serving"] and f["spares"][0]["pid"] != waiting
    # it runs a spare's command line (its port's marker, the shim): rolled like any adopted master
    # whose command changed, here by the new spare at once
    d.wait_until(lambda f: not f["instances"][0]["restart_pending"] and f["instances"][0]["pid"] != spare,
                 timeout=30, what="the adopted master rolled")
    assert [e["pid"] for e in d.events("adopt.spare_stopped")] == [waiting]
    assert not any(p.pid == waiting for p in d.fleet_processes())
    assert d.stop() == 0
    assert not d.fleet_processes(), "a stopped daemon leaves neither instances nor spares behind"
