"""Cross-site requests and DNS rebinding (issue 12, item 2): a browser page on another site
must not be able to scale, restart or read the fleet through the operator's browser."""
from __future__ import annotations

import pytest

JSON = {"Content-Type": "application/json"}


def test_text_plain_post_from_another_origin_is_refused(api, fleet):
    status, body, _ = api.req("POST", "/fleet/scale", data=b'{"instances": 5}',
                              headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert "evil.example" in body["error"]["message"]
    assert fleet.calls == [] and fleet.count == 2


def test_text_plain_post_without_origin_is_415(api, fleet):
    assert api.code("POST", "/fleet/scale", data=b'{"instances": 5}',
                    headers={"Content-Type": "text/plain"}) == (415, "unsupported_media_type")
    assert fleet.calls == []


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                   "text/plain", "application/jsonx", "application/octet-stream"])
def test_form_and_other_bodies_do_not_restart(api, fleet, ctype):
    assert api.code("POST", "/fleet/restart", data=b"a=1", headers={"Content-Type": ctype}) == \
        (415, "unsupported_media_type")
    assert api.code("POST", "/fleet/restart", data=b"", headers={"Content-Type": ctype}) == \
        (415, "unsupported_media_type")
    assert fleet.calls == []


def test_json_body_with_charset_and_an_empty_body_without_type_are_accepted(api, fleet):
    assert api.req("POST", "/fleet/scale", data=b'{"instances": 3}',
                   headers={"Content-Type": "application/json; charset=utf-8"})[0] == 202
    assert api.req("POST", "/fleet/restart")[0] == 202
    assert fleet.calls == [("scale", 3), ("restart", None)]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost:80",
                                  "127.0.0.1.evil.example:{port}", "[::2]:{port}", "", "127.0.0.1:x"])
def test_foreign_host_cannot_read_the_fleet(api, host):
    host = host.format(port=api.settings.port)
    status, body, _ = api.req("GET", "/fleet", headers={"Host": host})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert repr(host) in body["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"])
def test_own_names_are_accepted(api, host):
    assert api.req("GET", "/fleet", headers={"Host": host.format(port=api.settings.port)})[0] == 200


def test_names_listed_in_the_spec_are_accepted(make_api):
    api = make_api()
    assert api.code("GET", "/fleet", headers={"Host": f"ops.internal:{api.settings.port}"})[0] == 403
    from api_helpers import Api, settings
    import dataclasses
    listed = dataclasses.replace(settings(), allowed_hosts=("ops.internal",))
    api2 = Api(api.fleet, listed)
    try:
        assert api2.req("GET", "/fleet", headers={"Host": f"ops.internal:{listed.port}"})[0] == 200
        assert api2.req("GET", "/fleet", headers={"Origin": f"http://ops.internal:{listed.port}"})[0] == 200
    finally:
        api2.close()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1",
                                    "https://127.0.0.1:{port}", "http://127.0.0.1:{port}.evil.example",
                                    "file://"])
def test_foreign_origins_are_refused_on_reads_too(api, origin):
    origin = origin.format(port=api.settings.port)
    assert api.code("GET", "/events", headers={"Origin": origin}) == (403, "forbidden")


def test_own_origin_is_accepted(api, fleet):
    origin = f"http://127.0.0.1:{api.settings.port}"
    assert api.req("POST", "/fleet/scale", json={"instances": 3}, headers={"Origin": origin})[0] == 202
