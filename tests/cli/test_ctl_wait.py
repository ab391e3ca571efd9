"""What the waiting commands do with what /fleet says, against a scripted API: a FATAL
instance ends the wait at once with its reason (exit 1), a restart still pending does not;
`events -n` limits the history before following. No daemon; milliseconds."""
from __future__ import annotations

import io
import json
import time

import pytest

from ultrascaled.surface import cli

REASON = "app failed to load: SyntaxError: invalid syntax (app.py, line 3)"


def inst(port, state="running", pid=None, pending=False, reason=""):
    serving = state == "running"
    if pid is None and state in ("running", "starting"):
        pid = port * 10
    return {"port": port, "pid": pid,
            "state": state, "serving": serving, "in_upstream": serving, "restart_pending": pending,
            "reason": reason, "since": 0.0, "restarts": 0, "workers": []}


def fleet(*instances, ports=None):
    ports = [i["port"] for i in instances] if ports is None else ports
    return {"fleet": "t", "desired": len(ports), "ports": ports, "instances": list(instances),
            "ready": sum(1 for i in instances if i["serving"] and i["port"] in ports)}


class ScriptedApi:
    """Answers GET /fleet from a script (the last answer repeats) and records every request;
    polling more than `max_polls` times means the command did not stop when it should have."""

    def __init__(self, fleets, answers=None, max_polls=20):
        self.fleets, self.answers, self.max_polls = list(fleets), answers or {}, max_polls
        self.calls: list[tuple] = []
        self.polls = 0

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        if (method, path) == ("GET", "/fleet"):
            self.polls += 1
            assert self.polls <= self.max_polls, f"still polling /fleet after {self.max_polls} answers"
            return self.fleets.pop(0) if len(self.fleets) > 1 else self.fleets[0]
        return self.answers[(method, path)]


def run(api, argv):
    args = cli.parse_args(argv)
    return args.func(api, args)


class NoPauses:
    """The cli module's `time`, with its pauses between polls recorded instead of slept: the
    scripted answers do not change with time, so each pause would only cost 0.1-0.2 s."""

    def __init__(self):
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(autouse=True)
def pauses(monkeypatch) -> list[float]:
    clock = NoPauses()
    monkeypatch.setattr(cli, "time", clock)
    return clock.pauses


def test_scale_fails_at_once_when_a_wanted_instance_is_fatal():
    api = ScriptedApi([fleet(inst(8001), inst(8002, "starting")),
                       fleet(inst(8001), inst(8002, "fatal", reason=REASON))],
                      {("POST", "/fleet/scale"): {"desired": 2, "ports": [8001, 8002]}})
    with pytest.raises(cli.CtlError) as err:
        run(api, ["scale", "2", "--timeout", "300"])
    assert err.value.code == cli.EXIT_FAILED
    assert f"instance 8002 is FATAL: {REASON}" in str(err.value)
    assert api.polls == 2


def test_a_fatal_instance_on_its_way_out_does_not_fail_a_scale_down():
    api = ScriptedApi([fleet(inst(8001), inst(8002, "fatal", reason=REASON), ports=[8001]),
                       fleet(inst(8001))],
                      {("POST", "/fleet/scale"): {"desired": 1, "ports": [8001]}})
    assert run(api, ["scale", "1"]) == 0


def test_restart_of_a_fatal_instance_waits_while_the_restart_is_pending_then_fails_fast():
    api = ScriptedApi([fleet(inst(8001, "fatal", reason="old")),  # before the request
                       fleet(inst(8001, "fatal", pending=True, reason="old")),  # not yet acted on
                       fleet(inst(8001, "starting", pid=4242)),
                       fleet(inst(8001, "fatal", reason=REASON))],
                      {("POST", "/instances/8001/restart"): {"restarting": [8001]}})
    with pytest.raises(cli.CtlError) as err:
        run(api, ["restart", "8001"])
    assert err.value.code == cli.EXIT_FAILED and REASON in str(err.value) and "old" not in str(err.value)
    assert api.polls == 4


