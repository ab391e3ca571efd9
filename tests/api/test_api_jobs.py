"""GET /jobs, GET /jobs/{name}/runs and POST /jobs/{name}/run on the fake fleet: the answers,
and every refusal changing nothing."""
import pytest


def test_jobs_lists_each_job_with_its_schedule_and_last_run(api):
    status, body, _ = api.req("GET", "/jobs")
    assert status == 200 and list(body) == ["nightly"]
    assert body["nightly"]["schedule"] == "30 3 * * *" and body["nightly"]["last_run"]["outcome"] == "succeeded"


def test_runs_of_a_job_newest_first_and_limited(api):
    status, body, _ = api.req("GET", "/jobs/nightly/runs?limit=1")
    assert status == 200 and body["job"] == "nightly" and [r["run"] for r in body["runs"]] == [3]


def test_run_now_starts_one(api, fleet):
    status, body, _ = api.req("POST", "/jobs/nightly/run")
    assert status == 202 and body == {"job": "nightly", "run": 4, "action": "start"}
    assert fleet.calls == [("run_job", "nightly")]


@pytest.mark.parametrize("method, path, status, code", [
    ("POST", "/jobs/nope/run", 404, "not_found"),
    ("GET", "/jobs/nope/runs", 404, "not_found"),
    ("POST", "/jobs/a.b/run", 400, "bad_request"),
    ("GET", "/jobs/nightly/runs?limit=0", 400, "bad_request"),
    ("GET", "/jobs/nightly/runs?limit=abc", 400, "bad_request"),
])
def test_a_refused_request_names_why_and_changes_nothing(api, fleet, method, path, status, code):
    got, body, _ = api.req(method, path)
    assert (got, body["error"]["code"]) == (status, code)
    assert fleet.calls == []


def test_run_now_under_forbid_while_a_run_goes_is_refused_with_job_running(api, fleet):
    fleet.job_running = True
    status, body, _ = api.req("POST", "/jobs/nightly/run")
    assert (status, body["error"]["code"]) == (409, "job_running") and "still going" in body["error"]["message"]
    assert fleet.calls == []


def test_run_now_takes_no_body_fields(api, fleet):
    status, body, _ = api.req("POST", "/jobs/nightly/run", json={"force": True})
    assert (status, body["error"]["code"]) == (400, "bad_request") and fleet.calls == []
