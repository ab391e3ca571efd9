"""schemathesis fuzzes the API from its OpenAPI description (ultrascaled/surface/openapi.yaml) on a
real loopback socket with a fake fleet (issue 12, item 10): no 5xx other than documented
ones, every answer conforms to the description. Bounded: 30 examples an operation."""
from __future__ import annotations

import pytest

from support import needs

schemathesis = needs.schemathesis()
from hypothesis import HealthCheck, settings  # noqa: E402

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


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_description(case, live_url):
    case.call_and_validate(base_url=live_url)
