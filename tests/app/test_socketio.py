"""Socket.IO over WebSocket on two real gunicorn instances sharing a real Redis."""
from __future__ import annotations

import queue
import time

import pytest

from app_helpers import wait_for

pytestmark = pytest.mark.integration


def ws_client(url: str):
    import socketio
    inbox: queue.Queue = queue.Queue()
    client = socketio.Client(reconnection=False)
    client.on("message", lambda data: inbox.put(data))
    client.connect(url, transports=["websocket"], wait_timeout=10)
    assert client.transport() == "websocket"
    return client, inbox


def drain_until(inbox: queue.Queue, msg: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if data.get("msg") == msg:
            return data
    return None


def test_broadcast_from_instance_a_reaches_clients_on_instance_b(gunicorn_factory, redis_server):
    env = {"REDIS_URL": redis_server.url}
    a = gunicorn_factory(dict(env, ULTRASCALE_INSTANCE="0"), workers=2)
    b = gunicorn_factory(dict(env, ULTRASCALE_INSTANCE="1"), workers=2)
    clients = []
    try:
        ca, inbox_a = ws_client(a.url)
        clients.append(ca)
        cb, inbox_b = ws_client(b.url)
        clients.append(cb)
        # B's worker subscribes to the Redis channel in the background after the connect;
        # send numbered broadcasts until one arrives.
        got = {}

        def delivered():
            n = len(got) + 1
            msg = f"hello-{n}"
            got[n] = msg
            assert ca.call("broadcast", {"msg": msg}, timeout=5) == {"ok": True}
            return drain_until(inbox_b, msg, 0.5)

        data = wait_for(delivered, timeout=10, interval=0, what="a broadcast from A to reach B")
        assert data["instance"] == 0                              # emitted by instance A
        assert drain_until(inbox_a, data["msg"], 2) is not None   # and the sender's own client gets it
        # and the other direction, now that both subscriptions are live
        assert cb.call("broadcast", {"msg": "from-b"}, timeout=5) == {"ok": True}
        assert drain_until(inbox_a, "from-b", 5)["instance"] == 1
    finally:
        for c in clients:
            c.disconnect()


def test_without_redis_socketio_works_within_one_instance(gunicorn_factory):
    g = gunicorn_factory({}, workers=1)
    c1, inbox1 = ws_client(g.url)
    c2, inbox2 = ws_client(g.url)
    try:
        assert c1.call("broadcast", {"msg": "local"}, timeout=5) == {"ok": True}
        assert drain_until(inbox2, "local", 5) is not None
        assert c1.call("broadcast", {"msg": 5}, timeout=5)["ok"] is False   # validated
        assert g.get("/health")[1]["socketio_queue"] == "local"
    finally:
        c1.disconnect()
        c2.disconnect()
