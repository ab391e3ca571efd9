"""The control and health API (aiohttp): hands on what the composition root builds it from.

Handlers change wanted state and wake the reconciler; they never spawn, signal or stop anything
themselves, and they reach the fleet only through `FleetControl` (ultrascaled/core/control.py).
Every error is JSON `{"error": {"code": ..., "message": ...}}` with a code from `Code`, also for
an unexpected exception (500 `internal`, and an `api.error` event). What protects the API (Host
and Origin checks, bearer tokens, limits, the audit log) is described in docs/security.md.
The one face daemon.py sees, so its names are handed on here: errors.py, auth.py, audit.py,
keys.py, routes.py, middlewares.py, server.py (ApiServer); the app (API and dashboard) is built in surface/app.py.
"""
from ultrascaled.surface.api.audit import AuditLog
from ultrascaled.surface.api.auth import Settings, read_token, tls_context
from ultrascaled.surface.api.server import ApiServer

__all__ = ["ApiServer", "AuditLog", "Settings", "read_token", "tls_context"]
