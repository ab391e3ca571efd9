"""A worker type autoscaled on its queue's depth on a real daemon and a real redis-server (with a
password): 500 items pushed onto an RQ-style list, popped slowly (BLPOP, 0.1 s per item) by a
small Python loop; the type scales from 1 up, drains the list, and scales back down after its
scale-down window. The password never shows in the API, the events or the daemon's log."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time

import psutil
import pytest

from support.harness import free_port_block
from support import needs
from support.redis_servers import Node, _server_args

pytestmark = pytest.mark.integration

PASSWORD = "qscale-s3cret-pw"
POP = textwrap.dedent("""\
    import sys, time
    import redis
    r = redis.Redis.from_url(sys.argv[1])
    key = sys.argv[2]
    while True:
        item = r.blpop([key], timeout=1)
        if item is not None:
            time.sleep(0.1)          # the work: 10 items a second per process
""")


@pytest.fixture
def redis_node(tmp_path):
    needs.redis_tools()
    needs.module("redis")
    port = free_port_block(1)
    node = Node(port, tmp_path / "redis", _server_args(port, ["--requirepass", PASSWORD]), password=PASSWORD)
    node.start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()


@pytest.fixture
def pids():
    """Worker pids seen by the test: ended by process group afterwards if any is still ours."""
    seen: set[int] = set()
    yield seen
    for pid in seen:
        try:
            if any("pop.py" in part for part in psutil.Process(pid).cmdline()):
                os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass


def worker(d) -> dict:
    status, body = d.api("GET", "/processes")
    assert status == 200, body
    return body["worker"]


def wait(d, cond, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = worker(d)
        if cond(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last}\n{d.log_tail()}")


@pytest.mark.timeout(180)
def test_a_burst_scales_the_type_up_it_drains_and_scales_back_down(make_daemon, tmp_path, redis_node, pids):
    import redis
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_node.port}/0"
    key = "rq:queue:default"
    script = tmp_path / "pop.py"
    script.write_text(POP)
    d = make_daemon({"processes": {"worker": {
        "command": [sys.executable, str(script), url, key], "count": 1, "min": 0, "max": 6,
        "graceful_timeout": 3, "start_seconds": 0.3,
        "autoscale": {"queue": {"redis": url, "rq": "default"}, "target": 50, "min": 1, "interval": 1,
                      "behavior": {"scale_up": {"pods_period_seconds": 2, "percent_period_seconds": 2},
                                   "scale_down": {"stabilization_window_seconds": 5}}},
    }}}, nginx=False).start()
    body = wait(d, lambda w: w["ready"] == 1 and w.get("autoscale", {}).get("last"), 30, "one worker, decided")
    assert body["autoscale"]["last"]["queue_depth"] == 0 and body["desired"] == 1
    r = redis.Redis.from_url(url)
    r.rpush(key, *[f"job-{i}" for i in range(500)])
    pushed = time.monotonic()

    body = wait(d, lambda w: w["desired"] == 6 and w["ready"] == 6, 30, "scaled up to max 6")
    pids.update(i["pid"] for i in body["instances"] if i["pid"])
    up_after = time.monotonic() - pushed
    wait(d, lambda w: w["autoscale"]["queue_depth"] == 0, 60, "the list drained")
    drained_after = time.monotonic() - pushed
    assert r.llen(key) == 0
    body = wait(d, lambda w: w["desired"] == 1, 30, "scaled back down to autoscale.min 1")
    down_after = time.monotonic() - pushed
    wait(d, lambda w: len(w["instances"]) == 1 and w["ready"] == 1, 20, "one process left")

    scales = [e for e in d.events("process.scale") if e.get("process") == "worker"]
    assert [e["source"] for e in scales] and all(e["source"] == "autoscale" for e in scales), scales
    assert max(e["desired"] for e in scales) == 6 and scales[-1]["desired"] == 1, scales
    decided = [e for e in d.events("process.autoscale") if e["event"] == "process.autoscale"]
    ups = [e for e in decided if e["action"] == "scale_up"]
    assert ups and ups[0]["queue_depth"] >= 250 and "vs target 50" in ups[0]["reason"], ups
    status, auto = d.api("GET", "/autoscale")
    # the first step down came a full scale-down window (5 s) after the last decision that
    # recommended the count it had
    history = auto["processes"]["worker"]["decisions"]
    first_down = next(x for x in history if x["action"] == "scale_down")
    before = [x for x in history if x["time"] < first_down["time"]
              and (x["recommendation"] or 0) >= first_down["current"]]
    assert before and first_down["time"] - before[-1]["time"] >= 4.5, history
    assert status == 200 and auto["processes"]["worker"]["queue"]["redis"] == \
        f"redis://:***@127.0.0.1:{redis_node.port}/0"
    everything = json.dumps([worker(d), auto, d.events("")]) + d.log_tail(100000)
    assert PASSWORD not in everything
    print(f"\nup to 6 after {up_after:.1f}s, drained after {drained_after:.1f}s, "
          f"down to 1 after {down_after:.1f}s")
    d.stop()
