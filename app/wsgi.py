"""The reference WSGI app the fleet serves: ``app.wsgi:application``.

Plain WSGI, no framework. Endpoints (see docs/app.md):

=====================  ==========================================================================
``GET /``              tiny JSON hello (benchmarks)
``GET /health``        instance, port, pid, Redis / MongoDB state, cache stats; 200 while serving
``GET /cached/<key>``  a deterministic ~2 ms computation through the two-tier cache
``GET /io?ms=N``       gevent.sleep(N ms), 0 <= N <= 10000
``GET /items/<id>``    MongoDB read through the cache; 503 without MONGODB_URI
``GET /debug/alloc``   ``?mb=N`` hold N MB more (only with ULTRASCALE_TEST_ENDPOINTS=1)
``GET /debug/free``    release what /debug/alloc holds (same condition)
``/socket.io/``        Socket.IO (gevent, WebSocket via simple-websocket, Redis queue on REDIS_URL)
=====================  ==========================================================================

Importing this module does no I/O: the app (cache, metrics, Socket.IO server) is built on the
first request in each process, and again in a forked child (``reset_after_fork``).
:func:`create_app` builds one explicitly, with injectable parts, for tests or embedding.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
from urllib.parse import parse_qs

import structlog

log = structlog.get_logger("app.wsgi")

# A slow boot, for measuring what the daemon does with one (docs/spares.md): seconds slept at
# import, as a Django project or a service importing pandas spends them. Default 0.
_BOOT_DELAY = os.environ.get("ULTRASCALE_BOOT_DELAY", "")
if _BOOT_DELAY:
    import time as _time
    try:
        _time.sleep(max(0.0, float(_BOOT_DELAY)))
    except ValueError:
        pass

IO_MAX_MS = 10_000
ALLOC_MAX_MB = 8_192
KEY_MAX_LEN = 200
CACHED_ROUNDS = 10_000          # pbkdf2 rounds: ~2 ms of CPU on a miss
_PAGE = 4096

_JSON = [("Content-Type", "application/json")]


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


def _env_int(env, name, default):
    raw = env.get(name, "")
    try:
        return int(raw) if raw != "" else default
    except ValueError:
        return default


def compute(key: str) -> str:
    """The deterministic, CPU-bound computation behind /cached/<key>."""
    return hashlib.pbkdf2_hmac("sha256", key.encode("utf-8", "surrogatepass"), b"ultrascale",
                               CACHED_ROUNDS).hex()


def route_of(environ) -> str:
    """Route template for metrics labels (bounded cardinality)."""
    path = environ.get("PATH_INFO") or "/"
    t = _EXACT_TEMPLATES.get(path)
    if t is not None:
        return t
    if path.startswith("/cached/"):
        return "/cached/{key}"
    if path.startswith("/items/"):
        return "/items/{id}"
    if path.startswith("/socket.io"):
        return "/socket.io/"
    return "unmatched"


_EXACT_TEMPLATES = {p: p for p in ("/", "/health", "/io", "/debug/alloc", "/debug/free")}


class MongoUnavailable(Exception):
    pass


class Allocations:
    """Memory a worker holds on purpose (memory-watchdog tests)."""

    def __init__(self):
        self.buffers: list[bytearray] = []

    @property
    def held_bytes(self) -> int:
        return sum(len(b) for b in self.buffers)

    def alloc(self, mb: int) -> None:
        size = mb * 1024 * 1024
        buf = bytearray(size)                           # calloc'd: pages not resident yet
        buf[::_PAGE] = b"\x01" * len(range(0, size, _PAGE))   # touch every page so RSS grows
        self.buffers.append(buf)

    def free(self) -> None:
        self.buffers.clear()
        gc.collect()


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ReferenceApp:
    """The endpoints. Collaborators are injected; :func:`create_app` wires the defaults."""

    def __init__(self, cache, mongo_handle, env=None, socketio_factory=None):
        env = os.environ if env is None else env
        self.env = env
        self.cache = cache
        self.mongo = mongo_handle
        self.instance = _env_int(env, "ULTRASCALE_INSTANCE", 0)
        port = env.get("ULTRASCALE_PORT") or env.get("PORT") or ""
        self.port = int(port) if port.isdigit() else None
        self.test_endpoints = env.get("ULTRASCALE_TEST_ENDPOINTS", "") == "1"
        self.allocations = Allocations()
        self._socketio_factory = socketio_factory
        self._socketio = None
        self._socketio_lock = threading.Lock()
        hello = _dumps({"message": "hello", "instance": self.instance})
        self._hello = (hello, _JSON + [("Content-Length", str(len(hello)))])
        self._exact = {"/": self.hello, "/health": self.health, "/io": self.io}
        if self.test_endpoints:
            self._exact["/debug/alloc"] = self.debug_alloc
            self._exact["/debug/free"] = self.debug_free
        self._prefixes = (("/cached/", self.cached), ("/items/", self.items))

    # -- dispatch --------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/" and method == "GET":  # the benchmark path: nothing else on it
            body, headers = self._hello
            start_response("200 OK", headers)
            return [body]
        if path.startswith("/socket.io"):
            return self.socketio_app()(environ, start_response)
        handler = self._exact.get(path)
        arg = None
        if handler is None:
            for prefix, h in self._prefixes:
                if path.startswith(prefix):
                    handler, arg = h, path[len(prefix):]
                    break
        if handler is None:
            return self._respond(start_response, 404, {"error": "not_found", "path": path}, method)
        allowed = ("GET", "HEAD", "POST") if path.startswith("/debug/") else ("GET", "HEAD")
        if method not in allowed:
            return self._respond(start_response, 405,
                                 {"error": "method_not_allowed", "method": method, "allowed": list(allowed)},
                                 method, [("Allow", ", ".join(allowed))])
        try:
            status, payload = handler(environ) if arg is None else handler(environ, arg)
        except Exception as exc:
            log.exception("request.failed", path=path)
            status, payload = 500, {"error": "internal_error", "message": type(exc).__name__}
        return self._respond(start_response, status, payload, method)

    _REASONS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found",
                405: "405 Method Not Allowed", 500: "500 Internal Server Error",
                503: "503 Service Unavailable"}

    def _respond(self, start_response, status, payload, method, extra_headers=()):
        body = _dumps(payload)
        headers = _JSON + [("Content-Length", str(len(body)))] + list(extra_headers)
        if status >= 500:
            headers.append(("Cache-Control", "no-store"))
        start_response(self._REASONS.get(status, f"{status} Status"), headers)
        return [b""] if method == "HEAD" else [body]

    # -- endpoints -------------------------------------------------------------------------
    def hello(self, environ):
        return 200, {"message": "hello", "instance": self.instance}

    def health(self, environ):
        stats = self.cache.stats.as_dict()
        port = self.port
        if port is None:
            sp = environ.get("SERVER_PORT", "")
            port = int(sp) if sp.isdigit() else None
        return 200, {
            "status": "ok",
            "instance": self.instance,
            "port": port,
            "pid": os.getpid(),
            "redis": self.cache.redis_state,
            "mongodb": self.mongo.state(),
            "socketio_queue": "redis" if self.env.get("REDIS_URL") else "local",
            "cache": {
                "memory_items": len(self.cache.memory),
                "hit_rate": {"memory": stats["hit_rate_memory"], "redis": stats["hit_rate_redis"]},
                "hits": {"memory": stats["hits_memory"], "redis": stats["hits_redis"]},
                "misses": stats["misses"],
                "coalesced": stats["coalesced"],
                "evictions": stats["evictions"],
                "errors": {"redis": stats["errors_redis"], "loader": stats["load_errors"]},
                "redis_skipped": stats["skipped_redis"],
            },
        }

    def cached(self, environ, key):
        if not key or len(key) > KEY_MAX_LEN or "/" in key:
            return 400, {"error": "bad_key", "message": f"key must be 1-{KEY_MAX_LEN} characters without '/'"}
        value, source = self.cache.fetch("cached:" + key, lambda: compute(key))
        return 200, {"key": key, "value": value, "source": source}

    def io(self, environ):
        qs = parse_qs(environ.get("QUERY_STRING", ""))
        raw = qs.get("ms", [None])[0]
        try:
            ms = int(raw)
        except (TypeError, ValueError):
            return 400, {"error": "bad_request", "message": f"ms must be an integer 0-{IO_MAX_MS}, got {raw!r}"}
        if not 0 <= ms <= IO_MAX_MS:
            return 400, {"error": "bad_request", "message": f"ms must be an integer 0-{IO_MAX_MS}, got {ms}"}
        import gevent
        gevent.sleep(ms / 1000.0)
        return 200, {"slept_ms": ms}

    def items(self, environ, item_id):
        if not self.mongo.configured:
            return 503, {"error": "mongodb_not_configured",
                         "message": "MONGODB_URI is not set; /items/<id> needs MongoDB"}
        if not item_id or len(item_id) > 128 or "/" in item_id:
            return 400, {"error": "bad_id", "message": "id must be 1-128 characters without '/'"}

        def load():
            if self.mongo.known_down():       # don't queue behind serverSelectionTimeoutMS
                raise MongoUnavailable("every MongoDB server failed its last check")
            doc = self.mongo.database()["items"].find_one({"_id": item_id})
            return json.loads(_dumps(doc)) if doc is not None else None

        try:
            doc, source = self.cache.fetch("item:" + item_id, load)
        except Exception as exc:  # pymongo errors: server selection timeout, auto-reconnect...
            log.warning("items.mongodb_error", error=str(exc), error_type=type(exc).__name__)
            return 503, {"error": "mongodb_unavailable", "message": type(exc).__name__}
        if doc is None:
            return 404, {"error": "not_found", "id": item_id}
        return 200, {"item": doc, "source": source}

    def debug_alloc(self, environ):
        qs = parse_qs(environ.get("QUERY_STRING", ""))
        raw = qs.get("mb", [None])[0]
        try:
            mb = int(raw)
        except (TypeError, ValueError):
            return 400, {"error": "bad_request", "message": f"mb must be an integer 1-{ALLOC_MAX_MB}, got {raw!r}"}
        if not 1 <= mb <= ALLOC_MAX_MB:
            return 400, {"error": "bad_request", "message": f"mb must be an integer 1-{ALLOC_MAX_MB}, got {mb}"}
        self.allocations.alloc(mb)
        return 200, {"pid": os.getpid(), "held_mb": self.allocations.held_bytes // (1024 * 1024),
                     "rss_bytes": rss_bytes()}

    def debug_free(self, environ):
        self.allocations.free()
        return 200, {"pid": os.getpid(), "held_mb": 0, "rss_bytes": rss_bytes()}

    # -- Socket.IO -------------------------------------------------------------------------
    def socketio_app(self):
        app = self._socketio
        if app is None:
            with self._socketio_lock:
                if self._socketio is None:
                    factory = self._socketio_factory or build_socketio
                    self._socketio = factory(self.env, self.instance)
                app = self._socketio
        return app


def build_socketio(env, instance: int = 0):
    """A python-socketio WSGI app (gevent mode). With REDIS_URL, a RedisManager relays emits
    between every worker of every instance; without it, Socket.IO works within one process.

    Event: a client emits ``broadcast`` ``{"msg": ...}``; every connected client receives
    ``message`` ``{"msg": ..., "instance": <sender's instance>}``; the sender gets an ack."""
    import socketio

    redis_url = env.get("REDIS_URL") or None
    manager = None
    if redis_url:
        from .socketio_queue import manager_for   # redis://, redis+sentinel://, redis+cluster://
        manager = manager_for(redis_url, channel=env.get("SOCKETIO_CHANNEL", "ultrascale-socketio"))
    origins = env.get("SOCKETIO_CORS_ORIGINS", "")
    cors = None if origins == "" else ("*" if origins == "*" else [o.strip() for o in origins.split(",")])
    sio = socketio.Server(async_mode="gevent", client_manager=manager, cors_allowed_origins=cors,
                          logger=False, engineio_logger=False)

    @sio.on("broadcast")
    def on_broadcast(sid, data):
        msg = data.get("msg") if isinstance(data, dict) else data
        if not isinstance(msg, str) or len(msg) > 4096:
            return {"ok": False, "error": "msg must be a string of at most 4096 characters"}
        sio.emit("message", {"msg": msg, "instance": instance})
        return {"ok": True}

    wsgi_app = socketio.WSGIApp(sio, socketio_path="socket.io")
    wsgi_app.sio = sio
    return wsgi_app


def create_app(env=None, *, cache=None, mongo_handle=None, metrics=None, socketio_factory=None,
               with_metrics: bool = True):
    """Wire the reference app: cache (from env), MongoDB handle, metrics middleware."""
    env = os.environ if env is None else env
    from . import mongo
    from .cache import TwoTierCache
    from .monitoring import AppMetrics, MetricsMiddleware

    if with_metrics and metrics is None:
        metrics = AppMetrics()
    if cache is None:
        cache = TwoTierCache.from_env(env, on_event=metrics.cache_event if metrics else None)
    if mongo_handle is None:
        mongo_handle = mongo.default_handle() if env is os.environ else mongo.MongoHandle(mongo.settings_from_env(env))
    ref = ReferenceApp(cache, mongo_handle, env=env, socketio_factory=socketio_factory)
    if not with_metrics:
        return ref
    wrapped = MetricsMiddleware(ref, route_of=route_of, metrics=metrics)
    wrapped.reference = ref
    return wrapped


def configure_logging(level: str | None = None) -> None:
    """structlog at LOG_LEVEL: JSON lines when stderr is not a terminal, readable otherwise."""
    import logging
    import sys
    name = (level or os.environ.get("LOG_LEVEL") or "info").upper()
    lvl = getattr(logging, name, logging.INFO)
    renderer = (structlog.dev.ConsoleRenderer() if sys.stderr.isatty()
                else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class LazyApplication:
    """The WSGI callable gunicorn loads. Builds the app on the first request in each process."""

    def __init__(self, factory=create_app):
        self._factory = factory
        self._app = None
        self._pid = None
        self._lock = threading.Lock()

    def _build(self):
        with self._lock:
            if self._app is None or self._pid != os.getpid():
                if not structlog.is_configured():
                    configure_logging()
                self._app = self._factory()
                self._pid = os.getpid()
        return self._app

    def __call__(self, environ, start_response):
        app = self._app
        if app is None or self._pid != os.getpid():
            app = self._build()
        return app(environ, start_response)

    @property
    def built(self):
        """The built app (building it if needed), e.g. ``application.built.reference.cache``."""
        return self._app if self._app is not None and self._pid == os.getpid() else self._build()

    def reset_after_fork(self) -> None:
        self._app = None
        self._pid = None
        self._lock = threading.Lock()


application = LazyApplication()


def reset_after_fork() -> None:
    """gunicorn ``post_fork``: per-process clients and caches are rebuilt in the child."""
    application.reset_after_fork()
    from . import mongo
    mongo.reset_after_fork()
