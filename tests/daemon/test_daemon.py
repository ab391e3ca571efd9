"""The daemon with real gunicorn instances and a real managed nginx: the user flows of issue 2."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.harness import BIN, http_get, pid_alive

pytestmark = pytest.mark.integration


def masters(d):
    return sorted((lo.port, lo.pid) for lo in d.fleet_processes() if lo.is_master)


def test_fleet_starts_on_consecutive_ports_and_serves_directly_and_through_nginx(daemon):
    fleet = daemon.fleet()
    assert fleet["desired"] == 2 and fleet["ready"] == 2
    ports = [i["port"] for i in fleet["instances"]]
    assert ports == [daemon.base_port, daemon.base_port + 1]
    for inst in fleet["instances"]:
        assert inst["state"] == "running" and inst["in_upstream"] and inst["pid"]
        status, body = http_get(inst["port"])
        assert status == 200 and json.loads(body)["port"] == inst["port"]
    seen = {json.loads(http_get(daemon.nginx_port)[1])["port"] for _ in range(10)}
    assert seen == set(ports)
    status, health = daemon.api("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["nginx"]["running"]


def test_status_prints_a_table_and_json(daemon):
    out = daemon.ctl("status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "2/2 ready" in lines[0]
    assert lines[1].split()[:3] == ["PORT", "PID", "STATE"]
    assert all("running" in line for line in lines[2:4])
    js = daemon.ctl("status", "--json")
    assert json.loads(js.stdout)["ready"] == 2


def test_scale_up_adds_next_ports_and_scale_down_removes_the_highest(daemon):
    out = daemon.ctl("scale", "4")
    assert out.returncode == 0, out.stderr
    fleet = daemon.fleet()
    assert [i["port"] for i in fleet["instances"]] == [daemon.base_port + k for k in range(4)]
    assert all(i["state"] == "running" and i["in_upstream"] for i in fleet["instances"])
    assert all(http_get(daemon.base_port + k)[0] == 200 for k in range(4))
    high_pids = [i["pid"] for i in fleet["instances"][2:]]

    out = daemon.ctl("scale", "2")
    assert out.returncode == 0, out.stderr
    fleet = daemon.fleet()
    assert [i["port"] for i in fleet["instances"]] == [daemon.base_port, daemon.base_port + 1]
    assert not any(pid_alive(p) for p in high_pids)
    assert len(masters(daemon)) == 2
    names = [e["new"] for e in daemon.events("instance.state") if e["port"] == daemon.base_port + 3]
    assert names[-3:] == ["draining", "stopping", "stopped"]  # left the upstream before it stopped


def test_kill_9_of_a_master_is_noticed_and_the_port_answers_again(daemon):
    inst = daemon.fleet()["instances"][1]
    old_pid = inst["pid"]
    worker_pids = [w["pid"] for w in inst["workers"]]
    os.kill(old_pid, signal.SIGKILL)
    fleet = daemon.wait_until(lambda f: f["instances"][1]["pid"] not in (None, old_pid)
                              and f["instances"][1]["state"] == "running", timeout=15, what="respawn")
    inst = fleet["instances"][1]
    assert inst["restarts"] == 1 and inst["last_exit"] == "killed by SIGKILL"
    assert http_get(inst["port"])[0] == 200
    # its orphaned workers finish what they answer, then exit (or are reaped after
    # gunicorn.graceful_timeout): issue 13
    deadline = time.monotonic() + 20
    while any(pid_alive(p) for p in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in worker_pids), "orphaned worker of the dead master survived"
    assert daemon.events("instance.orphans_finishing")
    assert len(masters(daemon)) == 2


def test_sigterm_stops_every_instance_and_nginx(daemon):
    pids = [i["pid"] for i in daemon.fleet()["instances"]]
    nginx = daemon.nginx_pid()
    assert nginx and pid_alive(nginx)
    assert daemon.stop() == 0
    assert daemon.fleet_processes() == []
    assert not any(pid_alive(p) for p in pids)
    assert not pid_alive(nginx)


def test_sigkill_of_the_daemon_then_restart_adopts_the_running_instances(make_daemon):
    d = make_daemon().start()
    before = masters(d)
    d.proc.kill()
    d.proc.wait()
    assert all(http_get(p)[0] == 200 for p, _ in before), "instances keep serving without the daemon"
    assert http_get(d.nginx_port)[0] == 200
    d.start()
    assert masters(d) == before, "adopted, no second set"
    fleet = d.fleet()
    assert all(i["adopted"] or i["restarts"] == 0 for i in fleet["instances"])
    assert [i["pid"] for i in fleet["instances"]] == [pid for _, pid in before]
    assert any(e["event"] == "adopt.done" for e in d.events("adopt"))


def test_sigquit_detaches_leaving_the_fleet_serving_for_the_next_daemon(make_daemon):
    d = make_daemon().start()
    before = masters(d)
    nginx = d.nginx_pid()
    d.proc.send_signal(signal.SIGQUIT)
    assert d.proc.wait(15) == 0
    assert masters(d) == before and pid_alive(nginx)
    assert http_get(d.nginx_port)[0] == 200
    d.start()
    assert masters(d) == before and d.nginx_pid() == nginx


def test_orphaned_workers_of_a_killed_fleet_are_cleaned_up_at_start(make_daemon):
    d = make_daemon().start()
    inst = d.fleet()["instances"][0]
    worker = inst["workers"][0]["pid"]
    d.proc.kill()
    d.proc.wait()
    os.kill(inst["pid"], signal.SIGKILL)  # the master dies while no daemon watches
    time.sleep(0.2)
    assert pid_alive(worker)
    d.start()
    assert not pid_alive(worker)
    assert len(masters(d)) == 2


def test_desired_count_survives_a_daemon_restart(make_daemon):
    d = make_daemon().start()
    assert d.ctl("scale", "3").returncode == 0
    assert d.stop() == 0
    d.start()
    assert d.fleet()["desired"] == 3 and len(masters(d)) == 3


@pytest.mark.parametrize("body,code,status", [
    (b"{not json", "bad_json", 400),
    (b"[1]", "bad_json", 400),
    (b'{"instances": "3"}', "bad_request", 400),
    (b'{"instances": true}', "bad_request", 400),
    (b'{"instances": 99}', "out_of_range", 400),
    (b'{"instances": 0}', "out_of_range", 400),
])
def test_bad_scale_requests_are_refused_and_change_nothing(daemon, body, code, status):
    got, payload = daemon.api("POST", "/fleet/scale", raw=body)
    assert (got, payload["error"]["code"]) == (status, code)
    assert payload["error"]["message"]
    assert daemon.fleet()["desired"] == 2


def test_unknown_ports_paths_and_methods_get_404_and_405(daemon):
    assert daemon.api("POST", "/instances/1/restart")[0] == 404
    assert daemon.api("POST", "/instances/abc/restart")[1]["error"]["code"] == "bad_request"
    assert daemon.api("GET", "/nope")[1]["error"]["code"] == "not_found"
    assert daemon.api("DELETE", "/fleet")[1]["error"]["code"] == "method_not_allowed"
    out = daemon.ctl("restart", "1")
    assert out.returncode == 4 and "no instance on port 1" in out.stderr


def test_invalid_spec_at_start_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances:\n  base_port: 80\n  count: x\n")
    out = subprocess.run([str(BIN / "ultrascaled"), "--spec", str(bad)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert "instances.base_port (line 2): must be 1024..65535, got 80" in out.stderr
    assert "instances.count (line 3)" in out.stderr


def test_invalid_spec_on_reload_is_refused_and_the_running_spec_stays(daemon):
    good = daemon.spec_path.read_text()
    daemon.spec_path.write_text(good + "bogus_key: 1\n")
    status, payload = daemon.api("POST", "/fleet/reload")
    assert status == 400 and payload["error"]["code"] == "spec_invalid"
    assert any("bogus_key" in e for e in payload["error"]["errors"])
    os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_until(lambda f: any(e["event"] == "spec.refused" for e in daemon.events("spec")),
                      timeout=5, what="spec.refused event")
    assert daemon.fleet()["ready"] == 2 and daemon.proc.poll() is None


def test_reload_with_a_changed_environment_restarts_instances_one_at_a_time(daemon):
    pids = [i["pid"] for i in daemon.fleet()["instances"]]
    daemon.spec["app"]["env"]["FEATURE_X"] = "on"
    daemon.write_spec()
    out = daemon.ctl("reload")
    assert out.returncode == 0 and "restarting" in out.stdout, out.stderr
    fleet = daemon.wait_until(lambda f: all(i["pid"] not in pids and i["state"] == "running"
                                            for i in f["instances"]) and f["ready"] == 2,
                              timeout=30, what="rolled restart")
    assert len(fleet["instances"]) == 2
    # each master is replaced in place (issue 13): the second replacement starts only after the
    # first handed over, and no instance left RUNNING
    steps = [(e["event"], e["port"]) for e in daemon.events("instance.repla")]
    p0, p1 = daemon.base_port, daemon.base_port + 1
    assert steps.index(("instance.replaced", p0)) < steps.index(("instance.replacing", p1)), steps
    assert not [e for e in daemon.events("instance.state") if e["new"] == "draining"]


def test_an_app_that_cannot_load_is_fatal_not_a_restart_loop(make_daemon):
    d = make_daemon({"app": {"module": "no_such_module_xyz:application"}}, nginx=False).start(wait=False)
    fleet = d.wait_until(lambda f: f["instances"] and all(i["state"] == "fatal" for i in f["instances"]),
                         timeout=30, what="fatal")
    assert all(i["restarts"] == 0 for i in fleet["instances"])
    assert "app failed to load" in fleet["instances"][0]["reason"] or \
        "worker failed to boot" in fleet["instances"][0]["reason"]
    status, health = d.api("GET", "/health")
    assert status == 503 and "fatal" in health["reasons"][0]
    out = d.ctl("status")
    assert out.returncode == 1 and "fatal" in out.stdout
    assert any(e["event"] == "alert.firing" and e["alert"] == "instance_fatal" for e in d.events("alert"))
    firing = d.api("GET", "/alerts")[1]["firing"]
    assert sorted(a["port"] for a in firing if a["alert"] == "instance_fatal") == [d.base_port, d.base_port + 1], \
        "regression (issue 10, defect 4): FATAL reaches GET /alerts, not only the event log"


def test_a_port_taken_by_another_program_is_reported_with_its_pid(make_daemon):
    d = make_daemon(nginx=False)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", d.base_port + 1))
    blocker.listen()
    try:
        d.start(wait=False)
        fleet = d.wait_until(lambda f: len(f["instances"]) == 2 and f["instances"][1]["state"] == "backoff"
                             and f["instances"][0]["state"] == "running", timeout=20, what="backoff")
        reason = fleet["instances"][1]["reason"]
        assert f"is in use by pid {os.getpid()}" in reason, reason
    finally:
        blocker.close()
    d.wait_until(lambda f: f["ready"] == 2, timeout=30, what="recovery once the port is free")


def test_a_taken_api_port_stops_the_start_before_any_instance_runs(make_daemon):
    """The API binds before its startup (the fleet's cleanup context) runs."""
    d = make_daemon(nginx=False)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", d.api_port))
    blocker.listen()
    try:
        out = subprocess.run([str(BIN / "ultrascaled"), "--spec", str(d.spec_path)], capture_output=True,
                             text=True, timeout=60)
    finally:
        blocker.close()
    assert out.returncode == 1 and f"cannot serve the API on 127.0.0.1:{d.api_port}" in out.stderr, out.stderr
    assert "instance.state" not in out.stderr and not d.fleet_processes()
    d.start()  # the lock was released: the same fleet starts once the port is free
    assert d.fleet()["ready"] == 2


def test_mutating_requests_need_the_token_when_one_is_configured(make_daemon, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    token_file.chmod(0o600)
    d = make_daemon({"api": {"token_file": str(token_file)}}, nginx=False).start()
    status, payload = d.api("POST", "/fleet/scale", {"instances": 3})
    assert status == 401 and payload["error"]["code"] == "unauthorized"
    assert d.api("GET", "/fleet")[0] == 200  # reading needs no token
    assert d.api("POST", "/fleet/scale", {"instances": 3}, token="wrong")[0] == 401
    assert d.api("POST", "/fleet/scale", {"instances": 3}, token="s3cret")[0] == 202
    out = d.ctl("--token-file", str(token_file), "scale", "2")
    assert out.returncode == 0, out.stderr


def test_non_loopback_api_without_a_token_refuses_to_start(make_daemon):
    d = make_daemon({"api": {"host": "0.0.0.0"}}, nginx=False)
    out = subprocess.run([str(BIN / "ultrascaled"), "--spec", str(d.spec_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "api.token_file must name a file" in out.stderr


def test_systemd_notify_ready_after_the_fleet_is_up_and_stopping_on_sigterm(make_daemon, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(30)
    try:
        d = make_daemon(nginx=False)
        d.env.update(NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
        d.start(wait=False)
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(s.recv(4096).decode())
        assert d.fleet()["ready"] == 2, "READY=1 only once every instance serves"
        assert "WATCHDOG=1" in messages
        d.proc.send_signal(signal.SIGTERM)
        while not any(m.startswith("STOPPING=1") for m in messages):
            messages.append(s.recv(4096).decode())
        assert d.proc.wait(30) == 0
    finally:
        s.close()


def test_unit_file_is_type_notify_with_reload_and_graceful_stop():
    unit = (Path(__file__).resolve().parents[2] / "systemd/ultrascaled.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "KillMode=process", "LimitNOFILE="):
        assert line in unit, line


def test_an_instance_that_never_gets_ready_is_killed_and_retried_without_wedging_the_daemon(make_daemon):
    # Regression: the kill after start_timeout was re-issued in a busy loop that starved the
    # event loop (no API answers, no exit noticed).
    # 4 s: gunicorn listens well within it even on a busy host, so the last probe is the 404
    d = make_daemon({"health": {"path": "/never-200", "start_timeout": 4.0},
                     "restart": {"fatal_crashes": 2, "backoff_initial": 0.1}}, nginx=False).start(wait=False)
    fleet = d.wait_until(lambda f: f["instances"] and all(i["state"] == "fatal" for i in f["instances"]),
                         timeout=60, what="fatal after repeated start timeouts")
    reason = fleet["instances"][0]["reason"]
    assert "failed to start 2 times in a row" in reason and "last probe: HTTP 404" in reason
    assert any(e["event"] == "instance.killed" and "not ready after 4s" in e["reason"]
               for e in d.events("instance.killed"))
    assert d.fleet_processes() == []


def test_events_follow_streams_new_events_as_they_happen(daemon):
    follower = subprocess.Popen([str(BIN / "ultrascalectl"), "--api", daemon.api_url, "events", "-f"],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert daemon.ctl("scale", "3").returncode == 0
        deadline = time.monotonic() + 15
        seen = []
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            seen.append(line)
            if "fleet.scale" in line and "desired=3" in line:
                break
        assert any("fleet.scale" in s and "desired=3" in s for s in seen), seen[-5:]
    finally:
        follower.kill()
        follower.wait()
