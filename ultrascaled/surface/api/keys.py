"""The API application's keys (fleet, settings, reload, alerts, audit, followers, public paths, actor)."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Awaitable

from aiohttp import web

from ultrascaled.core.control import FleetControl
from ultrascaled.surface.api.auth import Settings

# ---- the application -------------------------------------------------------------------------

FLEET = web.AppKey("fleet", FleetControl)
SETTINGS = web.AppKey("settings", Settings)
RELOAD = web.AppKey("reload", Callable[[], Awaitable[dict]])
RELOAD_PLAN = web.AppKey("reload_plan", object)   # the reload's dry run (text, source) -> dict, or None
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
