"""The autoscaler in a real daemon: real gunicorn instances behind the managed nginx, real load
from the built-in load tester. The fleet follows the in-flight requests up and back down with no
failed request; a manual scale pauses it; the CLI and /metrics show the figures."""
from __future__ import annotations

import urllib.request

import pytest

from loadtest import BackgroundLoad

pytestmark = pytest.mark.integration

# In-flight requests per worker is the signal: with /io?ms=200 it follows the users, whatever
# else the shared machine runs (CPU would not). One worker per instance (TEST_TUNING).
SPEC = {
    "instances": {"count": 1, "min": 1, "max": 4},
    "autoscale": {
        "enabled": True, "sync_period_seconds": 1, "metrics_window_seconds": 2,
        "stale_after_seconds": 5, "host_cpu_saturation_percent": None,
        "target": {"cpu_utilization": None, "in_flight_per_worker": 4},
        "behavior": {"scale_down": {"stabilization_window_seconds": 8}},
    },
}


def test_the_fleet_follows_the_load_up_and_down_with_no_failed_request(make_daemon):
    d = make_daemon(SPEC).start()
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=40, duration_limit=90,
                          paths=[("/io?ms=200", 1.0)], timeout=5.0)
    load.start()
    try:
        assert load.wait_for_ok(50, timeout=30)
        # 40 in flight / (1 x 1 worker) = 40 per worker, 10 x the target: up to max_replicas 4
        d.wait_until(lambda f: f["desired"] == 4 and f["ready"] == 4, timeout=60, what="scaled to 4")
        with urllib.request.urlopen(d.api_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'ultrascale_autoscale_target{signal="in_flight_per_worker"} 4.0' in text
        assert 'ultrascale_autoscale_signal{signal="in_flight_per_worker"}' in text
    finally:
        result = load.stop()
    assert result.failed == 0, (result.status_counts, result.error_counts, result.error_samples[:5])
    up = d.events("autoscale.scale_up")
    assert up and up[0]["signals"]["in_flight_per_worker"]["value"] > 4
    scales = [e for e in d.events("fleet.scale") if e.get("source") == "autoscale"]
    assert scales and all(e["desired"] <= 4 for e in scales)
    # idle: in flight 0 -> min_replicas, once the 8 s window has passed
    d.wait_until(lambda f: f["desired"] == 1 and f["ready"] == 1 and len(f["instances"]) == 1,
                 timeout=90, what="back to 1")
    down = d.events("autoscale.scale_down")
    assert down and down[-1]["desired"] == 1


def test_a_manual_scale_pauses_autoscaling_and_the_cli_shows_it(make_daemon):
    d = make_daemon(SPEC).start()
    out = d.ctl("scale", "2")
    assert out.returncode == 0, out.stderr
    assert "paused until `ultrascalectl autoscale resume`" in out.stderr
    status = d.ctl("autoscale", "status")
    assert status.returncode == 0 and "PAUSED until resumed (manual scale to 2)" in status.stdout
    assert "in_flight_per_worker" in status.stdout
    # paused: the idle fleet stays at 2 past the scale-down window
    d.wait_until(lambda f: any(e["event"] == "autoscale.hold" and "paused" in e["reason"]
                               for e in d.events("autoscale.hold")), timeout=30, what="a paused hold")
    assert d.fleet()["desired"] == 2
    resumed = d.ctl("autoscale", "resume")
    assert resumed.returncode == 0 and "autoscale: on" in resumed.stdout
    d.wait_until(lambda f: f["desired"] == 1 and f["ready"] == 1, timeout=60, what="back to 1")
    pause = d.ctl("autoscale", "pause", "--for", "10m", "--json")
    assert pause.returncode == 0 and '"paused": true' in pause.stdout


def test_a_reload_turns_autoscaling_on_and_a_pause_survives_a_daemon_restart(make_daemon):
    off = {**SPEC, "autoscale": {**SPEC["autoscale"], "enabled": False}}
    d = make_daemon(off).start()
    assert "autoscale: off" in d.ctl("autoscale", "status").stdout
    d.spec["autoscale"]["enabled"] = True
    d.write_spec()
    assert d.ctl("reload").returncode == 0
    d.wait_until(lambda f: any("steady" in e["reason"] for e in d.events("autoscale.hold")),
                 timeout=30, what="the autoscaler deciding after the reload")
    assert d.ctl("scale", "3").returncode == 0            # pauses it
    assert d.stop() == 0
    d.start()
    assert d.fleet()["desired"] == 3
    status = d.ctl("autoscale", "status", "--json")
    assert '"paused": true' in status.stdout and "manual scale to 3" in status.stdout
    d.wait_until(lambda f: any("paused" in e["reason"] for e in d.events("autoscale.hold")),
                 timeout=30, what="a paused hold after the restart")
    assert d.fleet()["desired"] == 3


def test_a_daemon_killed_after_scaling_up_keeps_the_count_and_waits_a_window_before_stepping_down(
        make_daemon):
    import time
    d = make_daemon(SPEC).start()
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=40, duration_limit=60,
                          paths=[("/io?ms=200", 1.0)], timeout=5.0)
    load.start()
    try:
        assert load.wait_for_ok(50, timeout=30)
        d.wait_until(lambda f: f["desired"] == 4 and f["ready"] == 4, timeout=60, what="scaled to 4")
        d.proc.kill()                      # the worst moment: right after scaling, under load
        d.proc.wait()
        time.sleep(1)
    finally:
        result = load.stop()
    assert result.failed == 0, (result.status_counts, result.error_counts, result.error_samples[:5])
    started = time.monotonic()
    d.start()                              # idle now: in flight 0
    assert d.fleet()["desired"] == 4, "the scaled count is kept across the kill"
    d.wait_until(lambda f: f["desired"] == 1, timeout=90, what="back to 1 after the window")
    assert time.monotonic() - started >= 8, "no step down before a full scale-down window"
