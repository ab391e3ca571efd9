"""GET /traffic: the figures measured at nginx (ultrascaled/observe/accesslog.py), for the fleet and
each instance, over `seconds`; off when the fleet has no traffic source."""
from __future__ import annotations

from api_helpers import BASE
from ultrascaled.observe.accesslog import TrafficStore, parse_line

T0 = 1_700_000_000.0


def line(port: int, status: int, seconds: float) -> bytes:
    return (b'{"t":%.3f,"s":%d,"a":"127.0.0.1:%d","u":"%d","ut":"%.3f","rt":%.3f}'
            % (T0 - 2, status, port, status, seconds, seconds))


def test_traffic_per_instance_and_for_the_fleet(api, fleet):
    store = TrafficStore(clock=lambda: T0)
    store.add([parse_line(line(BASE, 500, 0.01))] * 3 + [parse_line(line(BASE + 1, 200, 0.02))] * 5)
    fleet.traffic = store
    status, body, _ = api.req("GET", "/traffic?seconds=10")
    assert status == 200 and body["enabled"] is True and body["seconds"] == 10
    assert body["fleet"]["requests"] == 8 and body["fleet"]["errors_5xx"] == 3
    by_port = {i["port"]: i for i in body["instances"]}
    assert by_port[BASE]["rate_5xx"] == 1.0 and by_port[BASE + 1]["rate_5xx"] == 0.0
    assert 0.015 <= by_port[BASE + 1]["p95"] <= 0.02
    assert api.req("GET", "/traffic?seconds=1")[1]["fleet"]["requests"] == 0   # 2 s ago: outside


def test_traffic_off_and_bad_seconds(api, fleet):
    status, body, _ = api.req("GET", "/traffic")
    assert status == 200 and body == {"enabled": False, "seconds": 60, "fleet": None, "instances": []}
    for bad in ("0", "3601", "-1", "abc", "1.5"):
        assert api.code("GET", f"/traffic?seconds={bad}") == (400, "bad_request")
