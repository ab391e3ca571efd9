"""A broken nginx configuration never takes the site down (issue 3, point 3): the upstream file
is restored, nginx keeps serving the old upstream, /health, the events and the log say so, and
the next attempt after the configuration is mended succeeds."""
from __future__ import annotations

import json
import time

import pytest

from support.harness import http_get

pytestmark = pytest.mark.integration


def test_a_failed_check_keeps_the_old_upstream_serving_and_is_reported(make_daemon):
    # upstream_servers: ready -- the mode where a scale rewrites the upstream and reloads nginx
    d = make_daemon({"nginx": {"upstream_servers": "ready"}}).start()
    conf = d.tmp / "state" / "nginx" / "conf" / "nginx.conf"
    upstream = d.tmp / "state" / "nginx" / "conf" / "upstream.conf"
    good_conf, old_upstream = conf.read_text(), upstream.read_bytes()
    conf.write_text(good_conf.replace("http {", "http {\n    bogus_directive on;", 1))
    try:
        assert d.ctl("scale", "3", "--no-wait").returncode == 0
        d.wait_until(lambda f: len(f["instances"]) == 3 and f["instances"][2]["state"] == "running",
                     timeout=20, what="third instance running")
        d.wait_until(lambda f: f["upstream"]["ok"] is False, timeout=10, what="upstream failure")
        status, health = d.api("GET", "/health")
        assert status == 503 and any("upstream update failed" in r for r in health["reasons"])
        assert "bogus_directive" in health["upstream"]["error"]
        assert health["nginx"]["last_ok"] is False and health["nginx"]["running"]
        assert upstream.read_bytes() == old_upstream, "the previous upstream file was restored"
        ports = {json.loads(http_get(d.nginx_port)[1])["port"] for _ in range(20)}
        assert ports == {d.base_port, d.base_port + 1}, "nginx keeps serving the old upstream"
        assert not d.fleet()["instances"][2]["in_upstream"]
        assert any(e["event"] == "nginx.reload_failed" for e in d.events("nginx"))
        assert "upstream.failed" in d.log_path.read_text()
    finally:
        conf.write_text(good_conf)
    d.wait_until(lambda f: f["upstream"]["ok"] and f["ready"] == 3, timeout=20, what="retry after the fix")
    ports = {json.loads(http_get(d.nginx_port)[1])["port"] for _ in range(30)}
    assert ports == {d.base_port + k for k in range(3)}
    assert d.api("GET", "/health")[0] == 200


def test_with_the_static_range_a_broken_nginx_conf_does_not_stop_a_scale(make_daemon):
    # upstream_servers: range (the default): nginx already lists every port, so the new instance
    # takes traffic through its socket's gate without nginx being checked or reloaded.
    d = make_daemon().start()
    conf = d.tmp / "state" / "nginx" / "conf" / "nginx.conf"
    reloads = d.api("GET", "/health")[1]["nginx"]["reload_count"]
    good_conf = conf.read_text()
    conf.write_text(good_conf.replace("http {", "http {\n    bogus_directive on;", 1))
    try:
        assert d.ctl("scale", "3").returncode == 0
        ports: set[int] = set()
        deadline = time.monotonic() + 30     # nginx tries a port it found closed again after fail_timeout
        while ports != {d.base_port + k for k in range(3)} and time.monotonic() < deadline:
            ports.add(json.loads(http_get(d.nginx_port)[1])["port"])
        assert ports == {d.base_port + k for k in range(3)}
        health = d.api("GET", "/health")[1]
        assert health["nginx"]["reload_count"] == reloads and health["upstream"]["ok"] is not False
    finally:
        conf.write_text(good_conf)
