"""schemathesis on POST /autoscale/pause, the autoscale route that takes a body, with an
autoscaler behind it (the fake fleet of test_api_fuzz.py has none, so there the /autoscale
routes only answer 404): no 5xx, answers as described. It found: a numeric `for` of 5e-324
refused (read through str()), `"for": null` taken as "until resumed" against the description,
and reasons with control characters that the description allowed."""
from __future__ import annotations

import pytest

from support import needs

schemathesis = needs.schemathesis()
from hypothesis import HealthCheck, settings  # noqa: E402

from test_api_autoscale import FakeAutoscaler  # noqa: E402
from ultrascaled.surface.api.routes import openapi_description  # noqa: E402

def described_for_the_test() -> dict:
    """Duration strings narrowed to ones within 7 days (a pattern cannot say "at most 7 days"),
    reasons to plain text (the daemon also refuses unassigned code points, which no pattern
    names); the refusals are tested in test_api_autoscale.py."""
    doc = openapi_description()
    body = doc["paths"]["/autoscale/pause"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["properties"]["for"]["oneOf"][0]["pattern"] = "^[1-9][0-9]{0,3}[smSM]$"
    body["properties"]["reason"]["pattern"] = "^[A-Za-z0-9 ._-]*$"   # printable, as str.isprintable()
    return doc


schema = schemathesis.openapi.from_dict(described_for_the_test()).include(path_regex="^/autoscale/pause$")


@pytest.fixture
def live_url(make_live, fleet):
    fleet.autoscaler = FakeAutoscaler()
    return make_live().url


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_autoscale_routes_conform_to_their_description(case, live_url):
    case.call_and_validate(base_url=live_url)
