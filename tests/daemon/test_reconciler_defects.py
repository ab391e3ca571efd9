"""Regressions of issue 10 that only real processes show: log rotation under a live writer,
two fleets on one host, kill -9 loops, a daemon short of file descriptors."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
import urllib.request

import pytest

from support.harness import BIN, pid_alive

pytestmark = pytest.mark.integration

PRINTER = '''
import sys
def application(environ, start_response):
    n = environ.get("QUERY_STRING", "")
    if n.startswith("n="):
        print("line " + n[2:] + " " + "x" * 200, flush=True)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_regression_rotation_under_a_live_writer_loses_no_line(make_daemon):
    """issue 10, defect 8: copy-then-truncate lost lines, and its test failed on a busy machine.
    Rename-and-reopen (gunicorn reopens on SIGUSR1) loses none, whatever the timing."""
    d = make_daemon({"instances": {"count": 1}, "logs": {"max_bytes": 4096, "backups": 100},
                     "memory": {"sample_interval": 0.1}}, nginx=False)
    (d.tmp / "printer.py").write_text(PRINTER)
    d.spec["app"] = {"directory": str(d.tmp), "module": "printer:application", "config": None}
    d.write_spec()
    d.start()
    port = d.base_port
    total = 1500
    for n in range(total):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?n={n}", timeout=5) as r:
            assert r.status == 200
    log = d.tmp / "log" / f"instance-{port}.log"
    d.wait_until(lambda f: True)  # one more round trip; then let the sampler catch up
    time.sleep(0.5)
    seen = []
    for path in sorted(log.parent.glob(log.name + "*")):
        seen += [int(ln.split()[1]) for ln in path.read_text(errors="replace").splitlines()
                 if ln.startswith("line ")]
    rotations = [e for e in d.events("instance.log_rotated")]
    assert len(rotations) >= 2, "the test must rotate under the writer"
    assert sorted(seen) == list(range(total)), f"missing: {sorted(set(range(total)) - set(seen))[:10]}"


def test_regression_a_second_daemon_with_the_same_name_or_state_dir_is_refused(make_daemon):
    """issue 10, defect 3: a second fleet with the same `name` adopted and stopped the first
    one's instances; one on the same state_dir took over its nginx. Both now refuse to start,
    and the first fleet is untouched."""
    first = make_daemon(nginx=False, sub="a").start()
    pids = {i["port"]: i["pid"] for i in first.fleet()["instances"]}
    same_name = make_daemon(nginx=False, sub="b")
    same_name.spec["name"] = first.name
    same_name.write_spec()
    same_name.start(wait=False)
    assert same_name.proc.wait(20) == 2
    assert f"fleet name '{first.name}' is already in use on this host by ultrascaled pid " \
           f"{first.proc.pid}" in same_name.log_path.read_text()
    same_dir = make_daemon(nginx=False, sub="c")
    same_dir.spec["paths"] = first.spec["paths"]
    same_dir.write_spec()
    same_dir.start(wait=False)
    assert same_dir.proc.wait(20) == 2
    assert "is in use by another ultrascaled" in same_dir.log_path.read_text()
    check = subprocess.run([str(BIN / "ultrascaled"), "--check", "--spec", str(same_dir.spec_path)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and "in use by another ultrascaled" in check.stderr
    assert {i["port"]: i["pid"] for i in first.fleet()["instances"]} == pids
    assert all(pid_alive(p) for p in pids.values())


def test_regression_a_fleet_whose_name_extends_ours_is_never_adopted(make_daemon):
    """issue 10, defect 3: find_leftovers("demo") took fleet demo-2's master for one of its own."""
    ours = make_daemon(nginx=False, sub="ours")
    neighbour = make_daemon(nginx=False, sub="neighbour")
    neighbour.name = neighbour.spec["name"] = ours.name + "-2"
    # the neighbour's ports would parse as ours under the old prefix match
    neighbour.write_spec()
    neighbour.start()
    theirs = {i["pid"] for i in neighbour.fleet()["instances"]}
    ours.start()
    ours.proc.send_signal(signal.SIGKILL)   # ours dies; a new daemon of ours adopts its fleet
    ours.proc.wait(10)
    ours.start()
    adopted = [e for e in ours.events("adopt.done")]
    assert adopted and all(p in range(ours.base_port, ours.base_port + 6) for p in adopted[0]["masters"])
    assert {i["pid"] for i in neighbour.fleet()["instances"]} == theirs
    assert all(pid_alive(p) for p in theirs)


