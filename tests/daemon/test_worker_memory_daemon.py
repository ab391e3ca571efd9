"""The memory watchdog of a worker type on a real daemon: a Python worker shaped like Celery's
prefork (a parent and a pool child it forks) whose child grows to 100 MB past the type's 60 MB
limit is restarted gracefully (SIGTERM to the parent, which stops its child) with a
`process.memory_recycle` event, and comes back as a new pid that stays under the limit."""
from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.integration

MiB = 1 << 20

LEAK = textwrap.dedent("""\
    import os, signal, sys, time
    marker = sys.argv[1]
    first = not os.path.exists(marker)      # only the first process leaks
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    child = os.fork()
    if child == 0:                          # the pool child: where the leak is
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
        hog = []
        for _ in range(10 if first else 0):
            hog.append(b"\\x01" * (10 << 20))  # 10 MB written, so resident
            time.sleep(0.05)
        while True:
            time.sleep(0.05)
    def stop(*a):
        os.kill(child, signal.SIGTERM)
        os.waitpid(child, 0)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("leaky up", os.getpid(), "child", child, flush=True)
    while True:
        time.sleep(0.05)
""")


@pytest.fixture
def leftovers():
    """Process groups of the worker's processes seen by the test, SIGKILLed afterwards if any
    still runs the script."""
    pgids: set[int] = set()
    yield pgids
    for pgid in pgids:
        try:
            if any("leak.py" in part for part in psutil.Process(pgid).cmdline()):
                os.killpg(pgid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass


def wait_for(what, fn, d, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{d.log_tail()}")


def leaky(d) -> dict:
    status, body = d.api("GET", "/processes")
    assert status == 200, body
    return body["leaky"]["instances"][0]


def test_a_worker_whose_pool_child_grows_past_its_limit_is_restarted_as_a_new_pid(make_daemon, tmp_path,
                                                                                 leftovers):
    script, marker = tmp_path / "leak.py", tmp_path / "starts.txt"
    script.write_text(LEAK)
    d = make_daemon({"memory": {"sample_interval": 0.2, "samples_over": 3},
                     "processes": {"leaky": {"command": ["python", str(script), str(marker)], "count": 1,
                                             "max": 2, "memory_limit_mb": 60, "graceful_timeout": 5,
                                             "start_seconds": 0.5}}}, nginx=False).start()
    first = wait_for("the worker running", lambda: (lambda i: i["pid"] if i["state"] == "running" else None)(
        leaky(d)), d)
    leftovers.add(first)
    [event] = wait_for("process.memory_recycle", lambda: d.events("process.memory_recycle"), d)
    assert (event["process"], event["index"], event["pid"]) == ("leaky", 0, first)
    assert event["limit"] == 60 * MiB and event["samples"] == 3 and event["metric"] == "rss"
    assert event["rss"] > 60 * MiB and event["processes"] == 2      # the parent and its pool child, summed
    again = wait_for("a new process running", lambda: (lambda i: i["pid"] if i["state"] == "running"
                                                       and i["pid"] != first else None)(leaky(d)), d)
    leftovers.add(again)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    stop = [e for e in d.events("process.state") if e.get("process") == "leaky" and e["state"] == "stopping"]
    assert stop and stop[0]["reason"].startswith("memory: ") and stop[0]["signal"] == "SIGTERM"
    assert leaky(d)["restarts"] == 1
    time.sleep(1.5)                          # several samples of the new one: under its limit
    inst = leaky(d)
    assert inst["pid"] == again and inst["rss"] is not None and 0 < inst["rss"] < 60 * MiB
    assert len(d.events("process.memory_recycle")) == 1
    assert marker.read_text().split() == [str(first), str(again)]
