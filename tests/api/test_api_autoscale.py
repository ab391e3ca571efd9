"""GET /autoscale, POST /autoscale/pause|resume, and a manual scale that pauses the autoscaler:
answers, refusals that change nothing, the same auth rules as the other routes."""
from __future__ import annotations

import pytest


class FakeAutoscaler:
    """What the handlers use of ultrascaled.supervise.autoscale_loop.Autoscaler, recording the calls."""

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.calls: list[tuple] = []
        self.paused = False

    def status(self) -> dict:
        return {"enabled": self.enabled, "paused": self.paused, "paused_reason": "", "paused_until": None,
                "min_replicas": 1, "max_replicas": 8, "current": 2, "ready": 2, "host_cpu_percent": 12.0,
                "targets": {"cpu_utilization": 70.0}, "signals": {}, "recommendation": None,
                "decisions": []}

    def pause(self, seconds, reason):
        self.calls.append(("pause", seconds, reason))
        self.paused = True
        return self.status()

    def resume(self):
        self.calls.append(("resume",))
        self.paused = False
        return self.status()

    def manual_scale(self, n):   # what the fake fleet's scale asks of it (the real one: core.autoscale)
        self.calls.append(("manual_scale", n))
        return "autoscaling is paused until `ultrascalectl autoscale resume`" if self.enabled else None

    def metric_families(self):
        from prometheus_client.metrics_core import GaugeMetricFamily
        g = GaugeMetricFamily("ultrascale_autoscale_recommendation", "x")
        g.add_metric([], 5.0)
        return [g]


@pytest.fixture
def auto(fleet):
    fleet.autoscaler = FakeAutoscaler()
    return fleet.autoscaler


def test_status_answers_the_autoscalers_figures(api, auto):
    status, body, _ = api.req("GET", "/autoscale")
    assert status == 200 and body["targets"] == {"cpu_utilization": 70.0}


@pytest.mark.parametrize("payload,seconds", [({}, None), ({"for": "30m"}, 1800.0), ({"for": 90}, 90.0),
                                             ({"for": 5e-324}, 5e-324), ({"for": 604800}, 604800.0),
                                             ({"for": "1h30m", "reason": "load test"}, 5400.0)])
def test_pause_takes_a_duration_or_none(api, auto, payload, seconds):
    status, body, _ = api.req("POST", "/autoscale/pause", json=payload)
    assert status == 200 and body["paused"] is True
    assert auto.calls[-1][:2] == ("pause", seconds)


@pytest.mark.parametrize("payload,word", [
    ({"for": "soon"}, "not a duration"), ({"for": 0}, "more than 0"), ({"for": "9d"}, "at most 7 days"),
    ({"for": 604801}, "at most 604800"), ({"for": -1.5}, "more than 0"), ({"for": "1e3"}, "not a duration"),
    ({"for": True}, "`for` must be"), ({"for": [1]}, "`for` must be"), ({"for": None}, "leave it out"), ({"until": "1h"}, "unknown field"),
    ({"reason": "x" * 201}, "`reason`"), ({"reason": "a\x1b[2J"}, "`reason`"), ({"reason": 5}, "`reason`"),
])
def test_bad_pauses_are_refused_and_change_nothing(api, auto, payload, word):
    status, body, _ = api.req("POST", "/autoscale/pause", json=payload)
    assert status == 400 and word in body["error"]["message"]
    assert auto.calls == []


def test_resume(api, auto):
    status, body, _ = api.req("POST", "/autoscale/resume")
    assert status == 200 and auto.calls == [("resume",)]


def test_a_manual_scale_pauses_the_autoscaler_and_says_so(api, auto):
    status, body, _ = api.req("POST", "/fleet/scale", json={"instances": 3})
    assert status == 202 and "paused until `ultrascalectl autoscale resume`" in body["autoscale"]
    assert auto.calls == [("manual_scale", 3)]


def test_a_refused_scale_does_not_pause(api, auto):
    status, body, _ = api.req("POST", "/fleet/scale", json={"instances": 99})
    assert status == 400 and auto.calls == []


def test_without_an_autoscaler_the_routes_are_not_found(api, fleet):
    assert api.code("GET", "/autoscale") == (404, "not_found")
    assert api.code("POST", "/autoscale/resume") == (404, "not_found")
    status, body, _ = api.req("POST", "/fleet/scale", json={"instances": 3})
    assert status == 202 and "autoscale" not in body


def test_pause_and_resume_need_the_token_like_every_mutation(make_api, fleet, auto):
    from ultrascaled.surface.api.auth import Token
    api = make_api(tokens=(Token("alice", "s" * 32),))
    assert api.code("POST", "/autoscale/pause", json={})[0] == 401
    assert api.code("POST", "/autoscale/resume")[0] == 401
    assert api.req("GET", "/autoscale")[0] == 200          # reads are open on loopback
    token = {"Authorization": "Bearer " + "s" * 32}
    assert api.req("POST", "/autoscale/pause", json={}, headers=token)[0] == 200
    assert auto.calls == [("pause", None, "operator")]


def test_metrics_carry_the_autoscalers_families(api, auto):
    status, body, _ = api.req("GET", "/metrics")
    assert status == 200 and b"ultrascale_autoscale_recommendation 5.0" in body


class FakeQueues:
    """What the handlers use of ultrascaled.supervise.queue_scale_loop.QueueScaler."""

    def __init__(self):
        self.resumed: list[str] = []

    def status(self) -> dict:
        return {"worker": {"queue": {"redis": "redis://:***@127.0.0.1:6379/0", "list": "rq:queue:default"},
                           "target": 50.0, "min": 1, "max": 8, "current": 2, "queue_depth": 120,
                           "reachable": True, "paused": not self.resumed, "last": None}}

    def resume(self, name: str) -> dict:
        if name != "worker":
            raise KeyError(name)
        self.resumed.append(name)
        return self.status()["worker"]


def test_status_shows_each_worker_type_on_its_queue(api, auto, fleet):
    fleet.queues = FakeQueues()
    status, body, _ = api.req("GET", "/autoscale")
    assert status == 200 and body["processes"]["worker"]["queue_depth"] == 120


def test_resume_of_a_worker_type_resumes_it_alone(api, auto, fleet):
    fleet.queues = FakeQueues()
    status, body, _ = api.req("POST", "/autoscale/resume", json={"process": "worker"})
    assert status == 200 and fleet.queues.resumed == ["worker"] and body["processes"]["worker"]["paused"] is False
    assert ("resume",) not in auto.calls        # the web autoscaler is left as it was
    status, body, _ = api.req("POST", "/autoscale/resume", json={"process": "other"})
    assert status == 404 and "processes.NAME.autoscale" in body["error"]["message"]
    status, body, _ = api.req("POST", "/autoscale/resume", json={"process": "../x"})
    assert status == 400
    status, body, _ = api.req("POST", "/autoscale/resume", json={"process": "web"})
    assert status == 200 and auto.calls[-1] == ("resume",)
