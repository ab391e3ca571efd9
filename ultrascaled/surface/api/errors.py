"""The API's closed set of error codes, `ApiError`, and `error()`: every error as JSON."""
from __future__ import annotations

import enum
from typing import Any

from aiohttp import web


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
    release_command_failed = ("release_command_failed", 409)
    job_running = ("job_running", 409)      # POST /jobs/{name}/run under concurrency: forbid
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
