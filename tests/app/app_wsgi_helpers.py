"""Call a WSGI app in-process with a wsgiref-built environ."""
from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults


def environ_for(path: str, method: str = "GET", query: str = "", **extra) -> dict:
    env = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": query,
           "wsgi.input": io.BytesIO(b"")}
    setup_testing_defaults(env)
    env.update(extra)
    return env


def call_raw(app, path: str, method: str = "GET", query: str = "", **extra):
    """-> (status line, headers dict, body bytes)"""
    if "?" in path:
        path, query = path.split("?", 1)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)

    result = app(environ_for(path, method, query, **extra), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return seen["status"], seen["headers"], body


def call(app, path: str, method: str = "GET", **kw):
    """-> (status code, JSON body)"""
    status, headers, body = call_raw(app, path, method, **kw)
    return int(status.split()[0]), (json.loads(body) if body else None)