def test_regression_kill_9_of_a_serving_master_five_times_never_wedges_it(make_daemon):
    """issue 10, defect 11: the fifth kill -9 within 60 s left the instance RUNNING with no
    pid, then STOPPING for ever (fleet at N-1, no alert)."""
    d = make_daemon({"instances": {"count": 1}, "restart": {"backoff_initial": 0.1, "backoff_max": 0.5}},
                    nginx=False).start()
    for _ in range(6):
        pid = d.fleet()["instances"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        d.wait_until(lambda f: f["instances"][0]["state"] == "running" and f["instances"][0]["pid"] != pid,
                     timeout=20, what="serving again")
    assert not d.events("reconciler.error")
    alerts = d.api("GET", "/alerts")[1]["firing"]
    assert [a["alert"] for a in alerts if a["alert"] == "instance_crash_loop"] == ["instance_crash_loop"]


def test_regression_a_moment_without_file_descriptors_does_not_wedge_an_instance(make_daemon):
    """issue 10, defect 9: with the daemon at its open-files limit, the reap task died on
    EMFILE, the instance stayed in BACKOFF after the fds were free, the sampler died and the
    publisher crash-looped. Now every path retries, and the instance recovers by itself."""
    d = make_daemon({"instances": {"count": 1}}, nginx=False).start()
    pid = d.fleet()["instances"][0]["pid"]
    soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
    open_now = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (open_now, hard))  # no fd to spare
    try:
        os.kill(pid, signal.SIGKILL)
        time.sleep(2.0)
    finally:
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    f = d.wait_until(lambda f: f["instances"][0]["state"] == "running" and f["instances"][0]["pid"] != pid,
                     timeout=40, what="recovered after the fds came back")
    assert f["ready"] == 1
    status, health = d.api("GET", "/health")
    assert status == 200, health
    assert not [e for e in d.events("instance.state") if e.get("new") == "fatal"]
    assert len(d.events("upstream.failed")) < 20, "no crash loop flooding the events"
    assert json.dumps(d.events("daemon.task_crashed")) == "[]"


BAD_RELOADS = {
    "empty": "",
    "comment only": "# nothing here\n",
    "null": "~\n",
    "truncated": "name: x\ninstances:\n  count: 2\n  base_port: 80",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)),
    "NaN start_timeout": "health: {start_timeout: .nan}\n",
    "env name with =": "app: {env: {'A=B': x}}\n",
    "NUL in a value": "app: {env: {A: \"x\\0y\"}}\n",
    "binary": "\x00\x01\x02\xff",
}


def test_hostile_reloads_are_refused_and_nothing_running_is_touched(make_daemon):
    """issue 12: an empty spec on reload took the fleet down; a nested-alias file froze the API
    for 11 s. Every bad reload is a JSON 400 naming the problem, for little of the daemon's CPU
    (what the bomb burned; a busy host stretches the wall time, not that), and the fleet is as it was."""
    import psutil
    d = make_daemon({"instances": {"count": 2}}, nginx=False).start()
    daemon = psutil.Process(d.proc.pid)

    def cpu_seconds() -> float:
        t = daemon.cpu_times()
        return t.user + t.system
    before = {i["port"]: i["pid"] for i in d.fleet()["instances"]}
    good = d.spec_path.read_bytes()
    try:
        for name, text in BAD_RELOADS.items():
            d.spec_path.write_bytes(text.encode("utf-8", "surrogateescape") if name != "binary"
                                    else text.encode("latin-1"))
            cpu0 = cpu_seconds()
            status, body = d.api("POST", "/fleet/reload")
            assert cpu_seconds() - cpu0 < 1.5, name
            assert status == 400 and body["error"]["code"] == "spec_invalid", (name, body)
            assert body["error"]["errors"], name
            os.kill(d.proc.pid, signal.SIGHUP)  # the same file through SIGHUP
        d.wait_until(lambda f: len([e for e in d.events("spec.refused")]) >= 1, timeout=10, what="refusals")
    finally:
        d.spec_path.write_bytes(good)
    assert {i["port"]: i["pid"] for i in d.fleet()["instances"]} == before
    assert d.api("GET", "/health")[0] == 200


