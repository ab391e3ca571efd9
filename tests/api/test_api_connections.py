"""Bounded connections (issue 12, item 3), on real sockets: idle and half-sent-header
connections are closed after the idle timeout and their descriptors come back; connections
beyond the cap are answered 503 too_many_requests and closed."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from ultrascaled.daemon import raise_nofile
from ultrascaled.surface.api.server import RESERVED_CONNECTIONS, RESERVED_IDLE
from support.waiting import wait_for


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel for the server on 127.0.0.1:`port` to accept them
    (a listening socket's rx_queue in /proc/net/tcp); 0 when it is not listed."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                return int(fields[4].rpartition(":")[2], 16)
    return 0


def open_idle(port: int, n_idle: int, n_half: int, batch: int = 50) -> list[socket.socket]:
    """Open the connections `batch` at a time, each batch once the server has accepted the
    last: past its listen backlog (100) the kernel drops a SYN, and the connect would wait a
    second for the retransmission."""
    socks = []
    for i in range(n_idle + n_half):
        if i and i % batch == 0:
            wait_for(lambda: accept_queue(port) == 0, what="server accepted the last batch")
        s = socket.create_connection(("127.0.0.1", port))
        if i >= n_idle:  # a request line and part of the headers, never finished
            s.sendall(f"GET /fleet HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
        socks.append(s)
    return socks


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_idle_and_half_sent_connections_are_closed_and_their_fds_return(make_live):
    raise_nofile()
    live = make_live(idle_timeout=0.5, max_connections=1000)  # closing sooner is never wrong here
    base = fds()
    socks = open_idle(live.settings.port, 150, 150)
    try:
        assert fds() >= base + 300
        assert all(closed_by_peer(s, 30) for s in socks), "the server closed every idle connection"
        wait_for(lambda: len(live.server.runner.server.connections) == 0, what="server side released")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: fds() <= base + 5, what="descriptors back")
    assert json.loads(_get(live.settings.port, "/health")[1])["status"] == "ok"


def _get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.integration   # real servers or processes, about a second or more: the full suite runs it
def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(make_live):
    live = make_live(idle_timeout=60, max_connections=20)
    socks = open_idle(live.settings.port, 20, 0)
    try:
        wait_for(lambda: len(live.server.runner.server.connections) == 20, what="20 connections")
        status, body = _get(live.settings.port, "/fleet")
        err = json.loads(body)["error"]
        assert status == 503 and err["code"] == "too_many_requests" and "20 connections" in err["message"]
        # a monitor's probe is still answered, beyond the cap, on a connection of the reserve
        assert _get(live.settings.port, "/health")[0] in (200, 503)
        assert json.loads(_get(live.settings.port, "/health")[1]).get("error", {}).get("code") != "too_many_requests"
        assert _get(live.settings.port, "/metrics")[0] == 200
        assert live.server.refused == 0
        # the reserve is bounded too: idle connections filling it leave the next one refused
        socks += open_idle(live.settings.port, RESERVED_CONNECTIONS, 0)
        wait_for(lambda: len(live.server.runner.server.connections) == 20 + RESERVED_CONNECTIONS,
                 what="the reserve full")
        status, body = _get(live.settings.port, "/health")
        assert status == 503 and json.loads(body)["error"]["code"] == "too_many_requests"
        assert live.server.refused == 1
        # and its idle connections are closed sooner than the others
        wait_for(lambda: len(live.server.runner.server.connections) == 20, timeout=RESERVED_IDLE + 10,
                 what="the reserve's idle connections closed")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: len(live.server.runner.server.connections) == 0, what="closed connections released")
    assert _get(live.settings.port, "/fleet")[0] == 200


def test_a_body_that_never_arrives_is_a_408(make_live, fleet):
    live = make_live(body_timeout=0.2)
    with socket.create_connection(("127.0.0.1", live.settings.port), timeout=30) as s:
        s.sendall(f"POST /fleet/scale HTTP/1.1\r\nHost: 127.0.0.1:{live.settings.port}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inst".encode())
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 408") and b"request_timeout" in head
    assert fleet.calls == []


@pytest.mark.integration
def test_the_daemon_closes_idle_connections_and_its_fds_come_back(make_daemon_api):
    d = make_daemon_api()
    pid = d.proc.pid
    # the daemon opens sockets and /proc files of its own now and then (probes, samples):
    # the baseline is the least seen over a second, and a few fds of slack either way
    base = min(fds(pid) for _ in range(20) if time.sleep(0.05) is None)
    raise_nofile()
    socks = open_idle(d.api_port, 200, 100)
    try:
        wait_for(lambda: fds(pid) >= base + 295, what="daemon accepted 300 connections")
        # a wait for the event, not a speed bound: one 60 s deadline for all of them
        deadline = time.monotonic() + 60
        assert all(closed_by_peer(s, max(0.01, deadline - time.monotonic())) for s in socks), \
            "the daemon closed every idle connection"
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: fds(pid) <= base + 5, what="daemon's descriptors back")
    assert d.api("GET", "/health")[0] == 200


@pytest.mark.parametrize("request_bytes", [
    b"GET /fleet HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello to the plain port
    b"POST /fleet/scale HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: abc\r\n\r\n",
])
def test_malformed_http_gets_a_json_400_without_a_traceback(make_live, fleet, request_bytes, caplog):
    live = make_live()
    with socket.create_connection(("127.0.0.1", live.settings.port), timeout=10) as s:
        s.sendall(request_bytes.replace(b"{port}", str(live.settings.port).encode()))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400" and b"application/json" in head
    err = json.loads(body)["error"]
    assert err["code"] == "bad_request" and err["message"].startswith("malformed HTTP request")
    assert "Traceback" not in caplog.text and fleet.calls == []
