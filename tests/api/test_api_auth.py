"""Tokens, token files and the audit trail (issue 12, items 6 and 7)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from ultrascaled.surface.api.audit import AuditLog
from ultrascaled.surface.api.auth import Token, read_token, read_token_file

from support import needs

ADMIN = (Token("alice", "a" * 32), Token("token", "b" * 32))
METRICS = (Token("prometheus", "m" * 32),)
READS = ["/fleet", "/health", "/events", "/alerts", "/metrics", "/instances/18001/log", "/openapi.json"]


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("path", READS)
def test_off_loopback_every_read_needs_the_token(make_api, fleet, path):
    fleet.log_path(18001).write_text("secret app output\n")
    api = make_api(host="0.0.0.0", tokens=ADMIN, metrics_tokens=METRICS)
    status, body, _ = api.req("GET", path)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert api.req("GET", path, headers=bearer("x" * 32))[0] == 401
    assert api.req("GET", path, headers=bearer("a" * 32))[0] in (200, 503)


def test_the_metrics_token_reads_metrics_only(make_api):
    api = make_api(host="0.0.0.0", tokens=ADMIN, metrics_tokens=METRICS)
    assert api.req("GET", "/metrics", headers=bearer("m" * 32))[0] == 200
    assert api.code("GET", "/fleet", headers=bearer("m" * 32)) == (401, "unauthorized")
    assert api.code("POST", "/fleet/restart", headers=bearer("m" * 32)) == (401, "unauthorized")


def test_on_loopback_reads_are_open_and_mutations_need_the_token(make_api, fleet):
    api = make_api(tokens=ADMIN)
    assert api.req("GET", "/fleet")[0] == 200
    assert api.code("POST", "/fleet/restart") == (401, "unauthorized")
    basic = {"Authorization": "Basic " + "a" * 32}
    assert api.code("POST", "/fleet/restart", headers=basic) == (401, "unauthorized")
    assert api.req("POST", "/fleet/restart", headers=bearer("a" * 32))[0] == 202
    assert fleet.calls == [("restart", None)]


def test_mutations_are_events_naming_the_actor(make_api, fleet, tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    api = make_api(tokens=ADMIN, audit=log)
    api.req("POST", "/fleet/scale", json={"instances": 3}, headers=bearer("a" * 32))
    api.req("POST", "/fleet/restart", headers=bearer("b" * 32))
    api.req("POST", "/fleet/restart")
    api.req("GET", "/fleet")
    got = [(e["method"], e["path"], e["status"], e["actor"]) for e in fleet.events.since(0)
           if e["event"] == "api.request"]
    want = [("POST", "/fleet/scale", 202, "alice"), ("POST", "/fleet/restart", 202, "token"),
            ("POST", "/fleet/restart", 401, "unauthenticated")]
    assert got == want
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"], r["actor"]) for r in lines] == want
    assert all(r["remote"] == "127.0.0.1" and r["time"] > 0 for r in lines)
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600


def test_without_a_token_the_actor_is_loopback(api, fleet):
    api.req("POST", "/fleet/restart")
    assert [e["actor"] for e in fleet.events.since(0) if e["event"] == "api.request"] == ["loopback"]


def test_the_audit_log_refuses_a_symlink(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / "audit.log")
    with pytest.raises(OSError):
        AuditLog(tmp_path / "audit.log")


def test_the_audit_log_appends_across_restarts(tmp_path):
    import asyncio
    for n in range(2):
        log = AuditLog(tmp_path / "audit.log")
        asyncio.run(log.record(n=n))
        log.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "audit.log").read_text().splitlines()] == [0, 1]


def token_file(tmp_path, text, mode=0o600):
    p = tmp_path / "token"
    p.write_text(text)
    p.chmod(mode)
    return str(p)


def test_token_files_hold_named_or_plain_tokens(tmp_path):
    path = token_file(tmp_path, "# ops\nalice:s3cret-alice\n\nplain-token\nbob:s3cret:with:colons\n")
    assert read_token_file(path, "api.token_file") == (
        Token("alice", "s3cret-alice"), Token("token", "plain-token"), Token("bob", "s3cret:with:colons"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_a_token_file_others_may_access_is_refused(tmp_path, mode):
    path = token_file(tmp_path, "s3cret\n", mode)
    with pytest.raises(ValueError, match=r"group and others may access it; chmod 600"):
        read_token_file(path, "api.token_file")


def test_missing_empty_and_symlinked_token_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_token_file(str(tmp_path / "nope"), "api.token_file")
    with pytest.raises(ValueError, match="holds no token"):
        read_token_file(token_file(tmp_path, "\n# nothing\n"), "api.token_file")
    os.symlink(tmp_path / "token", tmp_path / "link")
    with pytest.raises(ValueError, match="symlink"):
        read_token_file(str(tmp_path / "link"), "api.token_file")


def test_a_token_file_owned_by_another_user_is_refused(tmp_path):
    needs.root("only root can chown the token file to another user")
    path = token_file(tmp_path, "s3cret\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(ValueError, match="owned by uid 65534, not by the daemon's user"):
        read_token_file(path, "api.token_file")


def spec_with(**api):
    base = {"host": "127.0.0.1", "port": 9000, "token_file": None}
    return SimpleNamespace(api=SimpleNamespace(**{**base, **api}))


def test_read_token_reads_both_files_and_refuses_an_open_api_without_one(tmp_path):
    admin = token_file(tmp_path, "alice:x\n")
    creds = read_token(spec_with(token_file=admin))
    assert creds.admin == (Token("alice", "x"),) and creds.metrics == ()
    (tmp_path / "m").write_text("prom:y\n")
    (tmp_path / "m").chmod(0o600)
    creds = read_token(spec_with(token_file=admin, metrics_token_file=str(tmp_path / "m")))
    assert creds.metrics == (Token("prom", "y"),)
    with pytest.raises(ValueError, match="not loopback"):
        read_token(spec_with(host="0.0.0.0"))
