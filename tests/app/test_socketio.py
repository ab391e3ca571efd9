"""Socket.IO over WebSocket on two real gunicorn instances sharing a real Redis."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def two_instances(gunicorn_factory, env: dict, workers: int = 1):
    """Instances A and B of the app sharing `env`'s Redis, a WebSocket client on each: yields
    (a, b, (client_a, inbox_a), (client_b, inbox_b)); the clients disconnect at the end."""
    a = gunicorn_factory(dict(env, ULTRASCALE_INSTANCE="0"), workers=workers)
    b = gunicorn_factory(dict(env, ULTRASCALE_INSTANCE="1"), workers=workers)
    clients = []
    try:
        ca = ws_client(a.url)
        clients.append(ca[0])
        cb = ws_client(b.url)
        clients.append(cb[0])
        yield a, b, ca, cb
    finally:
        for c in clients:
            c.disconnect()


def broadcasts_reaching(sender, inbox, prefix: str):
    """A condition for wait_for: send the next numbered broadcast from `sender`; the message if
    it reached `inbox` within 0.5 s (B subscribes in the background, and pub/sub is at most
    once, so a test keeps sending until one arrives)."""
    n = [0]

    def delivered():
        n[0] += 1
        msg = f"{prefix}-{n[0]}"
        assert sender.call("broadcast", {"msg": msg}, timeout=5) == {"ok": True}
        return drain_until(inbox, msg, 0.5)
    return delivered


def test_broadcast_from_instance_a_reaches_clients_on_instance_b(gunicorn_factory, redis_server):
    env = {"REDIS_URL": redis_server.url}
    with two_instances(gunicorn_factory, env, workers=2) as (_, _, (ca, inbox_a), (cb, inbox_b)):
        data = wait_for(broadcasts_reaching(ca, inbox_b, "hello"), timeout=10, interval=0,
                        what="a broadcast from A to reach B")
        assert data["instance"] == 0                              # emitted by instance A
        assert drain_until(inbox_a, data["msg"], 2) is not None   # and the sender's own client gets it
        # and the other direction, now that both subscriptions are live
        assert cb.call("broadcast", {"msg": "from-b"}, timeout=5) == {"ok": True}
        assert drain_until(inbox_a, "from-b", 5)["instance"] == 1


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