def test_restart_waits_for_a_new_pid_running_and_serving(pauses):
    api = ScriptedApi([fleet(inst(8001, pid=1), inst(8002, pid=2)),  # before the request
                       fleet(inst(8001, pid=1, pending=True), inst(8002, pid=2, pending=True)),
                       fleet(inst(8001, pid=11), inst(8002, pid=2, pending=True)),
                       fleet(inst(8001, pid=11), inst(8002, "starting", pid=12)),
                       fleet(inst(8001, pid=11), inst(8002, pid=12))],
                      {("POST", "/fleet/restart"): {"restarting": [8001, 8002]}})
    assert run(api, ["restart", "--all"]) == 0
    assert api.polls == 5
    assert len(pauses) == 3 and all(0 < p <= 1 for p in pauses)  # between the 4 polls of the wait


def test_reload_without_wait_returns_with_the_answer():
    api = ScriptedApi([fleet(inst(8001))],
                      {("POST", "/fleet/reload"): {"changed": ["app"], "restarting": [8001]}})
    assert run(api, ["reload"]) == 0
    assert api.polls == 0


def test_reload_wait_waits_for_every_restarting_port():
    api = ScriptedApi([fleet(inst(8001, pid=1), inst(8002, pid=2)),
                       fleet(inst(8001, "draining", pid=1, pending=True), inst(8002, pid=2, pending=True)),
                       fleet(inst(8001, pid=11), inst(8002, pid=2, pending=True)),
                       fleet(inst(8001, pid=11), inst(8002, pid=12))],
                      {("POST", "/fleet/reload"): {"changed": ["app"], "restarting": [8001, 8002]}})
    assert run(api, ["reload", "--wait"]) == 0
    assert api.polls == 4


def test_reload_wait_fails_at_once_when_a_restarted_instance_goes_fatal():
    api = ScriptedApi([fleet(inst(8001, pid=1), inst(8002, pid=2)),
                       fleet(inst(8001, "fatal", reason=REASON), inst(8002, pid=2, pending=True))],
                      {("POST", "/fleet/reload"): {"changed": ["app"], "restarting": [8001, 8002]}})
    with pytest.raises(cli.CtlError) as err:
        run(api, ["reload", "--wait"])
    assert err.value.code == cli.EXIT_FAILED and f"instance 8001 is FATAL: {REASON}" in str(err.value)


def test_reload_wait_with_nothing_to_restart_returns_at_once():
    api = ScriptedApi([fleet(inst(8001))], {("POST", "/fleet/reload"): {"changed": [], "restarting": []}})
    assert run(api, ["reload", "--wait"]) == 0


def event(seq, name="fleet.scale"):
    return {"seq": seq, "time": 1700000000.0 + seq, "event": name, "level": "info", "n": seq}


class StreamingApi(ScriptedApi):
    """Answers GET /events from `history` and the first follow with `stream`; a second follow
    is Ctrl-C."""

    def __init__(self, history, stream):
        super().__init__([])
        self.history, self.stream, self.opened = history, stream, []

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        return self.history

    def open(self, method, path, body=None, timeout=-1):
        self.opened.append(path)
        if len(self.opened) > 1:
            raise KeyboardInterrupt
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in self.stream)
        return 200, {}, io.BytesIO(body)


@pytest.mark.parametrize("argv,history,shown", [
    (["events", "-f", "-n", "2"], "/events?since=0&limit=2", [8, 9]),
    (["events", "-f", "-n0"], "/events?since=0&limit=1", []),
    (["events", "-f", "--since", "7"], "/events?since=7&limit=50", [8, 9]),
])
def test_events_follow_shows_at_most_n_of_the_history_then_follows_on_from_it(argv, history, shown, capsys):
    api = StreamingApi({"events": [event(8), event(9)] if shown else [event(9)], "last": 9}, [event(10)])
    assert run(api, argv) == 0
    assert api.calls == [("GET", history, None)]
    assert api.opened[0] == "/events?follow=1&since=9"
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.rsplit("n=", 1)[1]) for line in lines] == shown + [10]


def test_events_without_follow_limits_and_honours_since(capsys):
    api = StreamingApi({"events": [event(5), event(6)], "last": 6}, [])
    assert run(api, ["events", "-n", "2", "--since", "4"]) == 0
    assert api.calls == [("GET", "/events?since=4&limit=2", None)] and api.opened == []
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_restart_fails_at_once_when_the_replacement_cannot_start_and_the_old_master_serves_on():
    gave_up = {**inst(8001, pid=1), "restart_failed": "replacement exited before it was ready (exit 4): "
               "ModuleNotFoundError: No module named 'x'"}
    api = ScriptedApi([fleet(inst(8001, pid=1), inst(8002, pid=2)),
                       fleet(inst(8001, pid=1, pending=True), inst(8002, pid=2)),
                       fleet(gave_up, inst(8002, pid=2))],
                      {("POST", "/fleet/restart"): {"restarting": [8001, 8002]}})
    with pytest.raises(cli.CtlError) as err:
        run(api, ["restart", "--all"])
    assert err.value.code == cli.EXIT_FAILED
    assert "instance 8001 could not be restarted (its running master serves on)" in str(err.value)
    assert "No module named 'x'" in str(err.value)


