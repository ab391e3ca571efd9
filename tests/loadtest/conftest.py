"""Tiny real servers on free loopback ports for the load tester's tests."""
from __future__ import annotations

import json
import multiprocessing
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CHUNKS = [b"hello ", b"chunked ", b"world" * 100]
FLEET_RSS = 100 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    chunks = CHUNKS
    disable_nagle_algorithm = True  # several small writes per response: avoid 40 ms ACK stalls

    def log_message(self, *args):  # keep test output clean
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _send(self, status, body=b"ok", headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with self.server.lock:
            self.server.requests += 1
        path = self.path.split("?")[0]
        if path == "/ok":
            self._send(200)
        elif path == "/redirect":
            self._send(302, b"", [("Location", "/ok")])
        elif path == "/404":
            self._send(404, b"nope")
        elif path == "/500":
            self._send(500, b"boom")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for c in CHUNKS:
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(c), c))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif path == "/close":  # read the request, close without answering
            self.close_connection = True
        elif path == "/oneshot":  # honest Connection: close
            self._send(200, b"bye", [("Connection", "close")])
            self.close_connection = True
        elif path == "/idleclose":  # keep-alive response, then the server drops the connection
            self._send(200, b"ok")
            self.close_connection = True
        elif path == "/slow":
            self.server.release_slow.wait(float(self.server.slow_seconds))
            with self.server.lock:
                self.server.slow_answers += 1
            self._send(200)
        elif path == "/fleet":
            self._send(200, json.dumps({"memory": {"total_rss_bytes": FLEET_RSS}}).encode(),
                       [("Content-Type", "application/json")])
        elif path == "/fleet-empty/fleet":
            self._send(200, b"{}", [("Content-Type", "application/json")])
        else:
            self._send(404, b"unknown")


class TestServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.slow_seconds = 0.5
        self.release_slow = threading.Event()   # set: /slow answers at once
        self.slow_answers = 0                   # /slow answers sent (or being sent)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client gave up first (a timeout test): nothing to report
        super().handle_error(request, client_address)


@pytest.fixture
def server():
    srv = TestServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release_slow.set()
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture
def garbage_server():
    """Raw TCP server that answers every connection with a non-HTTP line."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.02)  # how soon the accept loop sees `stop` at teardown
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = sock.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                try:
                    c.settimeout(1)
                    c.recv(4096)
                    c.sendall(b"HELLO THERE\r\nnot http\r\n\r\n")
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        sock.close()


@pytest.fixture
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there afterwards: connections are refused
    return port


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every worker process a test starts must be gone when it ends."""
    yield
    deadline = time.monotonic() + 10
    children = multiprocessing.active_children()
    while children and time.monotonic() < deadline:
        time.sleep(0.05)
        children = multiprocessing.active_children()
    for child in children:
        child.kill()
    assert not children, f"leftover worker processes: {children}"
