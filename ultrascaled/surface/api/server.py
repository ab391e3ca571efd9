"""Serving the API: a cap on open connections, timeouts for idle ones, JSON for unparsable HTTP (`ApiServer`)."""
from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from aiohttp import web

from ultrascaled.surface.api.auth import Settings
from ultrascaled.surface.api.errors import Code, error

# ---- serving: a cap on open connections, timeouts for idle ones -----------------------------

def refusal(message: str) -> bytes:
    body = json.dumps({"error": {"code": Code.too_many_requests.value, "message": message}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Refuse(asyncio.Protocol):
    """Answer 503 at once, then half-close and discard what the client sends for up to a
    second (closing with its request unread would reset the connection, losing the answer)."""

    def __init__(self, answer: bytes):
        self.answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        t.write(self.answer)
        if t.can_write_eof():
            t.write_eof()
        asyncio.get_running_loop().call_later(1.0, t.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close


class _Protocol(web.RequestHandler):
    """aiohttp's request handler, answering HTTP it cannot parse (a header line over the limit,
    a bad method, a bad Content-Length) with our JSON error instead of plain text, and without
    logging a traceback for each: a scanner sending garbage must not fill the journal.

    `lost` is set when the client goes (an event-stream follower then frees its slot at once,
    not at its next write); `reserved`: a connection beyond `max_connections`, which may only
    ask for the health and metrics paths (`RESERVED_PATHS`), once."""

    reserved = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lost = asyncio.Event()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set()
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer is under way: only closing is left
            raise ConnectionError("cannot send an error after the response started")
        why = str(getattr(exc, "message", None) or message or "").strip().splitlines()
        text = f"malformed HTTP request: {why[0][:120] if why else 'unreadable'}"
        resp = error(Code.bad_request, text) if status < 500 else error(Code.internal, "internal error")
        resp.force_close()
        return resp


# Connections beyond max_connections kept for GET /health and /metrics alone, one request each,
# idle at most RESERVED_IDLE seconds: a table full of idle connections leaves the probe an answer.
RESERVED_CONNECTIONS = 16
RESERVED_IDLE = 2.0
RESERVED_PATHS = ("/health", "/metrics")


class ApiServer:
    """aiohttp's request handler behind our own listening socket, so that connections beyond
    `max_connections` are answered 503 and closed before they cost anything more.

    Idle connections, and ones that never finish their headers, are closed after
    `idle_timeout` (aiohttp's keepalive timer runs from the moment a connection opens and is
    not reset by partial data); a TLS handshake has as long."""

    def __init__(self, app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None = None):
        lim = settings.limits
        self.settings = settings
        self.ssl_context = ssl_context
        self._handler_args = dict(access_log=None, keepalive_timeout=lim.idle_timeout,
                                  max_line_size=lim.max_line_size, max_field_size=lim.max_field_size)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=3.0, **self._handler_args)
        self.server: asyncio.base_events.Server | None = None
        self.refused = 0

    def _protocol(self) -> asyncio.Protocol:
        manager = self.runner.server
        assert manager is not None
        cap = self.settings.limits.max_connections
        open_now = len(manager.connections)
        if open_now >= cap + RESERVED_CONNECTIONS:
            self.refused += 1
            return _Refuse(refusal(f"{cap} connections are open already (the limit); try again later"))
        if open_now >= cap:      # a monitor's probe must not read a full table as an unhealthy daemon
            proto = _Protocol(manager, loop=asyncio.get_running_loop(),
                              **{**self._handler_args, "keepalive_timeout": min(RESERVED_IDLE, self._handler_args["keepalive_timeout"])})
            proto.reserved = True
            return proto
        return _Protocol(manager, loop=asyncio.get_running_loop(), **self._handler_args)

    async def start(self) -> None:
        """Bind first (a taken port fails before anything starts), then run the app's startup,
        which starts the fleet and its loops (their `cleanup_ctx`), then accept connections.
        A failed startup has been cleaned up when this raises."""
        loop = asyncio.get_running_loop()
        kw: dict[str, Any] = {}
        if self.ssl_context is not None:
            kw = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.settings.limits.idle_timeout}
        self.server = await loop.create_server(self._protocol, self.settings.host, self.settings.port,
                                               reuse_address=True, start_serving=False, **kw)
        try:
            await self.runner.setup()
        except BaseException:
            self.server.close()
            await self.runner.cleanup()
            raise
        await self.server.start_serving()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, end the event streams and open requests, then the app's cleanup
        (the fleet drains and stops after the API has closed)."""
        if self.server is not None:
            self.server.close()
        await self.runner.cleanup()
        if self.server is not None:
            await self.server.wait_closed()
