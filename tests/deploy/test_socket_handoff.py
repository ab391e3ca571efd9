"""The daemon holds each instance's listening socket and passes it to every master it starts
there (`--bind fd://N`): kill -9 of a master cuts no response (its orphaned workers finish what
they answer) and resets no queued connection (the next master accepts from the same queue), for
a client that talks to the instance's port directly and never retries. After the daemon itself is
killed and restarted, it takes the sockets back from the running masters (pidfd_getfd) and the
same holds."""
from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import pytest

from support.clients import NoRetryClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def slow_request(port: int, ms: int, out: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/io?ms={ms}")
        r = conn.getresponse()
        out["status"], out["body"] = r.status, r.read()
    except (OSError, http.client.HTTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def kill_master_under_load(d, port: int):
    master = next(i for i in d.fleet()["instances"] if i["port"] == port)
    client = NoRetryClient(port, timeout=20, limit=120)  # straight to the instance, not nginx
    client.start()
    slow: dict = {}
    t = threading.Thread(target=slow_request, args=(port, 2500, slow))
    t.start()
    time.sleep(0.5)   # the slow request is in flight on one of the master's workers
    os.kill(master["pid"], signal.SIGKILL)
    d.wait_until(lambda f: next(i for i in f["instances"] if i["port"] == port)["pid"] not in (None, master["pid"])
                 and next(i for i in f["instances"] if i["port"] == port)["state"] == "running",
                 timeout=30, what="a new master running")
    t.join(30)
    time.sleep(0.5)
    client.stop()
    assert slow.get("status") == 200, slow
    assert not client.failures, client.failures[:5]
    assert client.ok > 20


def test_kill_9_of_a_master_cuts_nothing_and_the_next_daemon_takes_the_sockets_back(make_daemon):
    d = make_daemon({"gunicorn": {"workers": 2}}).start()
    port = d.base_port
    kill_master_under_load(d, port)
    assert d.events("instance.orphans_finishing")

    # the daemon killed, restarted: it adopts the masters and takes their sockets back
    d.proc.kill()
    d.proc.wait()
    d.start()
    assert d.events("adopt.done") and not d.events("adopt.socket_not_taken")
    kill_master_under_load(d, port + 1)
