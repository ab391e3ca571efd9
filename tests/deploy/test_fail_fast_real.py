"""A broken release judged on its first clear signal (issue 23, item 6), with a real daemon and
gunicorn: a release whose app imports fine but whose health view raises ImportError when it is
first called (as a Django project's URL conf is imported lazily) answers HTTP 500 to the
readiness probes and leaves a traceback in the instance's log. The canary fails at once, long
before health.start_timeout (120 s here), and the verdict quotes the exception line; a fleet
started on that app goes FATAL with the line in its reason in /fleet."""
from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WSGI = '''\
def application(environ, start_response):
    if environ["PATH_INFO"] == "/health":
        from urlconf import health      # imported on first use, like Django's URL conf
        return health(environ, start_response)
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

URLCONF_GOOD = '''\
def health(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''

URLCONF_BROKEN = '''\
from views import missing_view   # views.py has no such name: ImportError on the first request


def health(environ, start_response):
    return missing_view(environ, start_response)
'''

EXCEPTION = "ImportError: cannot import name 'missing_view' from 'views'"


def write_app(root: Path, broken: bool) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lazyapp.py").write_text(WSGI)
    (root / "urlconf.py").write_text(URLCONF_BROKEN if broken else URLCONF_GOOD)
    (root / "views.py").write_text("def other_view(environ, start_response):\n    return []\n")
    return root


def spec(directory: Path) -> dict:
    return {"app": {"directory": str(directory), "module": "lazyapp:application", "config": None},
            "gunicorn": {"worker_class": "sync", "workers": 2},
            "health": {"path": "/health", "start_timeout": 120},
            "deploy": {"soak_seconds": 600}}


def test_a_canary_whose_health_view_raises_importerror_is_rolled_back_at_once_quoting_it(make_daemon, tmp_path):
    d = make_daemon(spec(write_app(tmp_path / "base", broken=False))).start()
    bad = write_app(tmp_path / "bad", broken=True)
    out = d.ctl("deploy", str(bad), timeout=200)
    assert out.returncode == 1 and "failed on boot" in out.stderr and "rolled back" in out.stderr, \
        (out.stdout, out.stderr)
    assert EXCEPTION in out.stderr, out.stderr
    print(f"\nultrascalectl deploy: {out.stderr.strip().splitlines()[-1]}")
    failed = d.events("deploy.failed")
    assert len(failed) == 1 and failed[0]["figure"] == "boot", failed
    reason = failed[0]["reason"]
    # the traceback rule judged it, not the start timeout (120 s) nor the soak (600 s)
    assert "answered HTTP 500 to" in reason and EXCEPTION in reason and "not ready after" not in reason, reason
    killed = d.events("instance.replacement_killed")
    assert killed and all("not ready after" not in k["reason"] for k in killed), killed
    # judged on the first failed replacement: the deploy loop looks at once, not after its idle 5 s
    events = d.events("")
    verdict = next(n for n, e in enumerate(events) if e["event"] == "deploy.failed")
    tries = [e for e in events[:verdict] if e["event"] == "instance.replace_failed"]
    assert 1 <= len(tries) <= 2 and not any(e["gave_up"] for e in tries), tries
    assert d.events("deploy.rolled_back")[-1]["reason"] == reason
    status = d.fleet()["deploy"]
    assert EXCEPTION in status["last_outcome"]["detail"], status
    alerts = d.api("GET", "/alerts")[1]["firing"]
    assert any(a["alert"] == "deploy_failed" and EXCEPTION in a["message"] for a in alerts), alerts
    f = d.fleet()
    assert {i["release"] for i in f["instances"]} == {None} and f["ready"] == 2
    # the log it was read from: `ultrascalectl logs` shows the same traceback
    logs = d.ctl("logs", str(d.base_port))
    assert logs.returncode == 0 and EXCEPTION in logs.stdout, (logs.stdout[-2000:], logs.stderr)


def test_a_fleet_started_on_that_app_goes_fatal_quoting_the_importerror(make_daemon, tmp_path):
    d = make_daemon({**spec(write_app(tmp_path / "bad", broken=True)),
                     "instances": {"count": 1},
                     "restart": {"backoff_initial": 0.1, "backoff_max": 0.5, "fatal_crashes": 3}})
    d.start(wait=False)
    f = d.wait_until(lambda f: f["instances"] and f["instances"][0]["state"] == "fatal", timeout=100,
                     what="the instance FATAL")
    reason = f["instances"][0]["reason"]
    assert EXCEPTION in reason and "failed to start 3 times in a row" in reason, reason
    assert "not ready after" not in reason, reason
    print(f"\n/fleet reason: {reason}")
    starts = [e for e in d.events("instance.state") if e["new"] in ("backoff", "fatal")]
    assert len(starts) == 3 and all(EXCEPTION in e["reason"] and "answered HTTP 500" in e["reason"]
                                    for e in starts), starts
