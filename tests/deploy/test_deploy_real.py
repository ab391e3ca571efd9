"""Deploys against real gunicorn and a real managed nginx (issue 13): releases copied and pinned
(a worker respawned on an old instance during a deploy loads the old code, an edit of the
source folder after a deploy changes nothing), a broken release rolled back by itself, a
rollback, a daemon killed during a canary, and a non-retrying client (a new connection per
request, POSTs) that sees no failure through all of it."""
from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from support.clients import NoRetryClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP = '''\
import os
{extra}
HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = open(os.path.join(HERE, "VERSION")).read().strip()


def application(environ, start_response):
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


ANSWER_500 = '''
_inner = application


def application(environ, start_response):   # a release that fails every request but its health
    if environ["PATH_INFO"] == "/health":
        return _inner(environ, start_response)
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"broken"]
'''


ROUTE_RAISES = '''
_inner = application


def application(environ, start_response):   # a release whose new route raises on every request
    if environ["PATH_INFO"].startswith("/polls/stats/"):
        raise RuntimeError("stats view is broken")
    return _inner(environ, start_response)
'''


def write_app(root: Path, version: str, broken: bool = False, answers_500: bool = False,
              route_raises: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "verapp.py").write_text(APP.format(extra="import no_such_module_at_all" if broken else "")
                                    + (ANSWER_500 if answers_500 else "") + (ROUTE_RAISES if route_raises else ""))
    (root / "VERSION").write_text(version + "\n")
    return root


def Client(port: int) -> NoRetryClient:
    """POSTs with a body through nginx; `seen` holds the release names that answered."""
    return NoRetryClient(port, "POST", "/submit", body=b"x" * 200, pause=0.005)


def get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.fixture
def fleet(make_daemon, tmp_path):
    base = write_app(tmp_path / "base", "v0")
    d = make_daemon({"app": {"directory": str(base), "module": "verapp:application", "config": None},
                     "gunicorn": {"worker_class": "sync", "workers": 2},
                     "health": {"path": "/"},
                     "deploy": {"soak_seconds": 3}}).start()
    client = Client(d.nginx_port)
    client.start()
    try:
        yield d, client
    finally:
        client.stop()


def releases_on(d) -> dict[int, str | None]:
    return {i["port"]: i["release"] for i in d.fleet()["instances"]}


def test_deploys_pin_each_instance_to_its_release_and_a_bad_one_rolls_back(fleet, tmp_path):
    d, client = fleet
    v1 = write_app(tmp_path / "v1", "v1")
    out = d.ctl("deploy", str(v1))
    assert out.returncode == 0, out.stderr
    rid1 = d.fleet()["deploy"]["current"]
    assert set(releases_on(d).values()) == {rid1}
    assert {get(d.base_port).split()[0], get(d.base_port + 1).split()[0]} == {"v1"}
    (v1 / "VERSION").write_text("edited-after-deploy\n")   # the release is a copy: no effect

    # v2, watched from a second thread: during its canary, a worker of the old instance dies
    # and its master respawns it: the new worker must load the old release (v1)
    v2 = write_app(tmp_path / "v2", "v2")
    d.write_spec({**d.spec, "deploy": {"soak_seconds": 8}})
    assert d.ctl("reload").returncode == 0
    result = {}
    t = threading.Thread(target=lambda: result.update(out=d.ctl("deploy", str(v2))))
    t.start()
    f = d.wait_until(lambda f: (f["deploy"]["rollout"] or {}).get("canary_ready_for") is not None,
                     timeout=60, what="the canary soaking")
    old = next(i for i in f["instances"] if i["port"] == d.base_port + 1)
    assert old["release"] == rid1 and f["deploy"]["rollout"]["phase"] == "canary"
    refused = d.ctl("deploy", str(v2))
    assert refused.returncode == 4 and "deploy_in_progress" in refused.stderr
    victim = old["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    d.wait_until(lambda f: victim not in [w["pid"] for i in f["instances"] if i["port"] == old["port"]
                                          for w in i["workers"]] and len(next(
                 i for i in f["instances"] if i["port"] == old["port"])["workers"]) == 2,
                 timeout=30, what="the worker respawned")
    answers = {get(old["port"]).split()[0] for _ in range(20)}
    assert answers == {"v1"}, answers
    t.join(120)
    assert result["out"].returncode == 0, result["out"].stderr
    rid2 = d.fleet()["deploy"]["current"]
    assert set(releases_on(d).values()) == {rid2} and rid2 != rid1
    assert get(d.base_port).split()[0] == "v2"

    # a release that cannot be imported: the canary fails to boot, the fleet rolls back by itself
    bad = write_app(tmp_path / "bad", "bad", broken=True)
    started = time.monotonic()
    out = d.ctl("deploy", str(bad))
    took = time.monotonic() - started
    assert out.returncode == 1 and "failed on boot" in out.stderr and "rolled back" in out.stderr, out.stderr
    assert "no_such_module_at_all" in out.stderr
    assert set(releases_on(d).values()) == {rid2}
    assert d.fleet()["ready"] == 2
    alerts = d.api("GET", "/alerts")[1]["firing"]
    assert any(a["alert"] == "deploy_failed" and "boot" in a["message"] for a in alerts), alerts
    print(f"\nbroken release: deploy start -> rolled back in {took:.2f}s")

    # rollback to v1 the careful way; releases lists them
    out = d.ctl("rollback")
    assert out.returncode == 0, out.stderr
    assert set(releases_on(d).values()) == {rid1} and get(d.base_port).split()[0] == "v1"
    listing = d.ctl("releases")
    assert listing.returncode == 0 and rid1 in listing.stdout and "current" in listing.stdout
    status = d.ctl("status")
    assert rid1 in status.stdout and "RELEASE" in status.stdout
    import urllib.request
    metrics = urllib.request.urlopen(d.api_url + "/metrics", timeout=10).read().decode()
    assert f'ultrascale_instance_release_info{{port="{d.base_port}",release="{rid1}"}} 1.0' in metrics
    assert f'ultrascale_release_current_info{{release="{rid1}"}} 1.0' in metrics
    client.stop()
    assert not client.failures, client.failures[:10]
    assert client.ok > 100 and {"v0", "v1", "v2"} <= client.seen, (client.ok, client.seen)
    assert "bad" not in client.seen


def test_a_daemon_killed_during_the_canary_rolls_it_back_on_restart(fleet, tmp_path):
    d, client = fleet
    d.write_spec({**d.spec, "deploy": {"soak_seconds": 600}})
    assert d.ctl("reload").returncode == 0
    v1 = write_app(tmp_path / "v1", "v1")
    assert d.ctl("deploy", "--no-wait", str(v1)).returncode == 0
    d.wait_until(lambda f: (f["deploy"]["rollout"] or {}).get("canary_ready_for") is not None,
                 timeout=60, what="the canary soaking")
    canary_pid = next(i["pid"] for i in d.fleet()["instances"] if i["port"] == d.base_port)
    d.proc.kill()
    d.proc.wait()
    d.start(wait=False)
    d.wait_until(lambda f: f["deploy"]["rollout"] is None and f["ready"] == 2
                 and set(i["release"] for i in f["instances"]) == {None}, timeout=60,
                 what="the canary rolled back")
    assert d.events("deploy.resumed") and d.events("deploy.rolled_back")
    assert next(i["pid"] for i in d.fleet()["instances"] if i["port"] == d.base_port) != canary_pid
    assert get(d.base_port).split()[0] == "v0"
    client.stop()
    assert not client.failures, client.failures[:10]


def test_a_release_answering_500_is_judged_on_nginx_figures_and_rolled_back(make_daemon, tmp_path):
    base = write_app(tmp_path / "base", "v0")
    d = make_daemon({"app": {"directory": str(base), "module": "verapp:application", "config": None},
                     "gunicorn": {"worker_class": "sync", "workers": 2}, "health": {"path": "/health"},
                     "deploy": {"soak_seconds": 4, "min_requests": 10}}).start()
    client = Client(d.nginx_port)
    client.start()
    try:
        bad = write_app(tmp_path / "bad", "bad", answers_500=True)
        out = d.ctl("deploy", str(bad))
        assert out.returncode == 1 and "failed on rate_5xx" in out.stderr, (out.stdout, out.stderr)
        failed = d.events("deploy.failed")[-1]
        assert failed["figure"] == "rate_5xx" and failed["canary_requests"] >= 10 and failed["old_rate_5xx"] == 0
        assert set(releases_on(d).values()) == {None}
        alerts = d.api("GET", "/alerts")[1]["firing"]
        assert any(a["alert"] == "deploy_failed" and "rate_5xx" in a["message"] for a in alerts), alerts
    finally:
        client.stop()
    # only the canary's share saw the bad release, and only until the verdict
    assert client.failures and all(f.startswith("HTTP 500") for f in client.failures), client.failures[:5]
    assert len(client.failures) < client.ok


def test_one_failing_route_at_one_percent_is_rolled_back_and_named(make_daemon, tmp_path):
    """The issue's case: a release whose one route raises, at about 1 % of the requests; the
    canary's whole 5xx rate stays under deploy.max_error_rate_increase, its route does not."""
    base = write_app(tmp_path / "base", "v0")
    d = make_daemon({"app": {"directory": str(base), "module": "verapp:application", "config": None},
                     "gunicorn": {"worker_class": "sync", "workers": 2}, "health": {"path": "/health"},
                     "deploy": {"soak_seconds": 10}}).start()
    mains = [NoRetryClient(d.nginx_port, "GET", "/", pause=0.002) for _ in range(3)]
    stats = NoRetryClient(d.nginx_port, "GET", "/polls/stats/7/", pause=0.3)
    for c in (*mains, stats):
        c.start()
    try:
        bad = write_app(tmp_path / "bad", "bad", route_raises=True)
        out = d.ctl("deploy", str(bad))
        assert out.returncode == 1 and "failed on route_5xx" in out.stderr, (
            out.stdout, out.stderr, d.events("deploy.canary_passed"))
        assert "route GET /polls/stats/:id/" in out.stderr, out.stderr
        failed = d.events("deploy.failed")[-1]
        assert failed["figure"] == "route_5xx" and failed["failed_routes"] == ["GET /polls/stats/:id/"]
        # the whole canary passed the whole-rate judgement (else the figure would be rate_5xx)
        assert failed["canary_rate_5xx"] <= failed["old_rate_5xx"] + 0.01, failed
        assert set(releases_on(d).values()) == {None}
    finally:
        for c in (*mains, stats):
            c.stop()
    assert not any(c.failures for c in mains), [c.failures[:5] for c in mains]
    assert stats.failures and all(f.startswith("HTTP 500") for f in stats.failures), stats.failures[:5]


NEEDS_MIGRATION = '''
if not os.path.exists(os.path.join(HERE, "SCHEMA")):
    raise RuntimeError("run the migrations first")   # an app that cannot start unmigrated
