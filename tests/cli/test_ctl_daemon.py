"""ultrascalectl against a real daemon: the waiting commands end as soon as an instance is
FATAL, or its restart was given up (the replacement master cannot load the app), with the
reason, instead of running out a 300 s timeout; `reload --wait` waits for the
rolling restart it starts."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

GOOD = '''def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def ctl_ending_before_its_timeout(d, *args):
    """ultrascalectl with --timeout 300, given 200 s: had it run out its timeout instead of
    ending on the instance's state, subprocess.TimeoutExpired would fail the test. Which way it
    ended is the message it prints (the reason, not "timed out after"), not a stopwatch."""
    assert "300" in args
    out = d.ctl(*args, timeout=200)
    assert "timed out" not in out.stderr, out.stderr
    return out


def test_scale_fails_at_once_with_the_reason_when_the_app_cannot_load(make_daemon):
    d = make_daemon({"app": {"module": "nonexistent_mod:app"}}, nginx=False).start(wait=False)
    d.wait_until(lambda f: True, what="the API answering")
    out = ctl_ending_before_its_timeout(d, "scale", "3", "--timeout", "300")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "is FATAL" in out.stderr and "No module named 'nonexistent_mod'" in out.stderr, out.stderr


def test_restart_fails_at_once_with_the_apps_exception_line(make_daemon, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "ctlapp.py").write_text(GOOD)
    d = make_daemon({"app": {"module": "ctlapp:application", "env": {"PYTHONPATH": str(code)}},
                     "instances": {"count": 1}}, nginx=False).start()
    (code / "ctlapp.py").write_text("def application(:\n")  # a deploy that broke the app
    for cache in code.glob("__pycache__/*"):
        cache.unlink()
    pid = d.fleet()["instances"][0]["pid"]
    out = ctl_ending_before_its_timeout(d, "restart", str(d.base_port), "--timeout", "300")
    assert out.returncode == 1, (out.stdout, out.stderr)
    # the replacement master cannot load the app; the running one serves on (issue 13)
    assert f"instance {d.base_port} could not be restarted" in out.stderr and "SyntaxError" in out.stderr, \
        out.stderr
    assert d.fleet()["instances"][0]["pid"] == pid and d.fleet()["ready"] == 1


def test_reload_wait_returns_once_every_restarted_instance_serves_and_fails_fast_on_fatal(make_daemon):
    d = make_daemon().start()
    pids = {i["port"]: i["pid"] for i in d.fleet()["instances"]}
    d.spec["app"]["env"]["FEATURE_X"] = "on"
    d.write_spec()
    out = d.ctl("reload", "--wait", "--timeout", "120")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "restarted:" in out.stdout
    fleet = d.fleet()  # no waiting here: --wait returned only once this was so
    for i in fleet["instances"]:
        assert i["pid"] != pids[i["port"]] and i["state"] == "running" and i["in_upstream"], i
    assert fleet["ready"] == 2

    d.spec["app"]["module"] = "nonexistent_mod:app"
    d.write_spec()
    out = ctl_ending_before_its_timeout(d, "reload", "--wait", "--timeout", "300")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "could not be restarted" in out.stderr and "nonexistent_mod" in out.stderr, out.stderr
    assert d.fleet()["ready"] == 2, "the running masters serve on"
