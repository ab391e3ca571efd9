"""A minimal HTTP/1.1 keep-alive client on raw asyncio streams.

One :class:`Connection` per virtual user. It handles Content-Length, chunked and
read-until-close bodies, ``Connection: close``, and reconnects when the server has
closed an idle keep-alive connection: if a request sent on a *reused* connection gets
EOF/reset before a single response byte arrives, it is retried once on a fresh
connection (what browsers and HTTP libraries do for idempotent requests); that retry is
counted in ``reconnects``, not as an error. A response that breaks off part-way is an
error ("closed" or "reset").
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from .stats import classify_status

MAX_HEAD = 64 * 1024


class LoopbackError(ValueError):
    """The target URL is not on a loopback address."""


class BadResponse(Exception):
    """The server sent something that is not valid HTTP/1.x framing."""


def parse_target(url: str) -> tuple[str, int, str, str]:
    """Check ``url`` and return (connect_host, port, host_header, path_and_query).

    Only ``http://`` URLs on 127.0.0.0/8, ``localhost`` or ``::1`` are accepted; anything
    else raises :class:`LoopbackError` (or ValueError for a malformed URL).
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None
    if host.lower() == "localhost":
        connect_host = "127.0.0.1"
    else:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            raise LoopbackError(
                f"refusing non-loopback target {host!r}: only 127.0.0.0/8, localhost and ::1 "
                "are allowed") from None
        if not addr.is_loopback:
            raise LoopbackError(
                f"refusing non-loopback target {host!r}: only 127.0.0.0/8, localhost and ::1 "
                "are allowed")
        connect_host = str(addr)
    host_header = parts.netloc.rsplit("@", 1)[-1]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return connect_host, port, host_header, path


class Connection:
    """A keep-alive connection to one server, opened lazily."""

    def __init__(self, host: str, port: int, host_header: str | None = None):
        self.host = host
        self.port = port
        self.host_header = host_header or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0
        self.reconnects = 0
        self._used = False  # a response has been read on the current connection
        self._requests: dict[str, bytes] = {}  # path -> encoded request

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        self.reader = self.writer = None

    async def _connect(self) -> None:
        self.close()
        try:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=MAX_HEAD)
        except ConnectionRefusedError:
            raise
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.connects += 1
        self._used = False

    async def get(self, path: str) -> tuple[int, int]:
        """Send ``GET path`` and read the whole response. Returns (status, body_bytes).

        Raises ConnectionRefusedError, ConnectError, ConnectionError (reset),
        asyncio.IncompleteReadError (closed early) or BadResponse. The caller applies
        the timeout and must :meth:`close` the connection after any exception.
        """
        request = self._requests.get(path)
        if request is None:
            request = self._requests[path] = (
                f"GET {path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                "User-Agent: ultrascale-loadtest\r\nAccept: */*\r\n\r\n").encode("latin-1")
        if self.writer is None:
            await self._connect()
        elif self._used:
            try:
                return await self._exchange(request)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                # Stale keep-alive connection closed by the server between requests: retry
                # once on a fresh connection, but only if no response byte was received.
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                self.reconnects += 1
                await self._connect()
        return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, int]:
        reader, writer = self.reader, self.writer
        writer.write(request)
        if writer.transport.get_write_buffer_size() > 65536:  # drain() is costly; rarely needed
            await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadResponse("response head larger than 64 KiB") from None
        self._used = True
        status, version, headers = _parse_head(head)
        te = headers.get("transfer-encoding", "")
        conn_hdr = headers.get("connection", "").lower()
        keep_alive = ("close" not in conn_hdr) if version == "HTTP/1.1" else ("keep-alive" in conn_hdr)
        body = 0
        if status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in te.lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise BadResponse(f"bad Content-Length {headers['content-length']!r}") from None
            if length < 0:
                raise BadResponse(f"bad Content-Length {length}")
            if length:
                await reader.readexactly(length)
            body = length
        else:
            data = await reader.read()  # body delimited by connection close
            body = len(data)
            keep_alive = False
        if not keep_alive:
            self.close()
        return status, body


class ConnectError(OSError):
    """Connecting failed for another reason than a refusal."""


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except Exception:  # pragma: no cover - latin-1 decodes anything
        raise BadResponse("undecodable head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        raise BadResponse(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadResponse(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        if key in headers and key != "content-length":
            headers[key] += ", " + value
        else:
            headers[key] = value
    return int(parts[1]), parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            break
        await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise BadResponse("chunk not terminated by CRLF")
        total += size
    while True:  # trailers, up to the empty line
        if await reader.readuntil(b"\r\n") == b"\r\n":
            return total


async def timed_get(conn: Connection, path: str, timeout: float) -> tuple[int | None, str | None, str]:
    """One request with a total timeout. Returns (status or None, error kind or None, detail).

    The error kind is one of :data:`stats.ERROR_KINDS`; ``None`` means success (2xx/3xx).
    """
    try:
        async with asyncio.timeout(timeout):
            status, _ = await conn.get(path)
    except TimeoutError:
        conn.close()
        return None, "timeout", f"no complete response within {timeout:g}s"
    except ConnectionRefusedError as exc:
        conn.close()
        return None, "connect_refused", str(exc)
    except ConnectError as exc:
        conn.close()
        return None, "connect_error", str(exc)
    except asyncio.IncompleteReadError as exc:
        conn.close()
        return None, "closed", f"connection closed after {len(exc.partial)} bytes of a part"
    except (ConnectionError, BrokenPipeError) as exc:
        conn.close()
        return None, "reset", f"{type(exc).__name__}: {exc}"
    except (BadResponse, asyncio.LimitOverrunError, ValueError) as exc:
        conn.close()
        return None, "bad_response", str(exc)
    except OSError as exc:
        conn.close()
        return None, "reset", f"{type(exc).__name__}: {exc}"
    kind = classify_status(status)
    return status, kind, "" if kind is None else f"HTTP {status}"
