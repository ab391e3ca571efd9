"""GET /ui and its JSON (ultrascaled/surface/dashboard.py) under the API's rules, in-process on the
fake fleet: the page and assets are the only paths a browser loads without a token, nothing
else opens, caching headers, the viewer/admin answer, bad input."""
from __future__ import annotations

import re

import pytest

from ultrascaled.surface.api.auth import Token
from ultrascaled.core.traffic import TrafficWindow
from ultrascaled.observe.history import History

ADMIN = Token("alice", "s3cret-admin-token")
AUTH = {"Authorization": f"Bearer {ADMIN.secret}"}


def asset_urls(html: bytes) -> list[str]:
    return re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html.decode())


def test_the_page_is_html_with_a_strict_content_security_policy_and_revalidated(api):
    status, body, headers = api.req("GET", "/ui")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-cache"
    # no inline script, no CDN
    assert b"<script>" not in body and b"http://" not in body and b"https://" not in body
    status, _, _ = api.req("GET", "/ui", headers={"If-None-Match": headers.get("ETag") or headers["Etag"]})
    assert status == 304


def test_assets_named_by_their_digest_are_cached_for_a_year_others_revalidated(api):
    _, html, _ = api.req("GET", "/ui")
    urls = asset_urls(html)
    assert {u.split("?")[0] for u in urls} == {"/ui/static/dashboard.js", "/ui/static/dashboard.css"}
    for url in urls:
        status, body, headers = api.req("GET", url)
        assert status == 200 and body and "immutable" in headers["Cache-Control"], url
        assert api.req("GET", url.split("?")[0])[2]["Cache-Control"] == "no-cache"
        assert api.req("GET", url.split("?")[0] + "?v=stale")[2]["Cache-Control"] == "no-cache"
    assert api.code("GET", "/ui/static/nope.js") == (404, "not_found")
    assert api.code("GET", "/ui/static/..%2Ffleet")[0] == 404


def test_off_loopback_the_page_loads_without_a_token_but_no_data_does(make_api):
    api = make_api(host="10.1.2.3", tokens=(ADMIN,))
    host = {"Host": f"10.1.2.3:{api.settings.port}"}
    _, html, _ = api.req("GET", "/ui", headers=host)
    for path in ["/ui", "/ui/"] + asset_urls(html):
        assert api.req("GET", path, headers=host)[0] == 200, path
    for path in ["/ui/session", "/ui/history", "/fleet", "/events", "/ui/static/../fleet"]:
        assert api.code("GET", path, headers=host) == (401, "unauthorized"), path
    # the exemption is for reading the page only: no method on it skips the token
    for method in ("POST", "PUT", "DELETE"):
        assert api.code(method, "/ui", headers=host) == (401, "unauthorized"), method
    status, body, _ = api.req("GET", "/ui/session", headers={**host, **AUTH})
    assert status == 200 and body["role"] == "admin" and body["actor"] == "alice" and body["reads_need_token"]


def test_a_foreign_origin_or_host_is_refused_on_the_page_too(api):
    assert api.code("GET", "/ui", headers={"Origin": "http://evil.example"}) == (403, "forbidden")
    rebind = {"Host": "rebind.example:9000"}
    assert api.code("GET", "/ui/static/dashboard.js", headers=rebind) == (403, "forbidden")


def test_the_session_says_viewer_without_the_admin_token_and_admin_with_it(make_api, fleet):
    api = make_api(tokens=(ADMIN,))
    _, body, _ = api.req("GET", "/ui/session")
    assert (body["role"], body["actions"], body["token_configured"]) == ("viewer", [], True)
    _, body, _ = api.req("GET", "/ui/session", headers={"Authorization": "Bearer wrong"})
    assert body["role"] == "viewer"
    _, body, _ = api.req("GET", "/ui/session", headers=AUTH)
    assert body["role"] == "admin" and "scale" in body["actions"]
    # and what the viewer's page would send is refused by the API, whatever the page shows
    assert api.code("POST", "/fleet/scale", json={"instances": 3}) == (401, "unauthorized")
    assert fleet.calls == []


def test_without_a_token_file_loopback_is_admin(api):
    _, body, _ = api.req("GET", "/ui/session")
    assert body["role"] == "admin" and body["actor"] == "loopback" and not body["token_configured"]


class Steady:
    def window(self, port, seconds):
        return TrafficWindow(requests=10 * seconds, errors_5xx=seconds if port else 0, p95=0.02,
                             seconds=seconds)


