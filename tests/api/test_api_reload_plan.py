"""POST /fleet/reload/plan (the reload's dry run): its body is checked, a spec refusal is the
reload's own (400 spec_invalid with every error, or the fleet's refusal), and the plan function
gets the text and its path as sent."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api_helpers import Api, no_change, settings
from ultrascaled.core.control import ScaleRefused
from ultrascaled.spec import SpecError
from ultrascaled.surface.app import build_app


class PlanApi(Api):
    """api_helpers.Api with a dry run behind POST /fleet/reload/plan."""

    def __init__(self, fleet, settings_, plan):
        self.loop = asyncio.new_event_loop()
        self.fleet, self.settings = fleet, settings_
        app = build_app(fleet, settings_, no_change, None, None, plan_reload=plan)
        self.client = TestClient(TestServer(app, host="127.0.0.1", port=settings_.port), loop=self.loop)
        self.run(self.client.start_server())


@pytest.fixture
def planned(fleet):
    calls = []

    async def plan(text=None, source=None):
        calls.append((text, source))
        if text == b"bad":
            raise SpecError(["instances.count (line 1): must be an integer"])
        if text == b"renamed":
            raise ScaleRefused("spec_invalid", "`name` and `paths.state_dir` cannot change on a reload")
        return {"changes": False, "changed": [], "keys": []}
    api = PlanApi(fleet, settings(), plan)
    yield api, calls
    api.close()


def test_the_plan_gets_what_was_sent(planned):
    api, calls = planned
    assert api.req("POST", "/fleet/reload/plan")[0] == 200
    assert api.req("POST", "/fleet/reload/plan", json={"spec": "name: x\n", "source": "/etc/f.yaml"})[0] == 200
    assert calls == [(None, None), (b"name: x\n", "/etc/f.yaml")]


@pytest.mark.parametrize("body, words", [
    ({"source": "/etc/f.yaml"}, "send `spec` with it"),
    ({"spec": 3}, "`spec` must be the spec's text"),
    ({"spec": ""}, "`spec` must be the spec's text"),
    ({"spec": "x", "source": "a\0b"}, "`source` must be a non-empty string without NUL"),
    ({"spec": "x", "dry": True}, "unknown field(s) 'dry'"),
])
def test_a_bad_body_is_refused_naming_the_field(planned, body, words):
    api, calls = planned
    status, answer, _ = api.req("POST", "/fleet/reload/plan", json=body)
    assert status == 400 and words in answer["error"]["message"], answer
    assert calls == []


def test_refusals_are_the_reloads_own(planned):
    api, _ = planned
    status, answer, _ = api.req("POST", "/fleet/reload/plan", json={"spec": "bad"})
    assert status == 400 and answer["error"]["code"] == "spec_invalid"
    assert answer["error"]["errors"] == ["instances.count (line 1): must be an integer"]
    status, answer, _ = api.req("POST", "/fleet/reload/plan", json={"spec": "renamed"})
    assert status == 400 and answer["error"]["code"] == "spec_invalid" and "cannot change" in answer["error"]["message"]


def test_without_a_dry_run_the_route_says_so(api):
    status, answer, _ = api.req("POST", "/fleet/reload/plan")
    assert status == 404 and "no reload dry run" in answer["error"]["message"]
