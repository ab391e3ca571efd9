"""The control and health API (aiohttp). Handlers change wanted state and wake the reconciler;
they never spawn, signal or stop anything themselves, and they reach the fleet only through
`FleetControl` (ultrascaled/core/control.py).

Every error is JSON `{"error": {"code": ..., "message": ...}}` with a code from `Code`, also for
an unexpected exception (500 `internal`, and an `api.error` event). What protects the API (Host
and Origin checks, bearer tokens, limits, the audit log) is described in docs/security.md.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hmac
import ipaddress
import json
import os
import re
import ssl
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Awaitable

from aiohttp import web

from ultrascaled.core.control import AutoscaleControl, FleetControl, ScaleRefused
from ultrascaled.spec import Spec, SpecError


class Code(str, enum.Enum):
    """The closed set of error codes, each with its HTTP status."""

    def __new__(cls, code: str, status: int):
        obj = str.__new__(cls, code)
        obj._value_ = code
        obj.status = status
        return obj

    bad_request = ("bad_request", 400)
    bad_json = ("bad_json", 400)
    out_of_range = ("out_of_range", 400)
    spec_invalid = ("spec_invalid", 400)
    unauthorized = ("unauthorized", 401)
    forbidden = ("forbidden", 403)
    not_found = ("not_found", 404)
    method_not_allowed = ("method_not_allowed", 405)
    request_timeout = ("request_timeout", 408)
    over_budget = ("over_budget", 409)
    too_large = ("too_large", 413)
    unsupported_media_type = ("unsupported_media_type", 415)
    deploy_in_progress = ("deploy_in_progress", 409)   # releases: docs/deploys.md
    no_rollback_target = ("no_rollback_target", 409)
    release_invalid = ("release_invalid", 400)
    release_not_found = ("release_not_found", 404)
    already_current = ("already_current", 409)
    too_many_requests = ("too_many_requests", 503)
    shutting_down = ("shutting_down", 503)
    internal = ("internal", 500)


class ApiError(Exception):
    def __init__(self, code: Code | str, message: str, **extra: Any):
        self.code = Code(code)
        self.extra = extra
        super().__init__(message)


def error(code: Code | str, message: str, **extra: Any) -> web.Response:
    code = Code(code)
    return web.json_response({"error": {"code": code.value, "message": message, **extra}},
                             status=code.status)


# ---- settings -------------------------------------------------------------------------------

LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Token:
    name: str
    secret: str


@dataclasses.dataclass(frozen=True)
class Credentials:
    admin: tuple[Token, ...] = ()     # api.token_file: every endpoint
    metrics: tuple[Token, ...] = ()   # api.metrics_token_file: GET /metrics only
    viewer: tuple[Token, ...] = ()    # api.viewer_token_file: every read, no mutation

    def who(self, header: str, metrics: bool = False, viewer: bool = False) -> str | None:
        """The name of the token in an `Authorization: Bearer ...` header, or None. `metrics`,
        `viewer`: a token of those files counts too (for a /metrics scrape, for a read)."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        found = None
        extra = (self.metrics if metrics else ()) + (self.viewer if viewer else ())
        for t in self.admin + extra:  # compare with every token: no early exit
            if hmac.compare_digest(given.strip().encode(), t.secret.encode()) and found is None:
                found = t.name
        return found


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024          # client_max_size: bytes of a request body
    idle_timeout: float = 10.0         # idle or half-sent-headers connection closed after this
    body_timeout: float = 10.0         # a request body must arrive within this
    max_connections: int = 256         # open connections; the next gets 503 too_many_requests
    max_followers: int = 32            # concurrent `GET /events?follow=1`
    write_timeout: float = 30.0        # an event follower that takes no data for this long is dropped
    max_line_size: int = 8190          # request line and header sizes (aiohttp's parser)
    max_field_size: int = 8190


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9000
    tls: bool = False
    allowed_hosts: tuple[str, ...] = ()
    credentials: Credentials = Credentials()
    limits: Limits = Limits()

    @property
    def reads_need_token(self) -> bool:
        """Off loopback everything is protected; on loopback only mutations (when a token exists)."""
        return not is_loopback(self.host)

    def host_ok(self, header: str) -> bool:
        """Whether a Host header (or an Origin's host part) names this API (DNS rebinding)."""
        name, port = split_host(header)
        default = 443 if self.tls else 80
        if port is None:
            port = default
        if port != self.port:
            return False
        names = {self.host.lower(), "localhost", "127.0.0.1", "::1",
                 *(h.lower() for h in self.allowed_hosts)}
        return name.lower() in names

    @classmethod
    def from_spec(cls, spec: Spec, credentials: Credentials) -> "Settings":
        api = spec.api
        base = Limits()
        limits = Limits(**{f.name: getattr(api, f.name, getattr(base, f.name))
                           for f in dataclasses.fields(Limits)})
        return cls(host=api.host, port=api.port, tls=bool(getattr(api, "tls_cert", None)),
                   allowed_hosts=tuple(getattr(api, "allowed_hosts", ()) or ()),
                   credentials=credentials, limits=limits)


