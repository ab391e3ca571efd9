"""Socket.IO through the managed nginx: WebSocket transport via /socket.io/, and a broadcast
from the instance behind nginx reaches a client of the other instance (Redis message queue)."""
from __future__ import annotations

import queue
import time

import pytest

pytestmark = pytest.mark.integration


def client(url: str):
    import socketio
    inbox: queue.Queue = queue.Queue()
    c = socketio.Client(reconnection=False)
    c.on("message", inbox.put)
    c.connect(url, transports=["websocket"], wait_timeout=10)
    return c, inbox


def test_websocket_through_nginx_and_broadcast_across_instances(make_daemon, redis_url):
    d = make_daemon({"app": {"env": {"REDIS_URL": redis_url}}}).start()
    via_nginx, inbox_n = client(f"http://127.0.0.1:{d.nginx_port}")
    clients = [via_nginx]
    try:
        assert via_nginx.transport() == "websocket"
        # which instance did nginx pick? a broadcast says who sent it
        assert via_nginx.call("broadcast", {"msg": "who"}, timeout=5) == {"ok": True}
        first = inbox_n.get(timeout=5)
        behind = d.base_port + first["instance"]
        other = d.base_port + 1 - first["instance"]
        direct, inbox_o = client(f"http://127.0.0.1:{other}")
        clients.append(direct)
        deadline = time.monotonic() + 10
        got = None
        n = 0
        while got is None and time.monotonic() < deadline:  # the subscription starts in the background
            n += 1
            assert via_nginx.call("broadcast", {"msg": f"hello-{n}"}, timeout=5) == {"ok": True}
            try:
                while True:
                    data = inbox_o.get(timeout=0.3)
                    if data.get("msg") == f"hello-{n}":
                        got = data
                        break
            except queue.Empty:
                pass
        assert got is not None, "a broadcast through nginx never reached the other instance"
        assert d.base_port + got["instance"] == behind != other
    finally:
        for c in clients:
            c.disconnect()
