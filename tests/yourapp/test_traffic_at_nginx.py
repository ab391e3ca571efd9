"""Traffic measured at nginx for an app that knows nothing of us: a plain Flask app (no
prometheus_client, no ultrascale import) on real gunicorn behind the daemon's real nginx,
where one instance answers every request with 500 and the other takes 100 ms. The per-instance figures in /metrics and
the error-rate alert (for that instance and for the fleet) and the other's latency alert come from nginx's traffic log;
the log rotates under load without losing a line, and a port that leaves is forgotten."""
from __future__ import annotations

import os
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.harness import http_get

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def write_app(root: Path) -> Path:
    pkg = root / "plainapp"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""\
        import os
        import time

        from flask import Flask


        def create_app():
            app = Flask(__name__)
            port = os.environ.get("PORT", "")   # the instance's port (its --bind is a socket fd)
            broken = port == os.environ.get("BROKEN_PORT")
            slow = port == os.environ.get("SLOW_PORT")

            @app.route("/up")
            def up():
                return "ok"

            @app.route("/report/<int:n>")
            def report(n):
                raise RuntimeError(f"report {n} is broken")   # one route failing on every instance

            @app.route("/")
            def index():
                if broken:
                    return "this instance is broken", int(os.environ.get("BROKEN_STATUS", "500"))
                if slow:
                    time.sleep(0.1)
                return "fine"

            return app
        """))
    return root


def scrape(d) -> dict:
    text = urllib.request.urlopen(d.api_url + "/metrics", timeout=10).read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


class Traffic:
    """GETs through nginx from a thread until stopped; counts what it sent and got."""

    def __init__(self, port: int, paths=("/",), pause: float = 0.0):
        self.port, self.sent, self.statuses = port, 0, {}
        self.paths, self.pause = paths, pause
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set() and self.sent < 20000:
            status, _ = http_get(self.port, self.paths[self.sent % len(self.paths)], timeout=5)
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self._stop.wait(self.pause)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(30)


@pytest.fixture
def plain_fleet(make_daemon, tmp_path):
    d = make_daemon({
        "app": {"directory": str(write_app(tmp_path / "srv")), "module": "plainapp:create_app()",
                "config": None},
        "gunicorn": {"worker_class": "sync", "workers": 1},
        "health": {"path": "/up"},
        "logs": {"max_bytes": 4096, "backups": 2},
        "alerts": {"evaluation_interval": 1, "error_rate": 0.2, "error_rate_for": 0, "min_requests": 5,
                   "p95_latency_seconds": 0.05, "p95_latency_for": 0, "cpu_percent": None,
                   "cache_hit_rate": None},
    })
    d.spec["app"]["env"]["BROKEN_PORT"] = str(d.base_port)
    d.spec["app"]["env"]["SLOW_PORT"] = str(d.base_port + 1)
    if os.geteuid() == 0:
        # nginx's workers reopen the log after a rotation; as root they would run as nobody,
        # who cannot reach pytest's 0700 folders (the daemon's own user, in production)
        d.spec["nginx"]["user"] = "root"
    d.write_spec()
    return d


def test_one_instance_answering_500_is_seen_at_nginx_with_its_alert(plain_fleet):
    d = plain_fleet.start()
    bad, good = d.base_port, d.base_port + 1
    log = d.tmp / "state" / "nginx" / "logs" / "traffic.log"
    with Traffic(d.nginx_port) as traffic:
        def firing():
            return {(a["alert"], a.get("port")) for a in d.api("GET", "/alerts")[1]["firing"]}
        deadline = time.monotonic() + 60
        while not {("error_rate", bad), ("error_rate", None), ("p95_latency", good)} <= firing():
            assert time.monotonic() < deadline, (firing(), d.log_tail())
            time.sleep(0.2)
        assert ("error_rate", good) not in firing() and ("p95_latency", bad) not in firing()
        # the traffic log rotated (logs.max_bytes is 16 KiB) while requests kept coming
        deadline = time.monotonic() + 60
        while not (log.parent / "traffic.log.1").exists():
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.2)
        time.sleep(1.0)
    assert traffic.statuses.get(500, 0) > 0 and traffic.statuses.get(200, 0) > 0, traffic.statuses

    # every request sent is one line read, through the rotations: none lost, none twice
    deadline = time.monotonic() + 30
    while value(m := scrape(d), "ultrascale_traffic_log_lines_total") < traffic.sent:
        assert time.monotonic() < deadline, (value(m, "ultrascale_traffic_log_lines_total"), traffic.sent)
        time.sleep(0.2)
    assert value(m, "ultrascale_traffic_log_lines_total") == traffic.sent
    assert value(m, "ultrascale_traffic_log_rotations_total") >= 1
    assert value(m, "ultrascale_traffic_log_malformed_total") == 0
    assert value(m, "ultrascale_upstream_requests_total", port=bad, status="5xx") == traffic.statuses[500]
    assert value(m, "ultrascale_upstream_requests_total", port=bad, status="2xx") == 0
    assert value(m, "ultrascale_upstream_requests_total", port=good, status="2xx") == traffic.statuses[200]
    assert value(m, "ultrascale_upstream_requests_total", port=good, status="5xx") == 0
    assert value(m, "ultrascale_nginx_requests_total", status="5xx") == traffic.statuses[500]
    assert value(m, "ultrascale_upstream_response_seconds_count", port=good) == traffic.statuses[200]
    # the windows end with the last complete second read: wait until it holds every request
    d.wait_until(lambda f: d.api("GET", "/traffic?seconds=300")[1]["fleet"]["requests"] == traffic.sent,
                 timeout=30, what="every request in the 300 s window")
    shown = d.ctl("traffic", "--seconds", "300")             # GET /traffic through the CLI
    assert shown.returncode == 0, shown.stderr
    rows = {ln.split()[0]: ln.split() for ln in shown.stdout.splitlines()[2:]}
    assert rows[str(bad)][4] == "100.0%" and rows[str(good)][4] == "0.0%", shown.stdout
    assert int(rows["fleet"][1]) == traffic.sent and int(rows["fleet"][3]) == traffic.statuses[500]
    fired = [e for e in d.events("alert.firing") if e.get("alert") == "error_rate"]
    assert any(e.get("port") == bad and "at nginx" in e["message"] for e in fired), fired
    assert not any(e.get("port") == good for e in fired), fired

    # with no traffic the alerts resolve (fewer than min_requests per interval)
    d.wait_until(lambda f: not d.api("GET", "/alerts")[1]["firing"], timeout=30, what="alerts resolved")

    # the port that leaves is forgotten: its series go, and so would its alert
    assert d.api("POST", "/fleet/scale", {"instances": 1})[0] == 202
    d.wait_until(lambda f: len(f["instances"]) == 1, timeout=60, what="scaled to 1")
    gone = ({i["port"] for i in d.fleet()["instances"]} ^ {bad, good}).pop()
    deadline = time.monotonic() + 30
    while any(dict(k[1]).get("port") == str(gone) for k in scrape(d) if k[0].startswith("ultrascale_upstream_")):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_try_nginx_retried_counts_for_the_instance_that_failed_it(plain_fleet):
    """The broken instance answers 503, which nginx retries on the other one
    (proxy_next_upstream http_503): every client gets 200, so the fleet has no error, but each
    request the broken instance saw is one 5xx try of its own ($upstream_addr "a, b")."""
    d = plain_fleet
    # upstream_servers: ready renders max_fails=0: every request tries the broken instance first
    # (with the static range nginx would skip it for fail_timeout after its first 503)
    d.spec["nginx"]["upstream_servers"] = "ready"
    d.spec["app"]["env"]["BROKEN_STATUS"] = "503"
    d.spec["app"]["env"]["SLOW_PORT"] = ""
    d.spec["logs"]["max_bytes"] = 50 << 20      # no rotation: every line stays in the file
    d.write_spec()
    d.start()
    bad, good = d.base_port, d.base_port + 1
    with Traffic(d.nginx_port) as traffic:
        deadline = time.monotonic() + 60
        while ("error_rate", bad) not in {(a["alert"], a.get("port"))
                                          for a in d.api("GET", "/alerts")[1]["firing"]}:
            assert time.monotonic() < deadline, d.log_tail()
            time.sleep(0.2)
        firing = {(a["alert"], a.get("port")) for a in d.api("GET", "/alerts")[1]["firing"]}
        assert ("error_rate", None) not in firing and ("error_rate", good) not in firing, firing
    assert traffic.statuses == {200: traffic.sent}, traffic.statuses
    deadline = time.monotonic() + 30
    while value(m := scrape(d), "ultrascale_traffic_log_lines_total") < traffic.sent:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    retried = value(m, "ultrascale_upstream_requests_total", port=bad, status="5xx")
    assert retried > 0 and value(m, "ultrascale_upstream_requests_total", port=bad, status="2xx") == 0
    assert value(m, "ultrascale_upstream_requests_total", port=good, status="2xx") == traffic.sent
    assert value(m, "ultrascale_nginx_requests_total", status="2xx") == traffic.sent
    assert value(m, "ultrascale_nginx_requests_total", status="5xx") == 0
    lines = [ln for f in sorted((d.tmp / "state" / "nginx" / "logs").glob("traffic.log*"))
             for ln in f.read_text().splitlines()]
    assert sum(f"127.0.0.1:{bad}, 127.0.0.1:{good}" in ln and '"u":"503, 200"' in ln
               for ln in lines) == retried


def test_one_route_failing_at_low_traffic_fires_route_errors_and_not_error_rate(plain_fleet):
    d = plain_fleet
    d.spec["app"]["env"]["BROKEN_PORT"] = d.spec["app"]["env"]["SLOW_PORT"] = "none"
    d.spec["alerts"].update(route_error_rate_for=0, route_min_requests=3)
    d.write_spec()
    d.start()
    with Traffic(d.nginx_port) as fine, Traffic(d.nginx_port, ("/report/1", "/report/22"), pause=0.2) as bad:
        def firing():
            return {(a["alert"], a.get("route")) for a in d.api("GET", "/alerts")[1]["firing"]}
        deadline = time.monotonic() + 60
        while ("route_errors", "GET /report/:id") not in firing():
            assert time.monotonic() < deadline, (firing(), d.log_tail())
            time.sleep(0.2)
        assert not any(name == "error_rate" for name, _ in firing()), firing()
    assert bad.statuses.get(500, 0) > 0 and fine.statuses.get(500, 0) == 0, (bad.statuses, fine.statuses)
    assert bad.sent * 20 < fine.sent, (bad.sent, fine.sent)   # under 5 %: far under error_rate (20 % here)
