"""The hand-written HTTP/1.1 client against real local servers."""
import asyncio
import time

import pytest

from loadtest import LoopbackError, parse_target
from loadtest.httpclient import Connection, timed_get


def run_requests(port, path, n=1, timeout=2.0):
    """n sequential requests on one Connection; returns (results, conn)."""
    async def go():
        conn = Connection("127.0.0.1", port)
        out = []
        try:
            for _ in range(n):
                start = time.perf_counter()
                status, kind, detail = await timed_get(conn, path, timeout)
                out.append((status, kind, time.perf_counter() - start))
        finally:
            conn.close()
        return out, conn
    return asyncio.run(go())


def port_of(server):
    return server.server_address[1]


def test_keepalive_reuses_one_connection(server):
    results, conn = run_requests(port_of(server), "/ok", n=20)
    assert [(s, k) for s, k, _ in results] == [(200, None)] * 20
    assert conn.connects == 1 and conn.reconnects == 0
    assert server.connections == 1 and server.requests == 20


def test_chunked_body_read_completely(server):
    chunks = server.RequestHandlerClass.chunks
    async def go():
        conn = Connection("127.0.0.1", port_of(server))
        try:
            first = await conn.get("/chunked")
            second = await conn.get("/ok")  # framing must leave the stream at the next response
            return first, second, conn.connects
        finally:
            conn.close()
    first, second, connects = asyncio.run(go())
    assert first == (200, sum(len(c) for c in chunks))
    assert second == (200, 2)
    assert connects == 1


def test_500_counts_as_http_5xx(server):
    results, _ = run_requests(port_of(server), "/500", n=3)
    assert [(s, k) for s, k, _ in results] == [(500, "http_5xx")] * 3


def test_404_and_redirect(server):
    assert run_requests(port_of(server), "/404")[0][0][:2] == (404, "http_4xx")
    assert run_requests(port_of(server), "/redirect")[0][0][:2] == (302, None)


def test_server_closing_without_response_is_closed_error(server):
    results, _ = run_requests(port_of(server), "/close", n=2)
    assert [(s, k) for s, k, _ in results] == [(None, "closed")] * 2


def test_connection_close_header_reconnects(server):
    results, conn = run_requests(port_of(server), "/oneshot", n=5)
    assert [(s, k) for s, k, _ in results] == [(200, None)] * 5
    assert conn.connects == 5 and conn.reconnects == 0


def test_idle_close_is_retried_once_not_an_error(server):
    results, conn = run_requests(port_of(server), "/idleclose", n=5)
    assert [(s, k) for s, k, _ in results] == [(200, None)] * 5
    assert conn.reconnects == 4  # every reuse found the connection closed
    assert server.requests == 5


def test_slow_response_times_out(server):
    server.slow_seconds = 120      # the answer is held until the client has given up
    results, _ = run_requests(port_of(server), "/slow", n=1, timeout=0.2)
    status, kind, elapsed = results[0]
    assert (status, kind) == (None, "timeout")
    assert server.slow_answers == 0  # gave up before any answer was sent, not after one came
    assert elapsed >= 0.19           # and at its timeout, not before it
    server.release_slow.set()


def test_connect_refused(free_port):
    results, _ = run_requests(free_port, "/", n=2)
    assert [(s, k) for s, k, _ in results] == [(None, "connect_refused")] * 2


def test_garbage_is_bad_response(garbage_server):
    port = int(garbage_server.rsplit(":", 1)[1])
    results, _ = run_requests(port, "/", n=1)
    assert results[0][:2] == (None, "bad_response")


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8080/x?y=1", ("127.0.0.1", 8080, "127.0.0.1:8080", "/x?y=1")),
    ("http://127.9.8.7/", ("127.9.8.7", 80, "127.9.8.7", "/")),
    ("http://localhost:81", ("127.0.0.1", 81, "localhost:81", "/")),
    ("http://[::1]:82/a", ("::1", 82, "[::1]:82", "/a")),
])
def test_loopback_targets_accepted(url, expected):
    assert parse_target(url) == expected


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/", "http://192.168.1.10:8080/", "http://example.com/", "http://0.0.0.0:80/",
    "http://8.8.8.8/", "http://[2001:db8::1]/", "http://128.0.0.1/", "http://localhost.example.com/",
])
def test_non_loopback_refused(url):
    with pytest.raises(LoopbackError, match="non-loopback"):
        parse_target(url)


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "ftp://127.0.0.1/", "127.0.0.1:80", "http:///x"])
def test_malformed_urls_refused(url):
    with pytest.raises(ValueError):
        parse_target(url)
