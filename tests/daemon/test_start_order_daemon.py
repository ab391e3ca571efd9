"""Start order and readiness on a real daemon: a worker with `requires: [tcp://127.0.0.1:PORT]`
waits (GET /processes says for what) until the test opens a listener on that port, then starts;
a worker with `ready: {tcp: PORT}` whose process listens only after 1 s is STARTING until it does."""
from __future__ import annotations

import os
import signal
import socket
import textwrap
import time

import psutil
import pytest

from support.harness import free_port_block
from support.process_types import processes, wait_processes

pytestmark = pytest.mark.integration

SLOW = textwrap.dedent("""\
    import socket, sys, time
    time.sleep(1.0)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(8)
    while True:
        conn, _ = s.accept()
        conn.close()
""")
LOOP = "import time\nwhile True:\n    time.sleep(0.05)\n"


@pytest.fixture
def seen():
    """Worker pids seen by the test: their process groups are ended afterwards if still ours."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            if any(part.endswith(("slow.py", "loop.py")) for part in psutil.Process(pid).cmdline()):
                os.killpg(pid, signal.SIGKILL)
        except (psutil.Error, OSError):
            pass


def test_requires_waits_for_a_listener_and_a_tcp_ready_check_holds_starting(make_daemon, tmp_path, seen):
    (tmp_path / "slow.py").write_text(SLOW)
    (tmp_path / "loop.py").write_text(LOOP)
    base = free_port_block(2)
    needed, ready_port = base, base + 1
    address = f"tcp://127.0.0.1:{needed}"
    d = make_daemon({"processes": {
        "waiter": {"command": ["python", str(tmp_path / "loop.py")], "requires": [address],
                   "start_seconds": 0.2},
        "slow": {"command": ["python", str(tmp_path / "slow.py"), str(ready_port)],
                 "ready": {"tcp": ready_port}, "start_seconds": 0, "ready_timeout": 20},
    }}, nginx=False).start()
    body = wait_processes(d, lambda b: b["slow"]["instances"], what="slow spawned")
    first = body["slow"]["instances"][0]
    seen.add(first["pid"])
    assert first["state"] == "starting" and first["uptime"] < 1.0   # alive, but not listening yet
    body = wait_processes(d, lambda b: b["slow"]["ready"] == 1, what="slow running")
    inst = body["slow"]["instances"][0]
    assert inst["pid"] == first["pid"] and inst["state"] == "running" and inst["uptime"] >= 1.0
    ready = [e for e in d.events("process.ready") if e["process"] == "slow"]
    assert len(ready) == 1 and ready[0]["after"] >= 1.0

    body = processes(d)   # the other type still waits, and says for what
    assert body["waiter"]["instances"] == [] and body["waiter"]["waiting_for"] == [address]
    waits = [e for e in d.events("processes.waiting") if e["process"] == "waiter"]
    assert [w["awaits"] for w in waits] == [["web", address], [address]]   # the web fleet came first
    listener = socket.socket()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", needed))
        listener.listen(8)
        opened = time.monotonic()
        body = wait_processes(d, lambda b: b["waiter"]["ready"] == 1, timeout=10, what="waiter running")
        seen.update(i["pid"] for i in body["waiter"]["instances"])
        assert time.monotonic() - opened < 3.0 and body["waiter"]["waiting_for"] == []
        assert [e["process"] for e in d.events("processes.released")] == ["slow", "waiter"]
    finally:
        listener.close()
    d.stop()


def test_the_real_runners_checks_connect_run_and_time_out(tmp_path):
    """effects/runner.py's tcp_check and run_check on real sockets and processes."""
    import asyncio
    from ultrascaled.effects.runner import run_check, tcp_check

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    env = {"PATH": os.environ["PATH"], "WHO": "me"}
    nap = f"30.{os.getpid()}"   # this test's own sleeps, told from any other on the host

    async def main():
        return await asyncio.gather(
            tcp_check("127.0.0.1", port, 1.0), tcp_check("127.0.0.1", free, 1.0),
            run_check(["sh", "-c", 'test "$WHO" = me && test "$PWD" = "$0"', str(tmp_path)], env, str(tmp_path), 5.0),
            run_check(["sh", "-c", "echo not yet; exit 3"], env, str(tmp_path), 5.0),
            run_check(["sh", "-c", f"sleep {nap} & sleep {nap}"], env, str(tmp_path), 0.3),
            run_check(["no-such-program-here"], env, str(tmp_path), 1.0))
    try:
        started = time.monotonic()
        up, down, ok, failed, slow, missing = asyncio.run(main())
        took = time.monotonic() - started
    finally:
        listener.close()
    assert (up.ok, up.detail) == (True, "connected")
    assert (down.ok, down.detail) == (False, "connection refused")
    assert ok.ok, ok.detail
    assert (failed.ok, failed.detail) == (False, "sh exited 3: not yet")
    assert (slow.ok, slow.detail) == (False, "sh did not exit within 0.3s") and took < 3.0
    assert not missing.ok and missing.detail.startswith("cannot run 'no-such-program-here'")
    time.sleep(0.1)
    leftover = [p for p in psutil.process_iter(["cmdline", "status"]) if p.info["cmdline"] == ["sleep", nap]
                and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert leftover == []   # the timed-out command's process group was SIGKILLed
