"""The depth of a worker type's queue: LLEN of a Redis list, read with redis-py.

redis-py is not among the daemon's dependencies (`pip install ultrascale` stays without it); it is
imported here, on the first read, only for a spec whose worker type autoscales on a queue, and
spec validation refuses such a spec when the daemon's Python cannot import it (spec/queue.py).
Each read runs in a thread (redis-py's client is blocking) with short timeouts, so a broker that
does not answer costs the autoscaler one interval, never the event loop.

The seam is one callable, `depth(url, key) -> int` (an awaitable), raising on any failure:
component tests pass a fake one (supervise/queue_scale_loop.py takes it).
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

TIMEOUT = 2.0   # seconds to connect and to answer


class RedisDepth:
    """LLEN through one client per URL (redis-py's connection pool reconnects by itself)."""

    def __init__(self, timeout: float = TIMEOUT):
        self.timeout = timeout
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, url: str) -> Any:
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                import redis   # lazily: only a spec that autoscales on a queue needs it
                client = redis.Redis.from_url(url, socket_timeout=self.timeout,
                                              socket_connect_timeout=self.timeout,
                                              health_check_interval=30)
                self._clients[url] = client
            return client

    def read(self, url: str, key: str) -> int:
        return int(self._client(url).llen(key))

    async def __call__(self, url: str, key: str) -> int:
        return await asyncio.to_thread(self.read, url, key)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail: nothing to do
                pass