def test_history_points_after_since_and_bad_since_refused(fleet):
    clock = iter(range(1000, 2000, 5))
    h = History(Steady(), fleet.snapshot, seconds=60, interval=5, wall=lambda: next(clock))
    for _ in range(3):
        h.record()
    from support_dashboard import api_with_history
    api2 = api_with_history(fleet, h)
    try:
        status, body, _ = api2.req("GET", "/ui/history")
        assert status == 200 and body["enabled"] and [p["t"] for p in body["points"]] == [1000, 1005, 1010]
        p = body["points"][0]
        assert p["fleet"]["rps"] == 10 and p["fleet"]["err"] == 0 and p["ports"]["18001"] == [10, 0.02, 0.1]
        assert [p["t"] for p in api2.req("GET", "/ui/history?since=1005")[1]["points"]] == [1010]
        for bad in ("-1", "abc", "1e400", "nan", "inf", "9" * 30):
            assert api2.code("GET", f"/ui/history?since={bad}") == (400, "bad_request"), bad
    finally:
        api2.close()


def test_with_the_dashboard_off_there_is_no_page(fleet):
    from support_dashboard import api_with_history
    api = api_with_history(fleet, None, dashboard=False)
    try:
        assert api.code("GET", "/ui") == (404, "not_found")
    finally:
        api.close()


def test_every_dashboard_route_is_in_the_openapi_description(api):
    from ultrascaled.surface.api.routes import openapi_description
    described = openapi_description()["paths"]
    routes = {(r.method, r.resource.canonical) for r in api.client.server.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/ui") and r.method != "HEAD"}
    assert ("GET", "/ui/history") in routes
    for method, path in routes - {("GET", "/ui/")}:  # /ui/ is /ui with a slash
        assert method.lower() in described.get(path, {}), f"{method} {path} missing from openapi.yaml"


VIEWER = Token("carol", "s3cret-viewer-token")


def test_a_viewer_token_reads_everything_off_loopback_and_changes_nothing(fleet):
    import dataclasses

    from api_helpers import settings
    from support_dashboard import api_with_settings
    from ultrascaled.surface.api.auth import Credentials
    s = dataclasses.replace(settings(host="10.1.2.3"), credentials=Credentials((ADMIN,), (), (VIEWER,)))
    api = api_with_settings(fleet, s)
    try:
        host = {"Host": f"10.1.2.3:{api.settings.port}", "Authorization": f"Bearer {VIEWER.secret}"}
        for path in ("/fleet", "/health", "/events", "/alerts", "/metrics", "/ui/history"):
            assert api.req("GET", path, headers=host)[0] == 200, path
        status, body, _ = api.req("GET", "/ui/session", headers=host)
        assert (status, body["role"], body["actor"], body["actions"]) == (200, "viewer", "carol", [])
        for method, path in (("POST", "/fleet/scale"), ("POST", "/fleet/restart"),
                             ("POST", "/fleet/reload"), ("POST", "/instances/18001/restart")):
            kw = {"json": {"instances": 3}} if path == "/fleet/scale" else {}
            assert api.code(method, path, headers=host, **kw) == (401, "unauthorized"), path
        assert fleet.calls == []
    finally:
        api.close()


def test_read_token_reads_the_viewer_file(tmp_path):
    from types import SimpleNamespace

    from ultrascaled.surface.api.auth import read_token
    files = {}
    for name, text in (("admin", "alice:x\n"), ("viewer", "carol:v\nbob:w\n")):
        files[name] = tmp_path / name
        files[name].write_text(text)
        files[name].chmod(0o600)
    spec = SimpleNamespace(api=SimpleNamespace(host="127.0.0.1", port=9000, token_file=str(files["admin"]),
                                               metrics_token_file=None,
                                               viewer_token_file=str(files["viewer"])))
    creds = read_token(spec)
    assert creds.viewer == (Token("carol", "v"), Token("bob", "w")) and creds.admin == (Token("alice", "x"),)
    assert creds.who("Bearer v") is None and creds.who("Bearer v", viewer=True) == "carol"
    files["viewer"].chmod(0o644)
    with pytest.raises(ValueError, match="api.viewer_token_file"):
        read_token(spec)


def test_a_missing_viewer_token_file_is_a_spec_error_naming_the_key(tmp_path):
    from ultrascaled.spec import SpecError, parse_spec
    with pytest.raises(SpecError) as err:
        parse_spec(f"api: {{viewer_token_file: {tmp_path / 'nope'}}}\n", base_dir=tmp_path)
    assert any("api.viewer_token_file (line 1)" in e and "does not exist" in e for e in err.value.errors), \
        err.value.errors


def test_dashboard_keys_are_bounded(tmp_path):
    from ultrascaled.spec import SpecError, parse_spec
    with pytest.raises(SpecError) as err:
        parse_spec("dashboard: {history_seconds: 10, sample_interval: 0, enabled: maybe}\n", base_dir=tmp_path)
    text = "\n".join(err.value.errors)
    assert "dashboard.history_seconds" in text and "dashboard.sample_interval" in text, text
    assert "dashboard.enabled" in text, text
