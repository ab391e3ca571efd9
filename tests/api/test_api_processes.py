"""GET /processes and POST /processes/{name}/scale on the fake fleet: the answers, and every
refusal changing nothing."""
import pytest


def test_processes_lists_web_then_the_worker_types(api):
    status, body, _ = api.req("GET", "/processes")
    assert status == 200 and list(body) == ["web", "worker"]
    assert body["worker"]["kind"] == "worker" and body["worker"]["instances"][0]["state"] == "running"
    assert body["web"]["desired"] == 2


def test_scaling_a_worker_type_touches_only_it(api, fleet):
    status, body, _ = api.req("POST", "/processes/worker/scale", json={"instances": 3})
    assert status == 202 and body == {"process": "worker", "desired": 3, "previous": 1}
    assert fleet.calls == [("scale_process", "worker", 3)] and fleet.count == 2


def test_web_through_the_processes_route_is_the_fleets_scale(api, fleet):
    status, body, _ = api.req("POST", "/processes/web/scale", json={"instances": 4})
    assert status == 202 and body["process"] == "web" and fleet.count == 4


@pytest.mark.parametrize("path, payload, status, code", [
    ("/processes/worker/scale", {"instances": 9}, 400, "out_of_range"),
    ("/processes/nope/scale", {"instances": 1}, 404, "not_found"),
    ("/processes/worker/scale", {"instances": "2"}, 400, "bad_request"),
    ("/processes/worker/scale", {"instances": True}, 400, "bad_request"),
    ("/processes/worker/scale", {"count": 2}, 400, "bad_request"),
    ("/processes/a.b/scale", {"instances": 1}, 400, "bad_request"),
])
def test_a_refused_scale_names_why_and_changes_nothing(api, fleet, path, payload, status, code):
    got, body, _ = api.req("POST", path, json=payload)
    assert (got, body["error"]["code"]) == (status, code)
    assert fleet.calls == [] and fleet.workers == 1 and fleet.count == 2


def test_restarting_a_worker_type_and_web_through_the_processes_route(api, fleet):
    status, body, _ = api.req("POST", "/processes/worker/restart")
    assert status == 202 and body == {"process": "worker", "restarting": [0]}
    status, body, _ = api.req("POST", "/processes/web/restart")
    assert status == 202 and body["process"] == "web" and body["restarting"] == sorted(fleet.instances)
    status, body, _ = api.req("POST", "/processes/nope/restart")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = api.req("POST", "/processes/a.b/restart")
    assert (status, body["error"]["code"]) == (400, "bad_request")
