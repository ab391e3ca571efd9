"""An Api (api_helpers) whose app is built with a dashboard history, or without the dashboard."""
from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from api_helpers import Api, no_change, settings
from ultrascaled.surface.app import build_app


def api_with_history(fleet, history, dashboard: bool = True, **kw) -> Api:
    api = Api.__new__(Api)
    api.loop = asyncio.new_event_loop()
    api.fleet, api.settings = fleet, settings(**kw)
    app = build_app(fleet, api.settings, no_change, None, None, dashboard=dashboard, history=history)
    api.client = TestClient(TestServer(app, host="127.0.0.1", port=api.settings.port), loop=api.loop)
    api.run(api.client.start_server())
    return api


def api_with_settings(fleet, settings_, history=None) -> Api:
    api = Api.__new__(Api)
    api.loop = asyncio.new_event_loop()
    api.fleet, api.settings = fleet, settings_
    app = build_app(fleet, settings_, no_change, None, None, history=history)
    api.client = TestClient(TestServer(app, host="127.0.0.1", port=settings_.port), loop=api.loop)
    api.run(api.client.start_server())
    return api