'''

MIGRATE = '''\
import os, sys, time
time.sleep(float(os.environ.get("MIGRATE_SECONDS", "0")))
if open("VERSION").read().strip() == "v3":
    print("django.db.utils.OperationalError: table polls_choice has no column named votes")
    sys.exit(1)
open("SCHEMA", "w").write(os.environ["ULTRASCALE_RELEASE"])
print("Applying polls.0002_choice_votes... OK")
'''


def test_the_release_command_runs_before_the_release_serves_and_a_failing_one_stops_the_deploy(
        make_daemon, tmp_path):
    """deploy.release_command (Heroku's release phase) under a non-retrying client: a release
    that cannot start before its migration is deployed (the command ran in its folder first, for
    12 s, longer than the API's idle timeout); one whose migration fails is refused with the
    output, the old release still serving everything; no request fails through either."""
    import sys
    base = write_app(tmp_path / "base", "v0")
    (base / "SCHEMA").write_text("base")
    d = make_daemon({"app": {"directory": str(base), "module": "verapp:application", "config": None,
                             "env": {"MIGRATE_SECONDS": "12"}},
                     "gunicorn": {"worker_class": "sync", "workers": 2}, "health": {"path": "/"},
                     "deploy": {"soak_seconds": 2, "release_command": [sys.executable, "migrate.py"]}}).start()
    client = Client(d.nginx_port)
    client.start()
    try:
        v2 = write_app(tmp_path / "v2", "v2")
        (v2 / "verapp.py").write_text((v2 / "verapp.py").read_text().replace(
            'VERSION = open', NEEDS_MIGRATION + 'VERSION = open', 1))
        (v2 / "migrate.py").write_text(MIGRATE)
        out = d.ctl("deploy", str(v2))
        assert out.returncode == 0, (out.stdout, out.stderr)
        assert get(d.nginx_port).startswith("v2")
        done = d.events("deploy.release_command_done")
        assert done and done[-1]["seconds"] >= 12
        v3 = write_app(tmp_path / "v3", "v3")
        (v3 / "migrate.py").write_text(MIGRATE)
        out = d.ctl("deploy", str(v3))
        assert out.returncode != 0 and "release_command_failed" in out.stderr + out.stdout, (out.stdout, out.stderr)
        assert "has no column named votes" in out.stderr + out.stdout
        assert set(releases_on(d).values()) == {d.fleet()["deploy"]["current"]} and get(d.nginx_port).startswith("v2")
    finally:
        client.stop()
    assert not client.failures, client.failures[:5]
    assert client.ok > 0
