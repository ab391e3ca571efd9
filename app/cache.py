"""Two-tier cache: an in-process LRU with TTL in front of Redis, in front of a loader.

Usable alone in a few lines::

    from app.cache import TwoTierCache
    cache = TwoTierCache.from_env()              # REDIS_URL, CACHE_TTL, CACHE_MAX_ITEMS
    user = cache.get_or_load(f"user:{uid}", lambda: load_user(uid))

    @cache.cached(lambda uid: f"user:{uid}")
    def load_user(uid): ...

Behaviour:

* memory first, then Redis, then the loader; a loaded value is written back to both tiers,
  a Redis hit is written back to memory;
* Redis errors never reach the caller: a short socket timeout, and a circuit breaker that
  opens after ``failure_threshold`` consecutive failures (Redis Cluster: failures within
  ``CLUSTER_FAILURE_WINDOW`` seconds, successes in between not counting); while open the Redis tier is skipped
  (no per-request wait) and a single background probe (PING) runs every ``retry_interval``
  seconds, closing the breaker when Redis answers again;
* concurrent misses on one key in one process call the loader once (single flight); the
  locks are ``threading`` primitives looked up at call time, so under gevent's monkey
  patching they are cooperative;
* counters: hits per tier, misses, loads, evictions, expirations, errors per tier; an
  optional ``on_event(name, amount)`` callback receives every increment (used by
  :mod:`app.monitoring` to export them to Prometheus);
* the clock is injected (``clock=``), so tests control TTL and breaker timing.

``REDIS_URL`` may name one server, a Redis Cluster (``redis+cluster://h1:p1,h2:p2``) or a
Sentinel-managed primary (``redis+sentinel://s1:p1,s2:p2/<db>/<service>``); see
:mod:`app.redis_client`. The breaker's probe then checks every cluster primary, or the primary
the sentinels name, so it closes once the failover is done.

Nothing here does I/O at import time; the Redis client is created on first use, per process.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable

import structlog

log = structlog.get_logger("app.cache")

_MISSING = object()

# Redis Cluster: the breaker opens after CACHE_BREAKER_FAILURES failures within this many
# seconds, however many calls to healthy nodes succeed in between (a hung primary otherwise costs
# every call to its slots a socket timeout until the cluster fails it over).
CLUSTER_FAILURE_WINDOW = 10.0

# Sources reported by TwoTierCache.fetch().
MEMORY = "memory"
REDIS = "redis"
LOADER = "loader"
COALESCED = "coalesced"


def _env_float(env, name, default):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}: must be a number, got {raw!r}") from None


def _env_int(env, name, default):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {raw!r}") from None


class CacheStats:
    """Plain counters; ``on_event`` (if given) mirrors every increment."""

    FIELDS = ("hits_memory", "hits_redis", "misses", "coalesced", "loads", "load_errors",
              "evictions", "expirations", "errors_redis", "skipped_redis")

    __slots__ = FIELDS + ("on_event",)

    def __init__(self, on_event: Callable[[str, int], None] | None = None):
        for f in self.FIELDS:
            setattr(self, f, 0)
        self.on_event = on_event

    def inc(self, name: str, amount: int = 1) -> None:
        setattr(self, name, getattr(self, name) + amount)
        if self.on_event is not None:
            try:
                self.on_event(name, amount)
            except Exception:  # metrics must never break the cache
                pass

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.FIELDS}
        lookups = d["hits_memory"] + d["hits_redis"] + d["misses"]
        # Hit rate per tier: the share of all lookups that tier answered.
        d["lookups"] = lookups
        d["hit_rate_memory"] = round(d["hits_memory"] / lookups, 4) if lookups else 0.0
        d["hit_rate_redis"] = round(d["hits_redis"] / lookups, 4) if lookups else 0.0
        return d


class MemoryLRU:
    """An LRU map with a per-entry TTL. Not thread-safe by itself beyond the GIL; every
    method is a handful of dict operations with no I/O, so under gevent nothing yields
    inside it."""

    def __init__(self, max_items: int = 50_000, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 stats: CacheStats | None = None):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self.ttl = ttl
        self.clock = clock
        self.stats = stats if stats is not None else CacheStats()
        self._data: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()

    def get(self, key, default=_MISSING):
        entry = self._data.get(key)
        if entry is None:
            return default
        value, expires = entry
        if expires <= self.clock():
            del self._data[key]
            self.stats.inc("expirations")
            return default
        self._data.move_to_end(key)
        return value

    def set(self, key, value, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        data = self._data
        if key in data:
            data.move_to_end(key)
        data[key] = (value, self.clock() + ttl)
        if len(data) > self.max_items:
            evicted = 0
            while len(data) > self.max_items:
                data.popitem(last=False)
                evicted += 1
            self.stats.inc("evictions", evicted)

    def delete(self, key) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return self.get(key) is not _MISSING


def _spawn_thread(fn: Callable[[], None], name: str = "cache-redis-probe") -> None:
    # threading.Thread is looked up at call time: a greenlet once gevent has patched.
    threading.Thread(target=fn, name=name, daemon=True).start()


class CircuitBreaker:
    """Closed: calls go through. After ``failure_threshold`` consecutive failures it opens:
    ``allow()`` answers False at once (no waiting on a dead dependency) and, at most every
    ``retry_interval`` seconds, starts one background ``probe()``; a successful probe (or any
    recorded success) closes it again."""

    CLOSED = "closed"
    OPEN = "open"

    def __init__(self, probe: Callable[[], Any] | None = None, failure_threshold: int = 2,
                 retry_interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] = _spawn_thread,
                 name: str = "redis", failure_window: float | None = None):
        """``failure_window`` (seconds): open after ``failure_threshold`` failures within that
        window, and do not let successes in between reset the count. For a dependency made of
        several servers (a Redis Cluster), where calls that reach the healthy nodes succeed
        between the failures of the calls that reach a hung one, so consecutive failures would
        never add up."""
        self.probe = probe
        self.failure_window = failure_window
        self._failure_times: list[float] = []
        self.failure_threshold = max(1, failure_threshold)
        self.retry_interval = retry_interval
        self.clock = clock
        self.spawn = spawn
        self.name = name
        self.state = self.CLOSED
        self.failures = 0
        self.opened_count = 0
        self._next_probe = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.state == self.OPEN

    def allow(self) -> bool:
        if self.state == self.CLOSED:
            return True
        self.poll()
        return False

    def poll(self) -> None:
        """If open and a probe is due, start one in the background. Never blocks."""
        if (self.state == self.OPEN and self.probe is not None and not self._probing
                and self.clock() >= self._next_probe):
            self._probing = True
            self._next_probe = self.clock() + self.retry_interval
            try:
                self.spawn(self._run_probe)
            except Exception:
                self._probing = False

    def _run_probe(self) -> None:
        try:
            self.probe()
        except Exception as exc:
            self._next_probe = self.clock() + self.retry_interval
            log.debug("breaker.probe_failed", dependency=self.name, error=str(exc))
        else:
            self.record_success()
        finally:
            self._probing = False

    def record_success(self) -> None:
        if self.failure_window is None or self.state == self.OPEN:
            self.failures = 0
            self._failure_times = []
        if self.state == self.OPEN:
            self.state = self.CLOSED
            log.info("breaker.closed", dependency=self.name)

    def record_failure(self, error: BaseException | None = None) -> None:
        if self.failure_window is None:
            self.failures += 1
        else:
            now = self.clock()
            self._failure_times = [t for t in self._failure_times if t > now - self.failure_window]
            self._failure_times.append(now)
            self.failures = len(self._failure_times)
        if self.state == self.CLOSED and self.failures >= self.failure_threshold:
            self.state = self.OPEN
            self.opened_count += 1
            self._next_probe = self.clock() + self.retry_interval
            log.warning("breaker.opened", dependency=self.name,
                        error=str(error) if error else None)

    def reset(self) -> None:
        self.state = self.CLOSED
        self.failures = 0
        self._failure_times = []
        self._probing = False
        self._next_probe = 0.0


class RedisTier:
    """The Redis side of the cache: JSON values under ``prefix + key`` with a TTL.
    The client is created on first use and again after a fork (per pid)."""

    def __init__(self, url: str, socket_timeout: float = 0.25, connect_timeout: float = 0.25,
                 prefix: str = "ultrascale:cache:",
                 dumps: Callable[[Any], bytes | str] = json.dumps,
                 loads: Callable[[bytes], Any] = json.loads,
                 client_factory: Callable[[], Any] | None = None):
        from . import redis_client
        self.url = url
        # Bad URLs fail here, naming REDIS_URL, not later as a Redis error the breaker hides.
        self.target = redis_client.parse(url) if client_factory is None else None
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.prefix = prefix
        self.dumps = dumps
        self.loads = loads
        self._client_factory = client_factory
        self._client = None
        self._pid = None

    def _make_client(self):
        if self._client_factory is not None:
            return self._client_factory()
        from . import redis_client
        # retries=0: the breaker decides about retrying, not redis-py
        return redis_client.make_client(self.target, socket_timeout=self.socket_timeout,
                                        connect_timeout=self.connect_timeout, retries=0,
                                        **({"health_check_interval": 0}
                                           if self.target.kind == redis_client.SINGLE else {}))

    @property
    def client(self):
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            self._client = self._make_client()
            self._pid = pid
        return self._client

    def get(self, key):
        raw = self.client.get(self.prefix + str(key))
        if raw is None:
            return _MISSING
        return self.loads(raw)

    def set(self, key, value, ttl: float) -> None:
        self.client.set(self.prefix + str(key), self.dumps(value), px=max(1, int(ttl * 1000)))

    def delete(self, key) -> None:
        self.client.delete(self.prefix + str(key))

    def ping(self) -> None:
        if self.target is None:
            self.client.ping()
            return
        from . import redis_client
        redis_client.ping(self.client, self.target)

    def reset(self) -> None:
        """Drop the client without closing the parent's sockets (call after fork)."""
        self._client = None
        self._pid = None


