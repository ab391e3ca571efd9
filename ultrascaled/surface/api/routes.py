"""The API's handlers: fleet, health, scale, process types, restarts, releases, metrics, traffic, autoscale, logs, events, openapi."""
from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ultrascaled.core.autoscale import parse_duration
from ultrascaled.core.control import AutoscaleControl, FleetControl, ScaleRefused
from ultrascaled.effects import logfiles
from ultrascaled.observe import metrics as m
from ultrascaled.spec import SpecError
from ultrascaled.surface.api.errors import ApiError, Code
from ultrascaled.surface.api.keys import ALERTS, FLEET, FOLLOWERS, RELOAD, RELOAD_PLAN, SETTINGS

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


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    """json.loads' object_pairs_hook: `{"instances": 9, "instances": 2}` is refused, as the spec
    loader refuses a key given twice (json keeps the last one silently)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


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
        data = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise ApiError(Code.bad_request, f"field {str(exc.args[0])[:100]!r} is given twice in the request body")
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
        said = sup.scale(n, source="operator")
    except ScaleRefused as exc:
        raise refused(exc)
    answer: dict[str, Any] = {"desired": sup.count, "ports": list(sup.wanted)}
    if said:
        answer["autoscale"] = said
    return web.json_response(answer, status=202)


# ---- process types: web and the `processes:` workers (ultrascaled/supervise/workers_loop.py) -----

PROCESS_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def name_param(request: web.Request, what: str = "a process type name") -> str:
    name = request.match_info["name"]
    if not PROCESS_NAME_RE.fullmatch(name):
        raise ApiError(Code.bad_request, f"{what} is 1-64 letters, digits, - and _, got {name[:40]!r}")
    return name


@routes.get("/processes")
async def processes(request: web.Request) -> web.Response:
    return web.json_response(fleet_of(request).processes())


@routes.post("/processes/{name}/scale")
async def scale_process(request: web.Request) -> web.Response:
    name = name_param(request)
    data = await json_body(request, ("instances",))
    n = data.get("instances")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ApiError(Code.bad_request, f"`instances` must be an integer, got {str(n)[:40]!r}")
    try:
        answer = fleet_of(request).scale_process(name, n, source="operator")
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(answer, status=202)


@routes.post("/processes/{name}/restart")
async def restart_process(request: web.Request) -> web.Response:
    await json_body(request, ())
    name = name_param(request)
    try:
        answer = fleet_of(request).restart_process(name)
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(answer, status=202)


def job_param(request: web.Request) -> str:
    return name_param(request, "a job name")


@routes.get("/jobs")
async def jobs(request: web.Request) -> web.Response:
    return web.json_response(fleet_of(request).jobs_listing())


@routes.get("/jobs/{name}/runs")
async def job_runs(request: web.Request) -> web.Response:
    name = job_param(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    try:
        runs = fleet_of(request).job_runs(name)
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response({"job": name, "runs": runs[:limit]})


@routes.post("/jobs/{name}/run")
async def run_job(request: web.Request) -> web.Response:
    await json_body(request, ())
    name = job_param(request)
    try:
        answer = fleet_of(request).run_job(name)
    except ScaleRefused as exc:
        raise refused(exc)
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


@routes.post("/fleet/reload/plan")
async def reload_plan(request: web.Request) -> web.Response:
    """The reload's dry run: what `POST /fleet/reload` would do with the daemon's spec file as it
    is now, or with the spec text sent (`spec`; `source` its path, which relative paths resolve
    against). The same decision as the reload; nothing is done. Refused as the reload would be."""
    data = await json_body(request, ("spec", "source"))
    text, source = data.get("spec"), data.get("source")
    if text is not None and (not isinstance(text, str) or not text):
        raise ApiError(Code.bad_request, f"`spec` must be the spec's text (a non-empty string), got {str(text)[:40]!r}")
    if source is not None and (not isinstance(source, str) or not source or len(source) > 4096 or "\0" in source):
        raise ApiError(Code.bad_request, "`source` must be a non-empty string without NUL, at most 4096 "
                       f"characters, got {str(source)[:40]!r}")
    if source is not None and text is None:
        raise ApiError(Code.bad_request, "`source` names the file `spec` was read from; send `spec` with it")
    plan = request.app[RELOAD_PLAN]
    if plan is None:
        raise ApiError(Code.not_found, "this daemon has no reload dry run")
    try:
        result = await plan(text.encode() if text is not None else None, source)
    except SpecError as exc:
        raise ApiError(Code.spec_invalid, "the spec would be refused; the running spec stays in force",
                       errors=exc.errors)
    except ScaleRefused as exc:
        raise refused(exc)
    return web.json_response(result)


# ---- releases: deploy, rollback (ultrascaled/supervise/rollout_loop.py, docs/deploys.md) ------------------------

@routes.post("/fleet/deploy")
async def deploy(request: web.Request) -> web.Response:
    data = await json_body(request, ("directory", "release", "allow_data"))
    directory, release = data.get("directory"), data.get("release")
    allow_data = data.get("allow_data", False)
    if not isinstance(allow_data, bool):
        raise ApiError(Code.bad_request, f"`allow_data` must be true or false, got {str(allow_data)[:40]!r}")
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
        result = await fleet_of(request).deploy(directory=directory, release=release, allow_data=allow_data)
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
    sup, alerts = fleet_of(request), request.app[ALERTS]
    counters = {**sup.counters, **(alerts.counters() if alerts else {})}
    auto = sup.autoscaler
    extra = list(sup.traffic.families()) if sup.traffic is not None else []
    extra += auto.metric_families() if auto is not None else []
    extra += sup.process_metric_families()
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
    source = sup.traffic
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
    auto = fleet_of(request).autoscaler
    if auto is None:
        raise ApiError(Code.not_found, "this daemon runs no autoscaler")
    return auto


def with_processes(request: web.Request, status: dict) -> dict:
    """The web autoscaler's status and each worker type's on its queue (`processes`)."""
    queues = getattr(fleet_of(request), "queues", None)
    return {**status, "processes": queues.status() if queues is not None else {}}


@routes.get("/autoscale")
async def autoscale_status(request: web.Request) -> web.Response:
    return web.json_response(with_processes(request, autoscaler_of(request).status()))


@routes.post("/autoscale/pause")
async def autoscale_pause(request: web.Request) -> web.Response:
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
    data = await json_body(request, ("process",))
    if "process" in data:   # a worker type's autoscaling on its queue (supervise/queue_scale_loop.py)
        name = data["process"]
        if not isinstance(name, str) or not PROCESS_NAME_RE.fullmatch(name):
            raise ApiError(Code.bad_request, "`process` must be a process type name (1-64 letters, "
                           f"digits, - and _), got {str(name)[:40]!r}")
        if name == "web":
            return web.json_response(with_processes(request, autoscaler_of(request).resume()))
        queues = getattr(fleet_of(request), "queues", None)
        try:
            queues.resume(name)
        except (KeyError, AttributeError):
            raise ApiError(Code.not_found, f"{name} is not a worker type that autoscales on its "
                           "queue (processes.NAME.autoscale)")
        return web.json_response(with_processes(request, autoscaler_of(request).status()))
    return web.json_response(with_processes(request, autoscaler_of(request).resume()))


MAX_LINES = 10_000
MAX_OFFSET = 2 ** 63 - 1


@routes.get("/instances/{port}/log")
async def instance_log(request: web.Request) -> web.Response:
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
        lost = getattr(request.protocol, "lost", None)     # the client went: free the slot now
        gone = asyncio.ensure_future(lost.wait() if lost is not None else asyncio.Event().wait())
        getter = asyncio.ensure_future(queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter, closing, gone}, timeout=15,
                                             return_when=asyncio.FIRST_COMPLETED)
                if closing in done or gone in done:
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
            gone.cancel()
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
    return yaml.safe_load(Path(__file__).parent.parent.joinpath("openapi.yaml").read_text())
