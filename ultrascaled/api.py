"""The control and health API (aiohttp). Handlers change wanted state and wake the reconciler;
they never spawn, signal or stop anything themselves.

Errors are JSON `{"error": {"code": ..., "message": ...}}` with a code from ERROR_CODES.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from ultrascaled.spec import Spec, SpecError
from ultrascaled.supervisor import ScaleRefused, Supervisor

ERROR_CODES = {
    "bad_request": 400, "bad_json": 400, "out_of_range": 400, "spec_invalid": 400,
    "unauthorized": 401, "not_found": 404, "method_not_allowed": 405,
    "over_budget": 409, "shutting_down": 503, "internal": 500,
}


def error(code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}},
                             status=ERROR_CODES[code])


def read_token(spec: Spec) -> str | None:
    """The bearer token for mutating requests, or None when the API is loopback-only without one."""
    if not spec.api.token_file:
        return None
    token = Path(spec.api.token_file).read_text().strip()
    if not token:
        raise ValueError(f"api.token_file {spec.api.token_file} is empty")
    return token


def build_app(sup: Supervisor, token: str | None, reload_spec: Callable[[], dict],
              alerts=None) -> web.Application:
    """`alerts`: the AlertManager (or None); its firing list is GET /alerts."""
    routes = web.RouteTableDef()

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.method not in ("GET", "HEAD") and token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return error("unauthorized", "this request needs `Authorization: Bearer <token>` "
                             "(the token in api.token_file)")
        if request.method not in ("GET", "HEAD") and sup.shutting_down:
            return error("shutting_down", "the daemon is stopping")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error("not_found", f"no such endpoint: {request.method} {request.path}")
        except web.HTTPMethodNotAllowed as exc:
            return error("method_not_allowed", f"{request.method} is not allowed on {request.path}; "
                         f"use {', '.join(sorted(exc.allowed_methods))}")

    async def body(request: web.Request) -> dict:
        raw = await request.read()
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError("bad_json", f"request body is not valid JSON: {exc}")
        if not isinstance(data, dict):
            raise ApiError("bad_json", "request body must be a JSON object")
        return data

    @routes.get("/fleet")
    async def fleet(request):
        return web.json_response(sup.snapshot())

    @routes.get("/health")
    async def health(request):
        ok, reasons = sup.health()
        snap = sup.snapshot()
        return web.json_response({
            "status": "ok" if ok else "degraded", "reasons": reasons,
            "desired": snap["desired"], "ready": snap["ready"], "upstream": snap["upstream"],
            "nginx": sup.upstream.status(),
        }, status=200 if ok else 503)

    @routes.post("/fleet/scale")
    async def scale(request):
        data = await body(request)
        n = data.get("instances")
        if isinstance(n, bool) or not isinstance(n, int):
            raise ApiError("bad_request", f"`instances` must be an integer, got {n!r}")
        try:
            sup.scale(n)
        except ScaleRefused as exc:
            raise ApiError(exc.code, str(exc))
        return web.json_response({"desired": sup.count, "ports": list(sup.wanted)}, status=202)

    @routes.post("/instances/{port}/restart")
    async def restart_one(request):
        raw = request.match_info["port"]
        if not raw.isdigit():
            raise ApiError("bad_request", f"port must be a number, got {raw!r}")
        port = int(raw)
        if port not in sup.instances:
            raise ApiError("not_found", f"no instance on port {port}; instances: {sorted(sup.instances)}")
        return web.json_response({"restarting": sup.restart(port)}, status=202)

    @routes.post("/fleet/restart")
    async def restart_all(request):
        return web.json_response({"restarting": sup.restart(None)}, status=202)

    @routes.post("/fleet/reload")
    async def reload(request):
        try:
            result = reload_spec()
        except SpecError as exc:
            raise ApiError("spec_invalid", "the spec was refused; the running spec stays in force",
                           errors=exc.errors)
        except ScaleRefused as exc:
            raise ApiError(exc.code, str(exc))
        return web.json_response(result)

    def counters() -> dict:
        return {**sup.counters, **(alerts.counters() if alerts else {})}

    @routes.get("/metrics")
    async def metrics(request):
        from ultrascaled import metrics as m
        body = await m.render_async(sup.snapshot(), sup.upstream.status(), counters(), sup.metrics_dirs())
        return web.Response(body=body, headers={"Content-Type": m.CONTENT_TYPE})

    @routes.get("/alerts")
    async def firing(request):
        return web.json_response({"firing": alerts.firing() if alerts else [],
                                  "enabled": alerts is not None})

    @routes.get("/instances/{port}/log")
    async def instance_log(request):
        from ultrascaled import logfiles
        raw = request.match_info["port"]
        if not raw.isdigit():
            raise ApiError("bad_request", f"port must be a number, got {raw!r}")
        path = sup.log_path(int(raw))
        if int(raw) not in sup.instances and not path.exists():
            raise ApiError("not_found", f"no instance on port {raw}; instances: {sorted(sup.instances)}")
        q = request.query
        try:
            if "offset" in q:
                data, offset = await asyncio.to_thread(logfiles.read_from, path, int(q["offset"]))
            else:
                text = await asyncio.to_thread(logfiles.tail, path, int(q.get("lines", "50")))
                data, offset = text.encode(), (path.stat().st_size if path.exists() else 0)
        except ValueError:
            raise ApiError("bad_request", "`offset` and `lines` must be integers")
        return web.Response(body=data, headers={"Content-Type": "text/plain; charset=utf-8",
                                                "X-Offset": str(offset)})

    @routes.get("/events")
    async def events(request):
        q = request.query
        try:
            since = int(q.get("since", "0"))
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            raise ApiError("bad_request", "`since` and `limit` must be integers")
        if q.get("follow") not in (None, "", "0", "false"):
            return await stream_events(request, since)
        return web.json_response({"events": sup.events.since(since, limit), "last": sup.events.last_seq})

    async def stream_events(request: web.Request, since: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        queue = sup.events.follow()
        try:
            for e in sup.events.since(since):
                await resp.write(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n".encode())
            while True:
                try:
                    e = await asyncio.wait_for(queue.get(), timeout=15)
                    await resp.write(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n".encode())
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            sup.events.unfollow(queue)
        return resp

    @web.middleware
    async def api_errors(request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.code, str(exc), **exc.extra)

    app = web.Application(middlewares=[guard, api_errors])
    app.add_routes(routes)
    return app


class ApiError(Exception):
    def __init__(self, code: str, message: str, **extra: Any):
        self.code = code
        self.extra = extra
        super().__init__(message)
