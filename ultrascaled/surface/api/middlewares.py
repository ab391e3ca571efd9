"""The API's middlewares: every error as JSON and every mutation audited, then the guard (Host, Origin, token, body type)."""
from __future__ import annotations

import asyncio

from aiohttp import web

from ultrascaled.surface.api.auth import SAFE_METHODS
from ultrascaled.surface.api.errors import ApiError, Code, error
from ultrascaled.surface.api.server import RESERVED_PATHS
from ultrascaled.surface.api.keys import (
    ACTOR,
    AUDIT,
    FLEET,
    PUBLIC,
    SETTINGS,
)

# ---- middlewares: errors, audit, then the guard ---------------------------------------------

def actor_of(request: web.Request) -> str:
    return request.get(ACTOR, "unauthenticated")


@web.middleware
async def errors_and_audit(request: web.Request, handler) -> web.StreamResponse:
    """Every error as JSON (also aiohttp's own and unexpected ones); every mutation audited.
    On a connection past the API's cap (`server.RESERVED_CONNECTIONS`) only a read of the
    health or metrics path is answered, and the connection is closed after it."""
    reserved = getattr(request.protocol, "reserved", False)
    if reserved and (request.method not in ("GET", "HEAD") or request.path not in RESERVED_PATHS):
        cap = request.app[SETTINGS].limits.max_connections
        resp = error(Code.too_many_requests, f"{cap} connections are open already (the limit); only "
                     f"{' and '.join(RESERVED_PATHS)} are answered beyond it; try again later")
        resp.force_close()
        return resp
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = error(exc.code, str(exc), **exc.extra)
    except web.HTTPException as exc:
        resp = http_error(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug: answer JSON and say so in the events
        request.app[FLEET].events.emit("api.error", level="error", method=request.method,
                                       path=request.path[:200], error=f"{type(exc).__name__}: {exc}"[:500])
        resp = error(Code.internal, f"internal error ({type(exc).__name__}); see the daemon's events")
    if request.method not in SAFE_METHODS:
        await audit(request, resp.status)
    if reserved:
        resp.force_close()
    return resp


def http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        resp = error(Code.method_not_allowed, f"{request.method} is not allowed on {request.path[:200]}; "
                     f"use {allowed}")
        resp.headers["Allow"] = allowed  # RFC 9110 requires it (found by schemathesis)
        return resp
    if isinstance(exc, web.HTTPNotFound):
        return error(Code.not_found, f"no such endpoint: {request.method} {request.path[:200]}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[SETTINGS].limits.max_body
        return error(Code.too_large, f"the request body is over {limit} bytes")
    if 400 <= exc.status < 500:
        return error(Code.bad_request, exc.reason or "bad request")
    return error(Code.internal, exc.reason or "internal error")


async def audit(request: web.Request, status: int) -> None:
    fields = {"method": request.method, "path": request.path[:200], "status": status,
              "actor": actor_of(request)}
    request.app[FLEET].events.emit("api.request", **fields)
    log = request.app[AUDIT]
    if log is not None:
        remote = request.remote or ""
        await log.record(**fields, remote=remote)


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    """Host and Origin (cross-site requests, DNS rebinding), the token, the body's type."""
    settings = request.app[SETTINGS]
    host = request.headers.get("Host")
    if host is not None and not settings.host_ok(host):
        raise ApiError(Code.forbidden, f"Host {host[:100]!r} is not this API's address; add the name "
                       "to api.allowed_hosts if it is one")
    origin = request.headers.get("Origin")
    if origin is not None:
        scheme, _, rest = origin.partition("://")
        if scheme != ("https" if settings.tls else "http") or not settings.host_ok(rest):
            raise ApiError(Code.forbidden, f"cross-site request from Origin {origin[:100]!r} refused")
    mutating = request.method not in SAFE_METHODS
    creds = settings.credentials
    # The dashboard's page and assets hold no fleet data: a browser loads them without a token
    # (a navigation cannot send one); the page then reads with the operator's token.
    public = request.method in ("GET", "HEAD") and request.path in request.app.get(PUBLIC, ())
    if creds.admin and (mutating or settings.reads_need_token) and not public:
        name = creds.who(request.headers.get("Authorization", ""), metrics=request.path == "/metrics",
                         viewer=not mutating)
        if name is None:
            raise ApiError(Code.unauthorized, "this request needs `Authorization: Bearer <token>` "
                           "(a token in api.token_file" + (" or api.viewer_token_file)" if not mutating
                                                           and creds.viewer else ")"))
        request[ACTOR] = name
    else:
        request[ACTOR] = "loopback"
    if mutating:
        ctype = request.headers.get("Content-Type")
        if request.body_exists or ctype is not None:
            if ctype is None or ctype.split(";")[0].strip().lower() != "application/json":
                raise ApiError(Code.unsupported_media_type,
                               "a request body must be `Content-Type: application/json`, got "
                               f"{str(ctype)[:80]!r} (or send no body and no Content-Type)")
        if request.app[FLEET].shutting_down:
            raise ApiError(Code.shutting_down, "the daemon is stopping")
    return await handler(request)