def test_deploy_progress_counts_the_soak_seconds_only_on_a_terminal(monkeypatch):
    """In a log (stderr not a terminal) the line changes only when the rollout moves, not with
    every second of the soak: one deploy is a few lines, not one every 0.2 s."""
    f = {**fleet(inst(8001)), "deploy": {"rollout": {"kind": "deploy", "release": "r2", "phase": "canary",
                                                     "canary_ready_for": 3.2}}}
    later = json.loads(json.dumps(f))
    later["deploy"]["rollout"]["canary_ready_for"] = 4.4

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert cli.deploy_progress(f) == cli.deploy_progress(later)
    assert "canary serving" in cli.deploy_progress(f)
    monkeypatch.setattr("sys.stderr", Tty())
    assert "canary serving 3.2s" in cli.deploy_progress(f) and cli.deploy_progress(f) != cli.deploy_progress(later)


def worker(index, state="running", reason=""):
    return {"index": index, "pid": 5000 + index, "state": state, "uptime": 3.0, "restarts": 0, "reason": reason}


class ProcessesApi(ScriptedApi):
    """Also answers GET /processes from a script (the last answer repeats)."""

    def __init__(self, fleets, processes, answers=None):
        super().__init__(fleets, answers)
        self.processes = list(processes)

    def request(self, method, path, body=None):
        if (method, path) == ("GET", "/processes"):
            self.calls.append((method, path, body))
            return self.processes.pop(0) if len(self.processes) > 1 else self.processes[0]
        return super().request(method, path, body)


def types(*instances, desired=None):
    insts = list(instances)
    return {"web": {"kind": "web", "desired": 1, "ready": 1, "instances": []},
            "worker": {"kind": "worker", "desired": len(insts) if desired is None else desired,
                       "ready": sum(1 for i in insts if i["state"] == "running"), "instances": insts}}


def test_scale_worker_and_web_posts_each_and_waits_for_both(capsys):
    api = ProcessesApi([fleet(inst(8001), inst(8002))],
                       [types(worker(0), worker(1, "starting"), worker(2, "starting"), desired=3),
                        types(worker(0), worker(1), worker(2))],
                       {("POST", "/fleet/scale"): {"desired": 2, "ports": [8001, 8002]},
                        ("POST", "/processes/worker/scale"): {"process": "worker", "desired": 3, "previous": 1}})
    assert run(api, ["scale", "worker=3", "web=2"]) == 0
    posts = [c for c in api.calls if c[0] == "POST"]
    assert posts == [("POST", "/fleet/scale", {"instances": 2}),
                     ("POST", "/processes/worker/scale", {"instances": 3})]
    assert "worker at 3 processes running" in capsys.readouterr().out


def test_scale_of_a_worker_fails_at_once_when_a_wanted_process_is_fatal():
    api = ProcessesApi([fleet(inst(8001))], [types(worker(0, "fatal", reason="exit 1; failed to start 5 times"))],
                       {("POST", "/processes/worker/scale"): {"process": "worker", "desired": 1, "previous": 0}})
    with pytest.raises(cli.CtlError) as err:
        run(api, ["scale", "worker=1"])
    assert err.value.code == cli.EXIT_FAILED and "worker process 0 is FATAL: exit 1" in str(err.value)
    assert api.polls == 0   # the web fleet was not asked for


def test_status_lists_the_worker_types_after_the_web_instances(capsys):
    api = ProcessesApi([fleet(inst(8001))], [types(worker(0), worker(1, "backoff", reason="killed by SIGKILL"))],
                       {})
    api.fleets[0]["memory"] = {}
    assert run(api, ["status"]) == cli.EXIT_FAILED   # a worker is not running
    out = capsys.readouterr().out
    assert out.index("8001") < out.index("worker (worker): 1/2 running")
    assert "killed by SIGKILL" in out
