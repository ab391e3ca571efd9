"""POST /fleet/deploy, /fleet/rollback and GET /fleet/releases against the fake fleet: bad
bodies are a clear 400 that changes nothing; a second deploy is a 409 naming the one running."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("body, what", [
    ({}, "exactly one of"),
    ({"directory": "/tmp", "release": "good"}, "exactly one of"),
    ({"directory": 3}, "`directory` must be"),
    ({"release": ""}, "`release` must be"),
    ({"directory": "/x\0y"}, "without NUL"),
    ({"directory": "a" * 5000}, "at most 4096"),
    ({"dir": "/tmp"}, "unknown field"),
])
def test_a_bad_deploy_body_is_a_400_naming_the_field_and_changes_nothing(api, fleet, body, what):
    status, answer, _ = api.req("POST", "/fleet/deploy", json=body)
    assert status == 400 and what in answer["error"]["message"]
    assert fleet.calls == [] and fleet.rollout is None


def test_deploy_then_a_second_deploy_and_a_rollback_are_refused_while_it_runs(api, fleet, tmp_path):
    status, answer, _ = api.req("POST", "/fleet/deploy", json={"directory": str(tmp_path)})
    assert status == 202 and answer["rollout"]["phase"] == "canary"
    assert api.code("POST", "/fleet/deploy", json={"release": "good"}) == (409, "deploy_in_progress")
    assert api.code("POST", "/fleet/rollback") == (409, "deploy_in_progress")
    assert fleet.calls == [("deploy", str(tmp_path), None)]


def test_unknown_release_and_nothing_to_roll_back_are_refused(api, fleet):
    assert api.code("POST", "/fleet/deploy", json={"release": "nope"}) == (404, "release_not_found")
    assert api.code("POST", "/fleet/rollback") == (409, "no_rollback_target")
    status, answer, _ = api.req("GET", "/fleet/releases")
    assert status == 200 and answer["releases"][0]["current"] is True
