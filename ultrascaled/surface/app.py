"""The web application on the API's listener: the API's routes under its middlewares, and the dashboard (`build_app`).

It sits beside `api/` and `dashboard.py`, which both build on the API's leaf modules (errors,
auth, keys), so neither imports the other."""
from __future__ import annotations

from collections.abc import Callable
from typing import Awaitable

from aiohttp import web

from ultrascaled.core.control import FleetControl
from ultrascaled.surface import dashboard as ui
from ultrascaled.surface.api.audit import AuditLog
from ultrascaled.surface.api.auth import Settings
from ultrascaled.surface.api.keys import (
    ALERTS,
    AUDIT,
    FLEET,
    FOLLOWERS,
    PUBLIC,
    RELOAD,
    RELOAD_PLAN,
    SETTINGS,
    Followers,
)
from ultrascaled.surface.api.middlewares import errors_and_audit, guard
from ultrascaled.surface.api.routes import routes


def build_app(sup: FleetControl, settings: Settings, reload_spec: Callable[[], Awaitable[dict]],
              alerts=None, audit_log: AuditLog | None = None, *, dashboard: bool = True,
              history=None, plan_reload: Callable[..., Awaitable[dict]] | None = None) -> web.Application:
    """`alerts`: the AlertManager (or None); its firing list is GET /alerts. `dashboard`:
    serve GET /ui (ultrascaled/surface/dashboard.py), charting `history` (a history.History or None).
    `plan_reload(text=None, source=None)`: the reload's dry run (POST /fleet/reload/plan), or None."""
    app = web.Application(middlewares=[errors_and_audit, guard], client_max_size=settings.limits.max_body)
    app[FLEET] = sup
    app[SETTINGS] = settings
    app[RELOAD] = reload_spec
    app[RELOAD_PLAN] = plan_reload
    app[ALERTS] = alerts
    app[AUDIT] = audit_log
    app[FOLLOWERS] = Followers(settings.limits.max_followers)
    app.add_routes(routes)
    if dashboard:
        app[PUBLIC] = ui.setup(app, history)

    async def end_streams(app: web.Application) -> None:
        app[FOLLOWERS].closing.set()
    app.on_shutdown.append(end_streams)
    return app
