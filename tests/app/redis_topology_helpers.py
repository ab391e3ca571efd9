"""Shared by the Redis Cluster and Sentinel tests: fixtures' skip rule and the failover-under-load
run against a real gunicorn serving the reference app."""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote


from app.wsgi import compute
from app_helpers import wait_for

from support import needs

PREFIX = "ultrascale:cache:cached:"   # where /cached/<key> lives in Redis


def require_redis_tools():
    needs.redis_tools()


# The app as the tests run it: a 0.25 s Redis timeout, the breaker open after 2 errors and a
# background probe every 0.2 s, so recovery is seen soon after the failover.
APP_ENV = {"CACHE_REDIS_TIMEOUT": "0.25", "CACHE_BREAKER_FAILURES": "2", "CACHE_BREAKER_RETRY": "0.2"}


def get_cached(g, key: str, timeout: float = 10.0):
    url = f"{g.url}/cached/{quote(key, safe='')}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        import json
        return r.status, json.loads(r.read())


def seed(client, key: str) -> None:
    """Write /cached/<key>'s value straight into Redis, as another worker would have."""
    import json
    client.set(PREFIX + key, json.dumps(compute(key)), px=300_000)


def wait_for_redis_hit(g, client, tag: str, timeout: float = 60.0) -> str:
    """Seed a fresh key (never seen by the app's memory tier) until the app answers it from
    Redis. ``tag`` keeps every key in one cluster slot."""
    n = [0]

    def hit():
        n[0] += 1
        key = f"{{{tag}}}-probe-{n[0]}"
        seed(client, key)
        status, body = get_cached(g, key)
        assert status == 200 and body["value"] == compute(key)
        return body["source"] == "redis" and key
    return wait_for(hit, timeout=timeout, interval=0.2, what="Redis hits through the app again")


class Load:
    """A bounded loop of requests in a thread: warm keys (memory hits) and fresh keys (each a
    Redis lookup, then the loader). Every answer that is not 200 with the right value, and every
    exception, is a failure. Stops at ``max_requests``, ``max_seconds`` or ``stop()``."""

    def __init__(self, g, warm: list[str], max_requests: int = 20_000, max_seconds: float = 120.0):
        self.g, self.warm = g, warm
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.done = 0
        self.failures: list[str] = []
        self.sources: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self):
        t0 = time.monotonic()
        i = 0
        while (not self._stop.is_set() and i < self.max_requests
               and time.monotonic() - t0 < self.max_seconds):
            key = self.warm[i % len(self.warm)] if i % 2 else f"fresh-{i}-{time.monotonic_ns()}"
            i += 1
            try:
                status, body = get_cached(self.g, key)
                if status != 200 or body.get("value") != compute(key):
                    self.failures.append(f"{key}: {status} {body}")
                else:
                    self.sources[body["source"]] = self.sources.get(body["source"], 0) + 1
            except (OSError, urllib.error.URLError, ValueError) as exc:
                self.failures.append(f"{key}: {exc!r}")
            self.done = i

    def start(self) -> "Load":
        self._thread.start()
        return self

    def wait_done(self, n: int, timeout: float = 60.0) -> None:
        wait_for(lambda: self.done >= n or not self._thread.is_alive(), timeout=timeout,
                 what=f"{n} requests of the load loop")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def failover_under_load(g, client, kill, failed_over, tag: str) -> tuple[Load, dict]:
    """Warm the app, run the load, ``kill()`` a primary mid-run, wait for ``failed_over()``,
    keep loading, then wait until Redis hits come back. Returns the load and /health after."""
    warm = [f"warm-{i}" for i in range(20)]
    for k in warm:
        assert get_cached(g, k)[0] == 200
    wait_for_redis_hit(g, client, tag, timeout=20)            # Redis answers before the kill
    load = Load(g, warm).start()
    try:
        load.wait_done(100)
        kill()
        wait_for(failed_over, timeout=60, interval=0.2, what="the failover")
        after_failover = load.done
        wait_for_redis_hit(g, client, tag, timeout=60)
        load.wait_done(after_failover + 100)
    finally:
        load.stop()
    health = g.get("/health")[1]
    return load, health
