"""Metrics, alerts (to a real webhook receiver), instance logs and their rotation, end to end."""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.harness import http_get

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver():
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_expose_the_fleet_and_each_instances_requests(daemon):
    port = daemon.base_port
    for _ in range(25):
        assert http_get(port, "/cached/k1")[0] == 200
    deadline = time.monotonic() + 5  # the renderer may answer from its 0.5 s cache
    while True:
        req = urllib.request.urlopen(daemon.api_url + "/metrics", timeout=10)
        text = req.read().decode()
        counts = [line for line in text.splitlines() if line.startswith("ultrascale_http_requests_total")
                  and f'instance="{port}"' in line and "/cached/" in line]
        if sum(float(line.rsplit(" ", 1)[1]) for line in counts) >= 25 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts and sum(float(line.rsplit(" ", 1)[1]) for line in counts) == 25
    assert req.headers["Content-Type"].startswith("text/plain")
    assert "ultrascale_fleet_desired_instances 2.0" in text
    assert "ultrascale_fleet_ready_instances 2.0" in text
    assert f'ultrascale_instance_state{{port="{port}",state="running"}} 1.0' in text
    assert "ultrascale_nginx_up 1.0" in text
    assert f'ultrascale_cache_hits_total{{instance="{port}"' in text


def test_an_alert_fires_after_its_duration_reaches_the_webhook_and_ultrascalectl(make_daemon, receiver):
    url, got = receiver
    d = make_daemon({"alerts": {"evaluation_interval": 0.5, "min_requests": 1, "p95_latency_seconds": 0.02,
                                "p95_latency_for": 0, "cpu_percent": None, "cache_hit_rate": None,
                                "webhook_url": url}}).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(e["event"] == "alert.firing" for e in d.events("alert")):
        http_get(d.nginx_port, "/io?ms=60")
    firing = [e for e in d.events("alert.firing")]
    assert firing and firing[0]["alert"] == "p95_latency", d.events("alert")
    out = d.ctl("alerts")
    assert out.returncode == 1 and "FIRING p95_latency" in out.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not got:
        time.sleep(0.1)
    assert got and got[0]["alert"] == "p95_latency" and got[0]["status"] == "firing"
    assert got[0]["fleet"] == d.name and got[0]["value"] > got[0]["threshold"] == 0.02


def test_logs_prints_an_instances_output_and_rotation_keeps_backups(make_daemon):
    d = make_daemon({"logs": {"max_bytes": 4096, "backups": 2}, "memory": {"sample_interval": 0.2}},
                    nginx=False).start()
    out = d.ctl("logs", str(d.base_port), "-n", "20")
    assert out.returncode == 0 and "Booting worker" in out.stdout, out.stdout
    assert d.ctl("logs", "1").returncode == 4
    log = d.tmp / "log" / f"instance-{d.base_port}.log"
    with open(log, "a") as f:  # as if the instance had printed a lot
        f.write("x" * 100 + "\n" * 1 + ("filler line\n" * 800))
    d.wait_until(lambda f: log.stat().st_size < 4096 and (log.parent / (log.name + ".1")).exists(),
                 timeout=15, what="rotation")
    assert any(e["event"] == "instance.log_rotated" for e in d.events("instance.log"))
    assert http_get(d.base_port)[0] == 200
