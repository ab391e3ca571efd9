"""Every answer of the API is JSON with a code from the closed set; hostile inputs get a clear
400 naming what is wrong and change nothing (issue 12, items 1 and 5)."""
from __future__ import annotations

import pytest

from ultrascaled.surface.api.errors import Code

JSON = {"Content-Type": "application/json"}


def test_every_code_has_its_status_and_the_set_is_closed():
    assert Code.bad_json.status == 400 and Code.unauthorized.status == 401 and Code.forbidden.status == 403
    assert Code.over_budget.status == 409 and Code.too_many_requests.status == 503
    with pytest.raises(ValueError):
        Code("no_such_code")


def test_reads_and_a_scale_work(api, fleet):
    assert api.req("GET", "/fleet")[0] == 200
    assert api.req("GET", "/health")[1]["status"] == "ok"
    status, body, _ = api.req("POST", "/fleet/scale", json={"instances": 3})
    assert (status, body["desired"]) == (202, 3) and fleet.calls == [("scale", 3)]
    assert api.req("POST", "/fleet/restart")[1] == {"restarting": [18001, 18002, 18003][:2]}


def test_an_unexpected_exception_is_a_json_500_with_an_event(api, fleet):
    def boom():
        raise RuntimeError("disk on fire")
    fleet.snapshot = boom
    status, body, headers = api.req("GET", "/fleet")
    assert status == 500 and headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == "internal" and "RuntimeError" in body["error"]["message"]
    assert "disk on fire" in fleet.events.since(0)[-1]["error"]


def test_unknown_paths_and_methods_are_json(api):
    assert api.code("GET", "/nope") == (404, "not_found")
    assert api.code("DELETE", "/fleet") == (405, "method_not_allowed")
    assert api.code("PUT", "/fleet/scale", json={"instances": 2}) == (405, "method_not_allowed")


@pytest.mark.parametrize("body,code", [
    (b"{not json", "bad_json"),
    (b"[1]", "bad_json"),
    (b"[" * 50_000 + b"]" * 50_000, "too_large"),          # over client_max_size
    (b"[" * 30_000 + b"]" * 30_000, "bad_json"),            # nested too deeply for the parser
    (b'{"instances": ' + b"9" * 5000 + b"}", "bad_json"),   # past Python's int digit limit
    (b'{"instances": 1e400}', "bad_request"),
    (b'{"instances": "3"}', "bad_request"),
    (b'{"instances": true}', "bad_request"),
    (b'{"instances": false}', "bad_request"),
    (b'{"instances": null}', "bad_request"),
    (b'{"instances": 3.0}', "bad_request"),
    (b'{"instances": 99}', "out_of_range"),
    (b'{"instances": 0}', "out_of_range"),
    (b'{"instances": -1}', "out_of_range"),
    (b'{"instances": ' + b"9" * 100 + b"}", "out_of_range"),
    (b'{"instances": 3, "extra": 1}', "bad_request"),
    (b'\xff\xfe', "bad_json"),
    (b'{"instances": 9, "instances": 2}', "bad_request"),              # a key twice: refused, not the last
    (b'{"instances": 2, "x": {"a": 1, "a": 2}}', "bad_request"),
])
def test_bad_scale_bodies_are_refused_and_change_nothing(api, fleet, body, code):
    status, payload, _ = api.req("POST", "/fleet/scale", data=body, headers=JSON)
    assert payload["error"]["code"] == code and status == Code(code).status
    assert payload["error"]["message"] and len(payload["error"]["message"]) < 400
    assert fleet.calls == [] and fleet.count == 2


@pytest.mark.parametrize("port", ["abc", "9" * 5000, "١٨٠٠١", "18001.0", "-18001", "0", "65536", "+18001",
                                  " 18001", "0x4651", "18001%00"])
def test_bad_ports_are_a_400_naming_the_port_rule(api, fleet, port):
    for method, path in (("POST", f"/instances/{port}/restart"), ("GET", f"/instances/{port}/log")):
        status, code = api.code(method, path)
        assert (status, code) in ((400, "bad_request"), (404, "not_found")), (method, port, status)
    assert fleet.calls == []


