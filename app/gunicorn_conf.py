"""gunicorn config file for the ultrascale fleet:

    gunicorn -c app/gunicorn_conf.py app.wsgi:application

Every value reads an environment variable (table in docs/app.md); command-line flags
(``--bind``, ...) still win over this file. The worker count, keep-alive and worker recycling
(``max_requests`` + jitter) are not set here at all: under ultrascaled they come from the fleet
spec alone (``gunicorn.workers``, ``gunicorn.keepalive``, ``gunicorn.max_requests``,
``gunicorn.max_requests_jitter``), passed on gunicorn's command line, so no second value here
can contradict them. Run by hand, pass them as flags (docs/app.md).
:func:`settings_from_env` is pure (tests call it with a dict); the module globals below are
what gunicorn reads. Hooks: ``post_fork`` resets per-process clients (Redis, MongoDB, cache,
metrics) that a preloaded app may have created in the master; ``child_exit`` marks the dead
worker in the Prometheus multiprocess directory.
"""
from __future__ import annotations

import os
import sys

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    pass


def settings_from_env(env) -> dict:
    """Pure: gunicorn settings from an env mapping. Raises ConfigError naming every bad variable."""
    errors: list[str] = []

    def integer(name, default, lo, hi):
        raw = env.get(name, "")
        if raw == "":
            return default
        try:
            v = int(raw)
        except ValueError:
            errors.append(f"{name}: must be an integer, got {raw!r}")
            return default
        if not lo <= v <= hi:
            errors.append(f"{name}: must be {lo}-{hi}, got {v}")
            return default
        return v

    def boolean(name, default):
        raw = env.get(name)
        if raw is None:
            return default
        raw = raw.strip().lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        errors.append(f"{name}: must be true/false, got {env[name]!r}")
        return default

    instance = env.get("ULTRASCALE_INSTANCE", "") or "0"
    port = integer("ULTRASCALE_PORT", None, 1, 65535) or integer("PORT", 8000, 1, 65535)
    host = env.get("GUNICORN_HOST", "127.0.0.1")
    bind = env.get("GUNICORN_BIND") or f"{host}:{port}"

    loglevel = (env.get("LOG_LEVEL") or "info").lower()
    if loglevel not in ("debug", "info", "warning", "error", "critical"):
        errors.append(f"LOG_LEVEL: must be debug/info/warning/error/critical, got {loglevel!r}")
        loglevel = "info"

    redis_error = _redis_url_error(env.get("REDIS_URL") or "")
    if redis_error:
        errors.append(redis_error)

    s = {
        "bind": [bind],
        "worker_class": env.get("GUNICORN_WORKER_CLASS", "gevent"),
        "worker_connections": integer("GUNICORN_WORKER_CONNECTIONS", 1000, 1, 1_000_000),
        "timeout": integer("GUNICORN_TIMEOUT", 30, 0, 86_400),
        "graceful_timeout": integer("GUNICORN_GRACEFUL_TIMEOUT", 30, 0, 86_400),
        "backlog": integer("GUNICORN_BACKLOG", 2048, 1, 65_535),
        "preload_app": boolean("GUNICORN_PRELOAD", False),
        "control_socket_disable": not boolean("GUNICORN_CONTROL_SOCKET", False),
        "loglevel": loglevel,
        "accesslog": env.get("GUNICORN_ACCESSLOG") or None,   # off by default: throughput
        "errorlog": env.get("GUNICORN_ERRORLOG") or "-",
        "proc_name": env.get("GUNICORN_NAME") or f"ultrascale-{instance}",
        "forwarded_allow_ips": env.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    }
    if os.path.isdir("/dev/shm"):  # heartbeat file on tmpfs, not a possibly slow disk
        s["worker_tmp_dir"] = env.get("GUNICORN_WORKER_TMP_DIR", "/dev/shm")
    if errors:
        raise ConfigError("; ".join(errors))
    return s


def _redis_url_error(url: str) -> str | None:
    """REDIS_URL checked before any worker starts (the app would only see it on its first
    request). redis_client.py is loaded from beside this file: the package is `app` in a
    checkout and `ultrascale_app` when installed, and this file is run by path, not imported."""
    if not url.strip():
        return None
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "redis_client.py")
    spec = importlib.util.spec_from_file_location("_ultrascale_redis_client", path)
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod            # dataclasses look their module up there
        spec.loader.exec_module(mod)
    try:
        mod.parse(url)
    except mod.RedisUrlError as exc:
        return str(exc)
    return None


def post_fork(server, worker):
    # Runs in the child before gevent monkey-patches it: only reset what a preloaded app
    # already imported; importing nothing new keeps the patching clean.
    # The package is `app` in a checkout and `ultrascale_app` when installed from the wheel.
    for name in ("app.wsgi", "app.mongo", "ultrascale_app.wsgi", "ultrascale_app.mongo"):
        mod = sys.modules.get(name)
        if mod is not None:
            mod.reset_after_fork()


def child_exit(server, worker):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid, path)


try:
    globals().update(settings_from_env(os.environ))
except ConfigError as _exc:
    sys.stderr.write(f"app/gunicorn_conf.py: {_exc}\n")
    raise
