"""The `processes:` worker types on a real daemon: real processes of a small Python loop, real
signals. A kill -9 is restarted, a scale 2 -> 1 stops one with SIGTERM, a worker that ignores
SIGTERM is SIGKILLed at its graceful_timeout, and the daemon's stop stops them all."""
from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest

from support.process_types import gone, marked, pid_of, processes, running, wait_processes  # noqa: F401

pytestmark = pytest.mark.integration

LOOP = textwrap.dedent("""\
    import os, signal, sys, time
    out = sys.argv[1]
    deaf = "--deaf" in sys.argv
    def note(what):
        with open(out, "a") as f:
            f.write(f"{what} {os.getpid()} {os.environ.get('ULTRASCALE_PROCESS')} {os.getcwd()}\\n")
    def on_term(signum, frame):
        note("term")
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if deaf else on_term)
    note("start")
    print("worker up", os.environ.get("ULTRASCALE_PROCESS"), os.environ.get("QUEUE"), flush=True)
    while True:
        time.sleep(0.05)
""")












def notes(path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


@pytest.fixture
def started(tmp_path):
    """Worker pids seen by the test: ended by process group afterwards if any is still ours."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if any("loop.py" in part for part in p.cmdline()):
                os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass


def test_workers_restart_scale_down_with_sigterm_sigkill_at_deadline_and_stop_with_the_daemon(
        make_daemon, tmp_path, started):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "notes.txt"
    d = make_daemon({"processes": {
        "worker": {"command": ["python", str(script), str(out)], "count": 2, "max": 4,
                   "env": {"QUEUE": "default"}, "graceful_timeout": 5, "start_seconds": 0.5},
        "deaf": {"command": ["python", str(script), str(out), "--deaf"], "count": 1,
                 "graceful_timeout": 1.5, "start_seconds": 0.5},
    }}, nginx=False).start()
    body = wait_processes(d, lambda b: running(b, "worker", 2) and running(b, "deaf", 1), what="workers running")
    started.update(i["pid"] for t in ("worker", "deaf") for i in body[t]["instances"])
    assert body["web"]["kind"] == "web" and body["web"]["ready"] == 2 and body["worker"]["kind"] == "worker"
    first = pid_of(body, "worker", 0)
    assert [n[:3] for n in notes(out) if n[1] == str(first)] == [["start", str(first), f"{d.name}/worker/0"]]
    assert "worker up " + f"{d.name}/worker/0 default" in (tmp_path / "log" / f"{d.name}-worker-0.log").read_text()
    assert os.getpgid(first) == first   # its own process group

    # kill -9 from outside: restarted at once (the first restart), a new pid, restarts 1
    os.kill(first, signal.SIGKILL)
    body = wait_processes(d, lambda b: running(b, "worker", 2) and pid_of(b, "worker", 0) != first,
                          what="worker 0 restarted")
    started.add(pid_of(body, "worker", 0))
    assert body["worker"]["instances"][0]["restarts"] == 1
    assert any(e["state"] == "backoff" and e["reason"] == "killed by SIGKILL" for e in d.events("process.state"))

    # scale 2 -> 1: the highest index gets SIGTERM and exits by itself
    second = pid_of(body, "worker", 1)
    r = d.ctl("scale", "worker=1", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert "worker at 1 processes running" in r.stdout
    assert gone(second) and ["term", str(second)] in [n[:2] for n in notes(out)]
    assert running(processes(d), "worker", 1)

    # a worker that ignores SIGTERM: SIGKILLed to its group at graceful_timeout (1.5 s)
    deaf = pid_of(body, "deaf", 0)
    t0 = time.monotonic()
    assert d.api("POST", "/processes/deaf/scale", {"instances": 0})[0] == 202
    assert gone(deaf, timeout=10)
    took = time.monotonic() - t0
    assert 1.4 <= took < 5, took
    killed = d.events("process.killed")
    assert killed and killed[-1]["process"] == "deaf" and killed[-1]["signal"] == "SIGKILL"
    assert ["term", str(deaf)] not in [n[:2] for n in notes(out)]

    # status lists the worker types after the web instances
    r = d.ctl("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.index("worker (worker): 1/1 running") > r.stdout.index(str(d.base_port))

    # the daemon's stop stops every worker: SIGTERM, and SIGKILL at the deadline for the deaf one
    assert d.api("POST", "/processes/deaf/scale", {"instances": 1})[0] == 202
    body = wait_processes(d, lambda b: running(b, "deaf", 1), what="deaf running again")
    live = [i["pid"] for t in ("worker", "deaf") for i in body[t]["instances"]]
    started.update(live)
    t0 = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert all(gone(p, timeout=1) for p in live), [p for p in live if not gone(p, 0)]
    assert time.monotonic() - t0 >= 1.4   # the deaf one was given its graceful_timeout
    worker_pid = pid_of(body, "worker", 0)
    assert ["term", str(worker_pid)] in [n[:2] for n in notes(out)]




def test_regression_a_sigkilled_or_detached_daemons_workers_are_adopted_by_the_next_not_run_twice(
        make_daemon, tmp_path, started):
    """issue 22: a daemon killed with SIGKILL left its workers running in their sessions and the
    next daemon started `count` more beside them (two sets of workers, the old never stopped)."""
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    out = tmp_path / "notes.txt"
    d = make_daemon({"processes": {
        "worker": {"command": ["python", str(script), str(out)], "count": 2, "max": 4,
                   "graceful_timeout": 5, "start_seconds": 0.5},
    }}, nginx=False).start()
    body = wait_processes(d, lambda b: running(b, "worker", 2), what="workers running")
    before = {i["index"]: i["pid"] for i in body["worker"]["instances"]}
    started.update(before.values())
    assert marked(d.name) == set(before.values())

    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    time.sleep(0.3)
    assert marked(d.name) == set(before.values()), "the workers outlive a killed daemon"

    d.start()
    body = wait_processes(d, lambda b: running(b, "worker", 2), what="workers running again")
    assert {i["index"]: i["pid"] for i in body["worker"]["instances"]} == before
    assert all(i["restarts"] == 0 and i["uptime"] > 0.5 for i in body["worker"]["instances"])
    adopted = d.events("process.adopted")
    assert sorted(e["pid"] for e in adopted) == sorted(before.values())
    time.sleep(1.5)   # a second set would be starting (and start_seconds passed) by now
    assert marked(d.name) == set(before.values()), "no second set beside the adopted ones"
    assert [n[0] for n in notes(out)].count("start") == 2

    # a detaching stop (SIGQUIT, to upgrade the daemon) leaves them running for the next one too
    d.proc.send_signal(signal.SIGQUIT)
    assert d.proc.wait(15) == 0
    assert marked(d.name) == set(before.values())
    d.start()
    body = wait_processes(d, lambda b: running(b, "worker", 2), what="workers adopted after SIGQUIT")
    assert {i["index"]: i["pid"] for i in body["worker"]["instances"]} == before
    assert marked(d.name) == set(before.values())

    assert d.stop(timeout=30) == 0   # the next daemon's stop stops the adopted workers
    assert all(gone(p, timeout=5) for p in before.values())
    assert marked(d.name) == set()
    assert sorted(int(n[1]) for n in notes(out) if n[0] == "term") == sorted(before.values())