class _Flight:
    __slots__ = ("event", "value", "error")

    def __init__(self):
        self.event = threading.Event()
        self.value = _MISSING
        self.error = None


class TwoTierCache:
    """Memory LRU -> Redis -> loader, with single flight and a Redis circuit breaker."""

    def __init__(self, redis_url: str | None = None, *, ttl: float = 300.0,
                 max_items: int = 50_000, clock: Callable[[], float] = time.monotonic,
                 redis_tier: RedisTier | None = None,
                 redis_socket_timeout: float = 0.25,
                 breaker_failures: int = 2, breaker_retry: float = 1.0,
                 spawn: Callable[[Callable[[], None]], None] = _spawn_thread,
                 on_event: Callable[[str, int], None] | None = None):
        self.ttl = ttl
        self.clock = clock
        self.stats = CacheStats(on_event)
        self.memory = MemoryLRU(max_items=max_items, ttl=ttl, clock=clock, stats=self.stats)
        if redis_tier is None and redis_url:
            redis_tier = RedisTier(redis_url, socket_timeout=redis_socket_timeout,
                                   connect_timeout=redis_socket_timeout)
        self.redis = redis_tier
        target = getattr(redis_tier, "target", None)
        self.breaker = CircuitBreaker(
            probe=redis_tier.ping if redis_tier is not None else None,
            failure_threshold=breaker_failures, retry_interval=breaker_retry,
            clock=clock, spawn=spawn, name="redis",
            # A cluster: failures within a window, not consecutive ones (see CircuitBreaker).
            failure_window=CLUSTER_FAILURE_WINDOW if target is not None and target.kind == "cluster" else None)
        self._flights: dict = {}
        self._flights_lock = threading.Lock()

    @classmethod
    def from_env(cls, env=None, **overrides) -> "TwoTierCache":
        """Settings from env: REDIS_URL, CACHE_TTL (s, 300), CACHE_MAX_ITEMS (50000),
        CACHE_REDIS_TIMEOUT (s, 0.25), CACHE_BREAKER_FAILURES (2), CACHE_BREAKER_RETRY (s, 1)."""
        env = os.environ if env is None else env
        kwargs = dict(
            redis_url=env.get("REDIS_URL") or None,
            ttl=_env_float(env, "CACHE_TTL", 300.0),
            max_items=_env_int(env, "CACHE_MAX_ITEMS", 50_000),
            redis_socket_timeout=_env_float(env, "CACHE_REDIS_TIMEOUT", 0.25),
            breaker_failures=_env_int(env, "CACHE_BREAKER_FAILURES", 2),
            breaker_retry=_env_float(env, "CACHE_BREAKER_RETRY", 1.0),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- state -----------------------------------------------------------------------------
    @property
    def redis_state(self) -> str:
        """``not_configured``, ``ok`` or ``down`` (breaker open: serving from memory).
        No I/O; while down, asking also starts a background probe when one is due, so a
        health check polled every few hundred ms notices recovery even with no cache misses."""
        if self.redis is None:
            return "not_configured"
        if self.breaker.is_open:
            self.breaker.poll()
            return "down" if self.breaker.is_open else "ok"
        return "ok"

    def reset_after_fork(self) -> None:
        """New Redis client, fresh locks and breaker in a forked child. Memory is kept
        (it is a copy-on-write snapshot and still valid)."""
        if self.redis is not None:
            self.redis.reset()
        self.breaker.reset()
        self._flights = {}
        self._flights_lock = threading.Lock()

    # -- Redis with the breaker ------------------------------------------------------------
    def _redis_get(self, key):
        if self.redis is None:
            return _MISSING
        if not self.breaker.allow():
            self.stats.inc("skipped_redis")
            return _MISSING
        try:
            value = self.redis.get(key)
        except Exception as exc:  # RedisError, OSError, decode errors: never reach the caller
            self.stats.inc("errors_redis")
            self.breaker.record_failure(exc)
            return _MISSING
        self.breaker.record_success()
        return value

    def _redis_set(self, key, value, ttl) -> None:
        if self.redis is None or not self.breaker.allow():
            return
        try:
            self.redis.set(key, value, ttl)
        except Exception as exc:
            self.stats.inc("errors_redis")
            self.breaker.record_failure(exc)
        else:
            self.breaker.record_success()

    # -- public API ------------------------------------------------------------------------
    def get(self, key, default=None):
        """Look up memory then Redis without loading. Counts hits and misses."""
        value = self.memory.get(key)
        if value is not _MISSING:
            self.stats.inc("hits_memory")
            return value
        value = self._redis_get(key)
        if value is not _MISSING:
            self.stats.inc("hits_redis")
            self.memory.set(key, value)
            return value
        self.stats.inc("misses")
        return default

    def set(self, key, value, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        self.memory.set(key, value, ttl)
        self._redis_set(key, value, ttl)

    def delete(self, key) -> None:
        self.memory.delete(key)
        if self.redis is not None and self.breaker.allow():
            try:
                self.redis.delete(key)
            except Exception as exc:
                self.stats.inc("errors_redis")
                self.breaker.record_failure(exc)

    def get_or_load(self, key, loader: Callable[[], Any], ttl: float | None = None):
        return self.fetch(key, loader, ttl)[0]

    def fetch(self, key, loader: Callable[[], Any], ttl: float | None = None):
        """Like :meth:`get_or_load` but returns ``(value, source)`` with source one of
        ``"memory"``, ``"redis"``, ``"loader"`` or ``"coalesced"`` (waited for a concurrent
        load of the same key)."""
        value = self.memory.get(key)
        if value is not _MISSING:
            self.stats.inc("hits_memory")
            return value, MEMORY

        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            self.stats.inc("coalesced")  # answered by another greenlet's load of this key
            return flight.value, COALESCED

        try:
            value = self._redis_get(key)
            if value is not _MISSING:
                self.stats.inc("hits_redis")
                self.memory.set(key, value, ttl)
                source = REDIS
            else:
                self.stats.inc("misses")
                try:
                    value = loader()
                except BaseException as exc:
                    self.stats.inc("load_errors")
                    flight.error = exc
                    raise
                self.stats.inc("loads")
                self.set(key, value, ttl)
                source = LOADER
            flight.value = value
            return value, source
        finally:
            with self._flights_lock:
                self._flights.pop(key, None)
            flight.event.set()

    def cached(self, key: Callable[..., Hashable] | None = None, ttl: float | None = None):
        """Decorator: ``@cache.cached(lambda x: f"sq:{x}")``. Without ``key`` the key is the
        function's qualified name and its repr'd arguments."""
        def decorate(fn):
            import functools

            def make_key(*args, **kwargs):
                if key is not None:
                    return key(*args, **kwargs)
                parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in sorted(kwargs.items())]
                return f"{fn.__module__}.{fn.__qualname__}({','.join(parts)})"

            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                return self.get_or_load(make_key(*args, **kwargs), lambda: fn(*args, **kwargs), ttl)

            wrapper.cache = self
            wrapper.cache_key = make_key
            return wrapper
        return decorate