def test_non_ascii_digits_are_not_a_port(api, fleet):
    status, body, _ = api.req("POST", "/instances/١٨٠٠١/restart")
    assert status == 400 and "1..65535" in body["error"]["message"]
    assert fleet.calls == []


@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=x", "since=-5", "since=" + "9" * 5000,
                                   "limit=١", "follow=yes", "since=1.5"])
def test_bad_event_queries_are_400(api, query):
    assert api.code("GET", f"/events?{query}") == (400, "bad_request")


def test_event_limit_keeps_the_newest(api, fleet):
    for i in range(5):
        fleet.events.emit("x", i=i)
    events = api.req("GET", "/events?limit=2")[1]["events"]
    assert [e["i"] for e in events] == [3, 4]


@pytest.mark.parametrize("query", ["lines=-5", "lines=x", "lines=99999999", "offset=-1",
                                   "offset=" + "9" * 40, "offset=1e9"])
def test_bad_log_queries_are_400(api, fleet, query):
    fleet.log_path(18001).write_text("hello\n")
    assert api.code("GET", f"/instances/18001/log?{query}") == (400, "bad_request")


def test_log_reads_with_a_huge_but_valid_offset_start_over(api, fleet):
    fleet.log_path(18001).write_text("one\ntwo\n")
    status, body, headers = api.req("GET", f"/instances/18001/log?offset={2 ** 62}")
    assert status == 200 and body == b"one\ntwo\n" and headers["X-Offset"] == "8"
    assert api.req("GET", "/instances/18001/log?lines=1")[1] == b"two\n"


def test_a_refused_scale_keeps_its_code(api):
    assert api.code("POST", "/fleet/scale", json={"instances": 9}) == (400, "out_of_range")


def test_a_refused_reload_lists_the_errors(make_api):
    from api_helpers import refusing_reload
    api = make_api(reload=refusing_reload)
    status, body, _ = api.req("POST", "/fleet/reload")
    assert status == 400 and body["error"]["code"] == "spec_invalid"
    assert body["error"]["errors"] == ["instances.count (line 3): must be an integer"]


def test_mutations_while_shutting_down_are_503(api, fleet):
    fleet.shutting_down = True
    assert api.code("POST", "/fleet/restart") == (503, "shutting_down")
    assert api.req("GET", "/fleet")[0] == 200


def test_405_names_the_allowed_methods_in_an_allow_header(api):
    # Found by schemathesis (ST204): `TRACE /fleet` answered 405 without `Allow`.
    status, body, headers = api.req("TRACE", "/fleet")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and body["error"]["code"] == "method_not_allowed"
    assert api.req("GET", "/fleet/scale")[2]["Allow"] == "POST"


def test_every_route_is_in_the_readme_table_and_the_openapi_description():
    from pathlib import Path

    from ultrascaled.surface.api.routes import openapi_description, routes
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    described = openapi_description()["paths"]
    for r in routes:
        assert f"`{r.method} {r.path}" in readme, f"{r.method} {r.path} missing from the README's API table"
        assert r.method.lower() in described.get(r.path, {}), f"{r.method} {r.path} missing from openapi.yaml"


def test_every_error_code_is_in_the_readme_error_list_and_in_the_docs():
    from pathlib import Path

    from ultrascaled.surface.api.errors import Code   # wherever the API keeps it, it hands it on
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    listed = readme.split("with a code from a small closed set:", 1)[1].split("A refused request", 1)[0]
    docs = readme + "".join(p.read_text() for p in (root / "docs").glob("*.md"))
    codes = [c.value for c in Code]
    assert len(codes) >= 20
    assert not [c for c in codes if f"`{c}`" not in listed], "the README's error list is incomplete"
    assert all(f"`{c}`" in docs for c in codes)


def test_a_key_given_twice_is_named(api, fleet):
    status, payload, _ = api.req("POST", "/fleet/scale", data=b'{"instances": 9, "instances": 2}', headers=JSON)
    assert status == 400 and "'instances' is given twice" in payload["error"]["message"]
    assert fleet.calls == [] and fleet.count == 2