def split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port`, `name` → (name, port or None); a bad port gives port -1."""
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    else:
        name, sep, port = value.rpartition(":")
        if not sep:
            name, port = value, None
    if port is None:
        return name, None
    return name, int(port) if re.fullmatch(r"[0-9]{1,5}", port) else -1


# ---- tokens ---------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def read_token_file(path: str, key: str) -> tuple[Token, ...]:
    """The tokens in a file of `name:token` or `token` lines (`token` is named "token").

    Refused, with the reason: a missing file, a symlink, a file not owned by the daemon's user,
    or one that group or others may read or write (tokens must not leak to other local users)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"{key}: {path} does not exist; create it (mode 600) holding one "
                         f"`name:token` or `token` line")
    except OSError as exc:
        raise ValueError(f"{key}: cannot open {path}: {exc.strerror}"
                         + (" (a symlink is refused)" if os.path.islink(path) else ""))
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{key}: {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(f"{key}: {path} is owned by uid {st.st_uid}, not by the daemon's user "
                             f"(uid {os.geteuid()}); chown it to that user")
        if st.st_mode & 0o077:
            raise ValueError(f"{key}: {path} has mode {stat.S_IMODE(st.st_mode):o}: group and others "
                             f"may access it; chmod 600 {path}")
        text = f.read()
    tokens = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep or not NAME_RE.fullmatch(name):
            name, secret = "token", line
        tokens.append(Token(name, secret))
    if not tokens:
        raise ValueError(f"{key}: {path} holds no token")
    return tuple(tokens)


def read_token(spec: Spec) -> Credentials:
    """The API's tokens from the spec's token files; ValueError with the reason when refused.

    A non-loopback API without a token is refused here too (the spec check says so first)."""
    admin = read_token_file(spec.api.token_file, "api.token_file") if spec.api.token_file else ()
    mfile = getattr(spec.api, "metrics_token_file", None)
    metrics = read_token_file(mfile, "api.metrics_token_file") if mfile else ()
    vfile = getattr(spec.api, "viewer_token_file", None)
    viewer = read_token_file(vfile, "api.viewer_token_file") if vfile else ()
    if not admin and not is_loopback(spec.api.host):
        raise ValueError(f"api.token_file: the API binds {spec.api.host}, which is not loopback, "
                         "so it needs a token file")
    return Credentials(admin, metrics, viewer)


def tls_context(spec: Spec) -> ssl.SSLContext | None:
    """The server TLS context from api.tls_cert and api.tls_key, or None for plain HTTP."""
    cert, key = getattr(spec.api, "tls_cert", None), getattr(spec.api, "tls_key", None)
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("api.tls_cert and api.tls_key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"api.tls_cert/api.tls_key: cannot load {cert} and {key}: {exc}")
    return ctx


# ---- the audit log ---------------------------------------------------------------------------

class AuditLog:
    """Append-only JSON lines, one per mutating request, fsync'd before the answer goes out.

    Opened with O_NOFOLLOW (a symlink planted in the state folder is refused) and O_APPEND."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                           0o600)
        self._lock = threading.Lock()

    def _write(self, line: bytes) -> None:
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    async def record(self, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), **fields}, sort_keys=True) + "\n"
        await asyncio.to_thread(self._write, line.encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


# ---- the application -------------------------------------------------------------------------

FLEET = web.AppKey("fleet", FleetControl)
SETTINGS = web.AppKey("settings", Settings)
RELOAD = web.AppKey("reload", Callable[[], Awaitable[dict]])
ALERTS = web.AppKey("alerts", object)            # the AlertManager, or None
AUDIT = web.AppKey("audit", object)              # an AuditLog, or None


@dataclasses.dataclass
class Followers:
    limit: int
    active: int = 0
    closing: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


FOLLOWERS = web.AppKey("followers", Followers)
PUBLIC = web.AppKey("public", frozenset)          # GET paths that need no token (the dashboard's page)
ACTOR = web.RequestKey("actor", str)             # who made the request: a token's name, or loopback

routes = web.RouteTableDef()


def fleet_of(request: web.Request) -> FleetControl:
    return request.app[FLEET]


PORT_RE = re.compile(r"[0-9]{1,5}")


def port_param(request: web.Request) -> int:
    raw = request.match_info["port"]
    if not PORT_RE.fullmatch(raw) or not 1 <= int(raw) <= 65535:
        raise ApiError(Code.bad_request, f"port must be a number 1..65535, got {raw[:40]!r}")
    return int(raw)


def query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not lo <= int(raw) <= hi:
        raise ApiError(Code.bad_request, f"`{name}` must be a whole number {lo}..{hi}, got {raw[:40]!r}")
    return int(raw)


def query_flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "0")
    if raw not in ("", "0", "1", "false", "true"):
        raise ApiError(Code.bad_request, f"`{name}` must be 0, 1, false or true, got {raw[:40]!r}")
    return raw in ("", "1", "true")  # `?follow` alone means yes


async def json_body(request: web.Request, allowed: tuple[str, ...]) -> dict:
    """The request's JSON object (or {} for no body), with only the `allowed` keys."""
    limits = request.app[SETTINGS].limits
    try:
        async with asyncio.timeout(limits.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(Code.request_timeout,
                       f"the request body did not arrive within {limits.body_timeout:g}s")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(Code.bad_json, "request body is nested too deeply")
    except ValueError as exc:
        raise ApiError(Code.bad_json, f"request body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(data, dict):
        raise ApiError(Code.bad_json, "request body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(Code.bad_request, f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; "
                       f"allowed: {', '.join(allowed) or 'none'}")
    return data


@routes.get("/fleet")
async def fleet(request: web.Request) -> web.Response:
    return web.json_response(fleet_of(request).snapshot())


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    sup = fleet_of(request)
    ok, reasons = sup.health()
    snap = sup.snapshot()
    return web.json_response({
        "status": "ok" if ok else "degraded", "reasons": reasons,
        "desired": snap["desired"], "ready": snap["ready"], "upstream": snap["upstream"],
        "nginx": sup.upstream.status(),
    }, status=200 if ok else 503)


def refused(exc: ScaleRefused) -> ApiError:
    try:
        return ApiError(exc.code, str(exc))
    except ValueError:  # a code outside the closed set is a bug in the fleet, shown as such
        return ApiError(Code.internal, f"{exc.code}: {exc}")


@routes.post("/fleet/scale")
async def scale(request: web.Request) -> web.Response:
    data = await json_body(request, ("instances",))
    n = data.get("instances")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ApiError(Code.bad_request, f"`instances` must be an integer, got {str(n)[:40]!r}")
    sup = fleet_of(request)
    try:
        sup.scale(n)
    except ScaleRefused as exc:
        raise refused(exc)
    answer: dict[str, Any] = {"desired": sup.count, "ports": list(sup.wanted)}
    auto = getattr(sup, "autoscaler", None)
    said = auto.manual_scale(n) if auto is not None else None
    if said:
        answer["autoscale"] = said
    return web.json_response(answer, status=202)


@routes.post("/instances/{port}/restart")
async def restart_one(request: web.Request) -> web.Response:
    await json_body(request, ())
    port = port_param(request)
    sup = fleet_of(request)
    if port not in sup.instances:
        raise ApiError(Code.not_found, f"no instance on port {port}; instances: {sorted(sup.instances)}")
    return web.json_response({"restarting": sup.restart(port)}, status=202)


@routes.post("/fleet/restart")
async def restart_all(request: web.Request) -> web.Response:
    await json_body(request, ())
    return web.json_response({"restarting": fleet_of(request).restart(None)}, status=202)


@routes.post("/fleet/reload")
async def reload(request: web.Request) -> web.Response:
    await json_body(request, ())
    try:
        result = await request.app[RELOAD]()
    except SpecError as exc:
        raise ApiError(Code.spec_invalid, "the spec was refused; the running spec stays in force",
                       errors=exc.errors)
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(result)


# ---- releases: deploy, rollback (ultrascaled/supervise/rollout_loop.py, docs/deploys.md) ------------------------

@routes.post("/fleet/deploy")
async def deploy(request: web.Request) -> web.Response:
    data = await json_body(request, ("directory", "release"))
    directory, release = data.get("directory"), data.get("release")
    if (directory is None) == (release is None):
        raise ApiError(Code.bad_request, "give exactly one of `directory` (a folder to copy into a new "
                       "release) or `release` (a release already in the releases folder)")
    for name, val in (("directory", directory), ("release", release)):
        if val is not None and (not isinstance(val, str) or not val or len(val) > 4096 or "\0" in val):
            raise ApiError(Code.bad_request, f"`{name}` must be a non-empty string without NUL, at most "
                           f"4096 characters, got {str(val)[:40]!r}")
    if directory is not None and not directory.startswith("/"):
        raise ApiError(Code.bad_request, f"`directory` must be an absolute path, got {directory[:200]!r}")
    try:
        result = await fleet_of(request).deploy(directory=directory, release=release)
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(result, status=202)


@routes.post("/fleet/rollback")
async def rollback(request: web.Request) -> web.Response:
    await json_body(request, ())
    try:
        result = fleet_of(request).rollback()
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(result, status=202)


@routes.get("/fleet/releases")
async def releases(request: web.Request) -> web.Response:
    return web.json_response({"releases": fleet_of(request).releases()})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from ultrascaled.observe import metrics as m
    sup, alerts = fleet_of(request), request.app[ALERTS]
    counters = {**sup.counters, **(alerts.counters() if alerts else {})}
    auto = getattr(sup, "autoscaler", None)
    extra = list(getattr(sup, "traffic_families", list)())
    extra += auto.metric_families() if auto is not None else []
    body = await m.render_async(sup.snapshot(), sup.upstream.status(), counters, sup.metrics_dirs(),
                                extra=extra)
    return web.Response(body=body, headers={"Content-Type": m.CONTENT_TYPE})


@routes.get("/alerts")
async def firing(request: web.Request) -> web.Response:
    alerts = request.app[ALERTS]
    return web.json_response({"firing": alerts.firing() if alerts else [], "enabled": alerts is not None})


@routes.get("/traffic")
async def traffic(request: web.Request) -> web.Response:
    """Requests, 5xx and p95 over the last `seconds`, measured at nginx (accesslog.py): the
    fleet's and each instance's."""
    sup = fleet_of(request)
    seconds = query_int(request, "seconds", 60, 1, 3600)
    source = getattr(sup, "traffic", None)
    if source is None:
        return web.json_response({"enabled": False, "seconds": seconds, "fleet": None, "instances": []})

    def shown(w) -> dict:
        return {"requests": w.requests, "errors_5xx": w.errors_5xx, "rate_5xx": w.rate_5xx, "p95": w.p95}
    return web.json_response({
        "enabled": True, "seconds": seconds, "fleet": shown(source.window(None, seconds)),
        "instances": [{"port": p, **shown(source.window(p, seconds))} for p in sorted(sup.instances)]})


# ---- the autoscaler (ultrascaled/supervise/autoscale_loop.py): its status, and the operator's pause -------

MAX_PAUSE = 7 * 86400


def autoscaler_of(request: web.Request) -> AutoscaleControl:
    auto = getattr(fleet_of(request), "autoscaler", None)
    if auto is None:
        raise ApiError(Code.not_found, "this daemon runs no autoscaler")
    return auto


@routes.get("/autoscale")
async def autoscale_status(request: web.Request) -> web.Response:
    return web.json_response(autoscaler_of(request).status())


@routes.post("/autoscale/pause")
async def autoscale_pause(request: web.Request) -> web.Response:
    from ultrascaled.core.autoscale import parse_duration
    data = await json_body(request, ("for", "reason"))
    auto = autoscaler_of(request)
    given, seconds = data.get("for"), None
    if "for" in data:
        if isinstance(given, bool) or not isinstance(given, (str, int, float)):
            raise ApiError(Code.bad_request, f"`for` must be a duration like \"30m\" or seconds "
                           f"(leave it out to pause until resumed), got {str(given)[:40]!r}")
        if isinstance(given, str):
            try:
                seconds = parse_duration(given)
            except ValueError as exc:
                raise ApiError(Code.bad_request, f"`for`: {exc}")
        elif not 0 < given <= MAX_PAUSE:   # NaN fails this too
            raise ApiError(Code.bad_request, f"`for` must be more than 0 and at most {MAX_PAUSE} "
                           f"seconds (7 days), got {given!r:.40}")
        else:
            seconds = float(given)
    reason = data.get("reason", "operator")
    if not isinstance(reason, str) or len(reason) > 200 or not reason.isprintable():
        raise ApiError(Code.bad_request, "`reason` must be printable text of at most 200 characters")
    return web.json_response(auto.pause(seconds, reason or "operator"))


@routes.post("/autoscale/resume")
async def autoscale_resume(request: web.Request) -> web.Response:
    await json_body(request, ())
    return web.json_response(autoscaler_of(request).resume())


MAX_LINES = 10_000
MAX_OFFSET = 2 ** 63 - 1


@routes.get("/instances/{port}/log")
async def instance_log(request: web.Request) -> web.Response:
    from ultrascaled.effects import logfiles
    port = port_param(request)
    sup = fleet_of(request)
    path = sup.log_path(port)
    if port not in sup.instances and not path.exists():
        raise ApiError(Code.not_found, f"no instance on port {port}; instances: {sorted(sup.instances)}")
    offset = query_int(request, "offset", None, 0, MAX_OFFSET)
    if offset is not None:
        data, offset = await asyncio.to_thread(logfiles.read_from, path, offset)
    else:
        text = await asyncio.to_thread(logfiles.tail, path, query_int(request, "lines", 50, 0, MAX_LINES))
        data, offset = text.encode(), (path.stat().st_size if path.exists() else 0)
    return web.Response(body=data, headers={"Content-Type": "text/plain; charset=utf-8",
                                            "X-Offset": str(offset)})


MAX_SEQ = 2 ** 63 - 1
MAX_LIMIT = 100_000


@routes.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    since = query_int(request, "since", 0, 0, MAX_SEQ)
    limit = query_int(request, "limit", None, 1, MAX_LIMIT)
    if query_flag(request, "follow"):
        return await stream_events(request, since)
    log = fleet_of(request).events
    return web.json_response({"events": log.since(since, limit), "last": log.last_seq})


def gap_event(after: int, upto: int) -> dict:
    """What a follower is sent instead of events it can no longer get (seq after+1..upto-1)."""
    return {"seq": None, "time": round(time.time(), 3), "event": "events.gap", "level": "warning",
            "missed": upto - after - 1, "after": after, "next": upto}


async def stream_events(request: web.Request, since: int) -> web.StreamResponse:
    """Server-sent events from `since` on. Events are numbered without holes, so whenever the
    next one to send is not last+1 (it fell out of the ring buffer, or this follower's queue
    overflowed and the ring no longer has it) an `events.gap` event says how many were lost;
    a follower whose queue overflowed catches up from the ring. A follower that takes no data
    for `write_timeout` is dropped; the client reconnects with `since=`."""
    followers = request.app[FOLLOWERS]
    if followers.active >= followers.limit:
        raise ApiError(Code.too_many_requests, f"{followers.limit} event followers are connected already "
                       "(the limit); try again later or poll GET /events?since=SEQ")
    limits = request.app[SETTINGS].limits
    log = fleet_of(request).events
    followers.active += 1
    queue = log.follow()
    last = since
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(batch: list[dict], gaps: bool = True) -> None:
            nonlocal last
            out = []
            for e in batch:
                if e["seq"] <= last:
                    continue
                if e["seq"] > last + 1 and gaps:
                    out.append(f"data: {json.dumps(gap_event(last, e['seq']))}\n\n")
                out.append(f"id: {e['seq']}\ndata: {json.dumps(e)}\n\n")
                last = e["seq"]
            if out:
                async with asyncio.timeout(limits.write_timeout):
                    await resp.write("".join(out).encode())

        await send(log.since(since), gaps=since > 0)  # since=0: whatever the ring still has, no gap
        closing = asyncio.ensure_future(followers.closing.wait())
        getter = asyncio.ensure_future(queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter, closing}, timeout=15,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    break
                if not done:
                    async with asyncio.timeout(limits.write_timeout):
                        await resp.write(b": keep-alive\n\n")
                    continue
                if getattr(queue, "overflowed", False):  # events were not queued: catch up from the ring
                    queue.overflowed = False
                    while not queue.empty():
                        queue.get_nowait()
                    await send(log.since(last))
                else:
                    await send([getter.result()])
                getter = asyncio.ensure_future(queue.get())
        finally:
            closing.cancel()
            getter.cancel()
    except (ConnectionResetError, TimeoutError):
        pass  # gone, or not reading: it reconnects with since=
    finally:
        log.unfollow(queue)
        followers.active -= 1
    return resp


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_description())


def openapi_description() -> dict:
    import yaml
    return yaml.safe_load(Path(__file__).with_name("openapi.yaml").read_text())


# ---- middlewares: errors, audit, then the guard ---------------------------------------------

def actor_of(request: web.Request) -> str:
    return request.get(ACTOR, "unauthenticated")


@web.middleware
async def errors_and_audit(request: web.Request, handler) -> web.StreamResponse:
    """Every error as JSON (also aiohttp's own and unexpected ones); every mutation audited."""
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


def build_app(sup: FleetControl, settings: Settings, reload_spec: Callable[[], Awaitable[dict]],
              alerts=None, audit_log: AuditLog | None = None, *, dashboard: bool = True,
              history=None) -> web.Application:
    """`alerts`: the AlertManager (or None); its firing list is GET /alerts. `dashboard`:
    serve GET /ui (ultrascaled/surface/dashboard.py), charting `history` (a history.History or None)."""
    app = web.Application(middlewares=[errors_and_audit, guard], client_max_size=settings.limits.max_body)
    app[FLEET] = sup
    app[SETTINGS] = settings
    app[RELOAD] = reload_spec
    app[ALERTS] = alerts
    app[AUDIT] = audit_log
    app[FOLLOWERS] = Followers(settings.limits.max_followers)
    app.add_routes(routes)
    if dashboard:
        from ultrascaled.surface import dashboard as ui
        app[PUBLIC] = ui.setup(app, history)

    async def end_streams(app: web.Application) -> None:
        app[FOLLOWERS].closing.set()
    app.on_shutdown.append(end_streams)
    return app


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
    logging a traceback for each: a scanner sending garbage must not fill the journal."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer is under way: only closing is left
            raise ConnectionError("cannot send an error after the response started")
        why = str(getattr(exc, "message", None) or message or "").strip().splitlines()
        text = f"malformed HTTP request: {why[0][:120] if why else 'unreadable'}"
        resp = error(Code.bad_request, text) if status < 500 else error(Code.internal, "internal error")
        resp.force_close()
        return resp


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
        if len(manager.connections) >= cap:
            self.refused += 1
            return _Refuse(refusal(f"{cap} connections are open already (the limit); try again later"))
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
