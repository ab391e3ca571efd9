"""Scaling with `nginx.upstream_servers: range` (the default): nginx lists every port of the
range once, and an instance joins and leaves by its socket's gate, so scaling 2 -> 4 -> 2 reloads
nginx not once, and clients that never retry -- keep-alive POSTs as `wrk` sends them, and a new
connection per request -- see no failure, under load."""
from __future__ import annotations

import pytest

from loadtest import BackgroundLoad
from support.clients import NoRetryClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_scale_2_4_2_twice_under_load_reloads_nothing_and_fails_no_request(make_daemon):
    # graceful_timeout 200 s: a stopping instance that waited for nginx's idle keep-alive
    # connections (nginx no longer sends there once the gate closed) would outlast this test
    d = make_daemon({"instances": {"count": 2}, "gunicorn": {"graceful_timeout": 200}}).start()
    reloads = d.api("GET", "/health")[1]["nginx"]["reload_count"]
    load = BackgroundLoad(f"http://127.0.0.1:{d.nginx_port}/", users=50, duration_limit=120, timeout=10.0, procs=1)
    clients = [NoRetryClient(d.nginx_port, "POST", "/health", body=b"x" * 100, keepalive=True, limit=120,
                             expect=405)
               for _ in range(2)] + [NoRetryClient(d.nginx_port, limit=120)]
    load.start()
    try:
        load.wait_for_ok(200, timeout=30)
        for c in clients:
            c.start()
        for count in (4, 2, 4, 2):
            assert d.ctl("scale", str(count), timeout=100).returncode == 0
            d.wait_until(lambda f: len(f["instances"]) == count and f["ready"] == count
                         and sorted(f["upstream"]["servers"]) == [d.base_port + k for k in range(count)],
                         timeout=60, what=f"{count} instances serving")
        served = {i["port"] for i in d.fleet()["instances"]}
        assert served == {d.base_port, d.base_port + 1}
    finally:
        for c in clients:
            c.stop()
        result = load.stop()
    assert d.api("GET", "/health")[1]["nginx"]["reload_count"] == reloads, "no nginx reload"
    for c in clients:
        assert not c.failures, c.failures[:5]
        assert c.ok > 20
    assert result.failed == 0, (result.status_counts, result.error_counts, result.error_samples[:5])
    assert result.reconnects == 0, "no keep-alive connection was closed under the load tester"
    # the ports that stopped refuse at once (their sockets are closed), the gates of the
    # running ones are open: nginx reaches both instances
    gates = [e for e in d.events("upstream") if e["event"] == "upstream.gate_failed"]
    assert not gates


def test_a_second_fleet_on_overlapping_ports_is_noticed_and_gets_none_of_the_first_ones_traffic(make_daemon):
    import json

    from support.harness import http_get
    a = make_daemon({"health": {"interval": 1}}).start()
    b = make_daemon({"instances": {"base_port": a.base_port + 4, "count": 2, "min": 1, "max": 2}}, sub="b").start()
    a.wait_until(lambda f: len(a.events("upstream.port_taken")) == 2, timeout=30, what="both ports noticed")
    taken = a.events("upstream.port_taken")
    assert sorted(e["port"] for e in taken) == [a.base_port + 4, a.base_port + 5]
    last = max(e["seq"] for e in taken)     # then the upstream is published again without them
    a.wait_until(lambda f: any(e["seq"] > last for e in a.events("upstream.applied")), timeout=30,
                 what="the upstream published without the taken ports")
    ports = {json.loads(http_get(a.nginx_port)[1])["port"] for _ in range(40)}
    assert ports == {a.base_port, a.base_port + 1}
    alerts = a.api("GET", "/alerts")[1]
    assert "port_taken" in json.dumps(alerts)
    b.stop()
    a.wait_until(lambda f: len(a.events("upstream.port_free")) == 2, timeout=30, what="ports free again")


def test_a_leaving_instance_does_not_wait_for_nginx_idle_keepalive_connections(make_daemon):
    # A burst leaves nginx with many idle keep-alive connections to every instance; once a
    # leaving instance's gate is closed nginx no longer uses them, and the instance's gevent
    # worker waits for them to close (up to graceful_timeout). nginx's short upstream
    # keepalive_timeout (4s) closes them: the scale down ends long before the 200 s here.
    import threading

    from support.harness import http_get
    d = make_daemon({"instances": {"count": 4}, "gunicorn": {"graceful_timeout": 200,
                                                               "worker_connections": 200}}).start()
    threads = [threading.Thread(target=http_get, args=(d.nginx_port, "/io?ms=300", 10)) for _ in range(120)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert d.ctl("scale", "2", "--no-wait").returncode == 0
    # (with nginx's old 60 s keepalive_timeout this took 60 s; now about 5 s)
    d.wait_until(lambda f: len(f["instances"]) == 2, timeout=40, what="the two leaving instances gone")
