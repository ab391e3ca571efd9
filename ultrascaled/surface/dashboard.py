"""The live web dashboard, `GET /ui`, on the API's own listener and under its own rules.

What it serves:

* `GET /ui`: one HTML page; `GET /ui/static/NAME`: its script and style sheet (package data in
  `ultrascaled/surface/static/`, no CDN, no build step). These carry no fleet data, so they are the only
  paths a browser may load without a token when the API is off loopback (a navigation cannot
  send `Authorization`); the Host and Origin checks still apply to them. Every piece of data
  the page shows comes from the API's ordinary endpoints (`/fleet`, `/health`, `/alerts`,
  `/events?follow=1`) and the two below, with the operator's token when one is needed.
* `GET /ui/session`: what the caller may do: `admin` (may act: its token is in
  `api.token_file`, or no token file is set and it is on loopback) or `viewer` (reads only: a
  token of `api.viewer_token_file`, or none on loopback; the page shows no action buttons, and
  the API refuses its mutations anyway).
* `GET /ui/history?since=T`: the points of :class:`ultrascaled.observe.history.History` after wall time T.

The page acts through the API's existing mutations (`POST /fleet/scale`, `/fleet/restart`,
`/instances/{port}/restart`) with `fetch`: same origin (its Origin header passes the Origin
check), `Content-Type: application/json` on every body, and the bearer token the operator typed,
kept in the tab's sessionStorage. Nothing here loosens the guard: a cross-site page still cannot
send JSON without a preflight the API never grants, and cannot read the token. The HTML is
sent with a Content-Security-Policy that allows only the daemon's own script and style (no
inline script, no framing), so event text an app or an attacker controls is only ever text.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from ultrascaled.surface.api.auth import is_loopback
from ultrascaled.surface.api.errors import ApiError, Code
from ultrascaled.surface.api.keys import FLEET, SETTINGS

STATIC = Path(__file__).with_name("static")
ASSETS = {"dashboard.js": "application/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}

HISTORY = web.AppKey("history", object)          # a history.History, or None (dashboard.enabled off)
PAGE = web.AppKey("page", object)                # the loaded _Page

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# The API's mutations the page offers to an admin (deploy: of a release already in the releases
# folder; a folder is deployed with `ultrascalectl deploy DIR`).
ACTIONS = ("scale", "restart", "restart_all", "deploy", "rollback")


class _Page:
    """The assets, read once: small (tens of KiB), served from memory with strong ETags."""

    def __init__(self) -> None:
        self.assets: dict[str, tuple[bytes, str, str]] = {}
        for name, ctype in ASSETS.items():
            body = (STATIC / name).read_bytes()
            self.assets[name] = (body, ctype, hashlib.sha256(body).hexdigest()[:16])
        html = (STATIC / "dashboard.html").read_text()
        for name, (_, _, digest) in self.assets.items():
            html = html.replace("{{" + name + "}}", f"/ui/static/{name}?v={digest}")
        self.html = html.encode()
        self.html_etag = hashlib.sha256(self.html).hexdigest()[:16]

    @property
    def public_paths(self) -> frozenset[str]:
        return frozenset({"/ui", "/ui/"} | {f"/ui/static/{n}" for n in self.assets})


def _cached(request: web.Request, body: bytes, ctype: str, etag: str, cache: str) -> web.Response:
    tag = f'"{etag}"'
    headers = {"ETag": tag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    resp = web.Response(body=body, headers={**headers, "Content-Type": ctype})
    resp.enable_compression()
    return resp


async def page(request: web.Request) -> web.Response:
    p: _Page = request.app[PAGE]
    resp = _cached(request, p.html, "text/html; charset=utf-8", p.html_etag, "no-cache")
    resp.headers.update(SECURITY_HEADERS)
    return resp


async def asset(request: web.Request) -> web.Response:
    p: _Page = request.app[PAGE]
    name = request.match_info["name"]
    found = p.assets.get(name)
    if found is None:
        raise ApiError(Code.not_found, f"no such dashboard asset: {name[:100]!r}; "
                       f"there are: {', '.join(sorted(p.assets))}")
    body, ctype, digest = found
    # A URL naming this very content (the page links with ?v=DIGEST) never changes: cache it
    # for a year. Any other URL of the asset is revalidated.
    forever = request.query.get("v") == digest
    return _cached(request, body, ctype, digest,
                   "public, max-age=31536000, immutable" if forever else "no-cache")


async def session(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    creds = settings.credentials
    if not creds.admin:  # no token file: the API lets loopback act (it cannot start off loopback)
        admin, who = True, "loopback"
    else:
        header = request.headers.get("Authorization", "")
        admin = creds.who(header) is not None
        who = creds.who(header, viewer=True)  # a viewer token's name too
    history = request.app[HISTORY]
    fleet = request.app[FLEET]
    return web.json_response({
        "role": "admin" if admin else "viewer",
        "actor": who,
        "token_configured": bool(creds.admin),
        "reads_need_token": settings.reads_need_token,
        "loopback": is_loopback(settings.host),
        "actions": list(ACTIONS) if admin else [],
        "fleet": getattr(getattr(fleet, "spec", None), "name", None),
        "started": getattr(fleet, "started_at", None),   # tells the page a restarted daemon apart
        "history": None if history is None else {"seconds": history.seconds, "interval": history.interval},
    }, headers={"Cache-Control": "no-store"})


async def history_points(request: web.Request) -> web.Response:
    raw = request.query.get("since", "0")
    try:
        since = float(raw)
        if not (0 <= since < 1e12):
            raise ValueError
    except ValueError:
        raise ApiError(Code.bad_request, f"`since` must be a wall-clock time in seconds, 0..1e12, "
                       f"got {raw[:40]!r}") from None
    history = request.app[HISTORY]
    if history is None:
        return web.json_response({"enabled": False, "points": []}, headers={"Cache-Control": "no-store"})
    return web.json_response({"enabled": True, "seconds": history.seconds, "interval": history.interval,
                              "traffic_source": history.source_label, "points": history.since(since)},
                             headers={"Cache-Control": "no-store"})


def setup(app: web.Application, history=None) -> frozenset[str]:
    """Add the dashboard's routes to the API app; returns the paths the guard lets a browser
    load without a token (the page and its assets)."""
    p = _Page()
    app[PAGE] = p
    app[HISTORY] = history
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/static/{name}", asset)
    app.router.add_get("/ui/session", session)
    app.router.add_get("/ui/history", history_points)
    return p.public_paths
