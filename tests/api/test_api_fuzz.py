"""schemathesis fuzzes the API from its OpenAPI description (ultrascaled/surface/openapi.yaml) on a
real loopback socket with a fake fleet (issue 12, item 10): no 5xx other than documented
ones, every answer conforms to the description. Bounded: 30 examples an operation."""
from __future__ import annotations

import pytest

from support import needs

schemathesis = needs.schemathesis()
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ultrascaled.surface.api.routes import openapi_description  # noqa: E402


def described_for_the_fake() -> dict:
    """The description with the fake fleet's instances.min..max (1..8) as the bounds of
    `instances`: the served description cannot know a spec's bounds, and a valid-looking count
    outside them is rightly a 400 out_of_range."""
    doc = openapi_description()
    body = doc["paths"]["/fleet/scale"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["instances"].update(minimum=1, maximum=8)
    return doc


schema = schemathesis.openapi.from_dict(described_for_the_fake())


@pytest.fixture
def live_url(make_live):
    return make_live().url


# The operations by path and method, from the description (cheap): schemathesis's own
# @schema.parametrize() builds its hypothesis tests at collection, ~2 s of every run of the
# quick suite; here the strategies are made when a test runs.
OPERATIONS = [(path, method.upper()) for path, item in described_for_the_fake()["paths"].items()
              for method in item if method in ("get", "post", "put", "delete", "patch")]


def cases(path: str, method: str):
    """schemathesis's positive and negative cases for one operation (negative ones only where
    the description leaves something to get wrong)."""
    from schemathesis import GenerationMode
    operation = schema[path][method]
    try:
        negative = operation.as_strategy(GenerationMode.NEGATIVE)
        return st.one_of(operation.as_strategy(GenerationMode.POSITIVE), negative)
    except Exception:   # nothing to vary: no negative case can be made
        return operation.as_strategy(GenerationMode.POSITIVE)


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_the_api_conforms_to_its_description(path, method, live_url):
    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        data.draw(cases(path, method)).call_and_validate(base_url=live_url)
    check()


def with_a_key_twice(body: dict) -> tuple[str, bytes]:
    """The body's JSON with its first key given once more (another value) in front."""
    import json
    key = next(iter(body))
    return key, ('{' + json.dumps(key) + ': "other", ' + json.dumps(body)[1:]).encode()


POSTS_WITH_BODIES = [p for p, m in OPERATIONS
                     if m == "POST" and "requestBody" in described_for_the_fake()["paths"][p]["post"]]


@pytest.mark.integration   # a few seconds: kept out of the quick suite
@pytest.mark.parametrize("path", POSTS_WITH_BODIES)
def test_every_json_body_with_a_key_given_twice_is_refused_naming_the_key(path, live_url):
    """issue 24, class 6: schemathesis's bodies for every operation that takes one, sent with
    their first key twice: a 400 bad_request naming the key, never the last value taken."""
    import json
    import urllib.error
    import urllib.request
    operation = schema[path]["POST"]
    tried = []

    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        case = data.draw(operation.as_strategy())
        if not isinstance(case.body, dict) or not case.body:
            return
        key, raw = with_a_key_twice(case.body)
        req = urllib.request.Request(live_url + case.formatted_path, data=raw, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, payload = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, payload = e.code, json.loads(e.read())
        assert status == 400 and payload["error"]["code"] == "bad_request", (case.formatted_path, raw, payload)
        assert f"{key!r} is given twice" in payload["error"]["message"], payload
        tried.append(key)
    check()
    assert tried, f"no body with a key was drawn for {path}"