SLOW_WHEN_FLAGGED = '''
import os, time
if os.path.exists(os.path.join(os.path.dirname(__file__), "slow")):
    time.sleep(60)          # a long boot (Django, a model): SIGTERM cannot cut it short
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_fifty_concurrent_random_scales_converge_and_booting_instances_stop_at_once(make_daemon):
    """issue 24, class 4: an instance told to stop while it boots was left in `stopping` for
    ~29 s (gunicorn's master waits graceful_timeout for a worker still importing the app), and
    /health answered 503 meanwhile. Now it gets SIGTERM, then SIGKILL 2 s later: after 50
    concurrent random scales and a last one back to 1, the fleet is 1 ready instance and nothing
    else within 12 s (2 s of SIGTERM, the kill, the exit's reaping, on a busy machine)."""
    import random
    from concurrent.futures import ThreadPoolExecutor
    d = make_daemon({"instances": {"count": 1, "max": 8}, "gunicorn": {"workers": 1, "graceful_timeout": 30},
                     "health": {"start_timeout": 90}}, nginx=False)
    (d.tmp / "slowboot.py").write_text(SLOW_WHEN_FLAGGED)
    d.spec["app"] = {"directory": str(d.tmp), "module": "slowboot:application", "config": None}
    d.write_spec()
    d.start()
    (d.tmp / "slow").write_text("")    # every instance started from now on boots for 60 s
    rng = random.Random(24)
    counts = [rng.randint(1, 7) for _ in range(50)]
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda n: d.api("POST", "/fleet/scale", {"instances": n})[0], counts))
    assert set(statuses) == {202}, statuses
    assert d.api("POST", "/fleet/scale", {"instances": 6})[0] == 202
    d.wait_until(lambda f: sum(i["state"] == "starting" for i in f["instances"]) >= 5, timeout=10,
                 what="5 instances booting")
    assert d.api("POST", "/fleet/scale", {"instances": 1})[0] == 202
    asked = time.monotonic()
    fleet = d.wait_until(lambda f: f["ready"] == 1 and len(f["instances"]) == 1, timeout=12,
                         what="1 ready instance and no other")
    took = time.monotonic() - asked
    assert fleet["instances"][0]["port"] == d.base_port, fleet
    assert d.api("GET", "/health")[0] == 200
    killed = [e for e in d.events("instance.killed") if "stopped before it served" in e["reason"]]
    stopped_booting = [e for e in d.events("instance.state")
                       if e.get("old") == "starting" and e.get("new") == "stopping"]
    assert stopped_booting and len(killed) <= len(stopped_booting), (killed, stopped_booting)
    print(f"converged {took:.1f} s after the last scale; {len(stopped_booting)} stopped while booting")


def test_a_reload_naming_a_system_file_as_a_log_is_refused_and_nginx_keeps_its_files(make_daemon):
    """issue 24, class 1: `nginx.access_log: /etc/passwd` (and a gunicorn log under /etc) passed
    --check; the managed nginx, as root, would append to it. Through the API and SIGHUP the
    reload is refused naming the key and the path rule; nothing running changes."""
    import yaml
    d = make_daemon({"instances": {"count": 1}}).start()
    before = {i["port"]: i["pid"] for i in d.fleet()["instances"]}
    confs = {p: p.read_bytes() for p in d.tmp.rglob("*.conf")}
    assert confs, "the managed nginx's files"
    good = d.spec_path.read_bytes()
    for key, value, needle in (("nginx", {"access_log": "/etc/passwd"}, "nginx.access_log"),
                               ("gunicorn", {"args": ["--access-logfile", "/etc/cron.d/x"]}, "gunicorn.args")):
        spec = yaml.safe_load(good)
        spec.setdefault(key, {}).update(value)
        d.spec_path.write_text(yaml.safe_dump(spec))
        status, body = d.api("POST", "/fleet/reload")
        assert status == 400 and body["error"]["code"] == "spec_invalid", body
        assert any(e.startswith(needle) and "the path rule" in e for e in body["error"]["errors"]), body
        os.kill(d.proc.pid, signal.SIGHUP)
        d.wait_until(lambda f: any(needle in json.dumps(e) for e in d.events("spec.refused")), timeout=10,
                     what=f"the SIGHUP reload refused naming {needle}")
    d.spec_path.write_bytes(good)
    assert {i["port"]: i["pid"] for i in d.fleet()["instances"]} == before
    assert {p: p.read_bytes() for p in d.tmp.rglob("*.conf")} == confs, "nginx's files as they were"
    assert d.api("GET", "/health")[0] == 200
